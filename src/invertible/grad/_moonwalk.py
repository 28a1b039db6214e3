"""Pure Moonwalk: `h_0` by forward mode, then the forward sweep."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..layers._sequential import Sequential
from ._chain import (
    Chain,
    check_chain_input,
    example_layers,
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
        if isinstance(chain, Sequential):
            return _moonwalk((chain.layers, x), chunk_size, None)
        return _moonwalk((chain.layers, x), chunk_size, chain.length)

    return rule


def _apply(layers, length, x):
    if length is None:
        for layer in layers:
            x = layer(x)
        return x

    def step(x, params):
        return stacked_layer(layers, params)(x), None

    return jax.lax.scan(step, x, split_stack(layers))[0]


def input_cotangent_by_jvps(f, x0: Array, ct_y: Array, chunk_size: int | None):
    """`ct_y · ∂f/∂x0`, one JVP per element of `x0`: forward mode only."""

    def along_basis(index):
        tangent = jnp.zeros(x0.size, x0.dtype).at[index].set(1).reshape(x0.shape)
        return jnp.vdot(ct_y, jax.jvp(f, (x0,), (tangent,))[1])

    indices = jnp.arange(x0.size)
    return jax.lax.map(along_basis, indices, batch_size=chunk_size).reshape(x0.shape)


@eqx.filter_custom_vjp
def _moonwalk(vjp_arg, chunk_size, length):
    layers, x = vjp_arg
    return _apply(layers, length, x)


@_moonwalk.def_fwd
def _moonwalk_fwd(perturbed, vjp_arg, chunk_size, length):
    del perturbed
    layers, x = vjp_arg
    return _apply(layers, length, x), None  # nothing stored but the inputs


@_moonwalk.def_bwd
def _moonwalk_bwd(residuals, ct_y, perturbed, vjp_arg, chunk_size, length):
    del residuals
    layers, x0 = vjp_arg
    h0 = input_cotangent_by_jvps(
        lambda x: _apply(layers, length, x), x0, ct_y, chunk_size
    )
    if length is None:
        grads = sweep_layers(layers, (0,), x0, h0, (), ())
    else:
        head, tail = split_segments(split_stack(layers), length, None)
        grads = sweep_stack(layers, head, tail, x0, (h0[None], None), (None, None))
    return keep_perturbed((grads, h0), perturbed)
