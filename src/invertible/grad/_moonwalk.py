"""Pure Moonwalk: `h_0` by forward mode, then the forward sweep."""

import functools as ft
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..layers._sequential import Sequential
from ._batching import batch_aware
from ._chain import (
    Chain,
    barrier,
    check_chain_input,
    example_layers,
    fenced,
    keep_perturbed,
    require_submersive,
    split_stack,
    stacked_layer,
)
from ._segments import split_segments
from ._sweep import sweep_layers, sweep_stack


def moonwalk_rule(chunk_size: int | None):
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(
            f"moonwalk_grad: `chunk_size` must be a positive int or None, got "
            f"{chunk_size!r}."
        )

    def rule(chain: Chain, x: Array) -> Array:
        require_submersive(example_layers(chain), "moonwalk_grad")
        check_chain_input(chain, x)
        length = None if isinstance(chain, Sequential) else chain.length

        def apply(layers, x, is_batch):
            return _moonwalk((layers, x), chunk_size, length, is_batch)

        return batch_aware(apply)(chain.layers, x)

    return rule


def _apply(layers, length, x):
    if length is None:
        for layer in layers:
            x = layer(x)
        return x

    def step(x, params):
        return stacked_layer(layers, params)(x), None

    return jax.lax.scan(step, x, split_stack(layers))[0]


def _jvp(layers, length, x, tangent):
    """The chain's JVP. A Python-loop chain is fenced layer by layer: otherwise XLA
    runs the whole primal chain before the tangent chain and keeps every layer's
    residuals in between (measured)."""
    if length is not None:
        return jax.jvp(lambda x: _apply(layers, length, x), (x,), (tangent,))[1]
    for layer in layers:
        x, tangent = fenced(ft.partial(jax.jvp, layer), (x,), (tangent,))
    return tangent


def input_cotangent_by_jvps(
    jvp, x0: Array, ct_y: Array, chunk_size: int | None, is_batch: bool
):
    """`ct_y · ∂f/∂x0` given `jvp(x, t) = ∂f/∂x t`, one JVP per element of an
    example: forward mode only.

    With `is_batch`, axis 0 of `x0` indexes independent examples: each JVP moves
    the same element of every example at once.
    """
    example_shape = x0.shape[1:] if is_batch else x0.shape
    size = math.prod(example_shape)

    def along_basis(index):
        # Tie the primal to the loop index: otherwise XLA hoists the (loop-invariant)
        # primal pass out of the map and keeps every layer's residuals for it.
        x0_here, index = barrier((x0, index))
        basis = jnp.zeros(size, x0.dtype).at[index].set(1).reshape(example_shape)
        tangent = jnp.broadcast_to(basis, x0.shape)
        moved = jvp(x0_here, tangent) * ct_y
        return (
            jnp.sum(moved.reshape(moved.shape[0], -1), 1) if is_batch else moved.sum()
        )

    columns = jax.lax.map(along_basis, jnp.arange(size), batch_size=chunk_size)
    return (columns.T if is_batch else columns).reshape(x0.shape)


@eqx.filter_custom_vjp
def _moonwalk(vjp_arg, chunk_size, length, is_batch):
    layers, x = vjp_arg
    return _apply(layers, length, x)


@_moonwalk.def_fwd
def _moonwalk_fwd(perturbed, vjp_arg, chunk_size, length, is_batch):
    del perturbed
    layers, x = vjp_arg
    return _apply(layers, length, x), None  # nothing stored but the inputs


@_moonwalk.def_bwd
def _moonwalk_bwd(residuals, ct_y, perturbed, vjp_arg, chunk_size, length, is_batch):
    del residuals
    layers, x0 = vjp_arg
    h0 = input_cotangent_by_jvps(
        ft.partial(_jvp, layers, length), x0, ct_y, chunk_size, is_batch
    )
    if length is None:
        grads = sweep_layers(layers, (0,), x0, h0, (), ())
    else:
        head, tail = split_segments(split_stack(layers), length, None)
        grads = sweep_stack(layers, head, tail, x0, (h0[None], None), (None, None))
    return keep_perturbed((grads, h0), perturbed)
