"""Taps: the ways out of a reverse pass, and the barriers that keep XLA honest.

A *tap* is an identity `y = x` with a dummy zero input `d`, whose reverse rule
returns `capture(ct_y)` as the cotangent of `d`. Differentiating with respect to
the dummies records values during a reverse pass: the exact cotangent at a segment
start (an anchor), a non-submersive layer's fragment, or (with zero-valued inputs
of a chain's `custom_vjp`) figures computed in its backward pass, such as drift.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


@eqx.filter_custom_vjp
def tap(vjp_arg, capture: Callable):
    """`x`, with the cotangent of the dummy `d` set to `capture(ct_x)`;
    `vjp_arg = (x, d)`."""
    x, _ = vjp_arg
    return x


@tap.def_fwd
def _tap_fwd(perturbed, vjp_arg, capture):
    del perturbed, capture
    return vjp_arg[0], None


@tap.def_bwd
def _tap_bwd(residuals, ct_x, perturbed, vjp_arg, capture):
    del residuals, perturbed
    x, _ = vjp_arg
    if ct_x is None:  # symbolic zero: nothing downstream depends on x
        ct_x = jnp.zeros_like(x)
    return ct_x, capture(ct_x)


@jax.custom_vjp
def tap_into(x: Array, store: Array, j: Array, where: Array) -> tuple[Array, Array]:
    """`(x, store)`, with `ct_x` written into row `j` of `store`'s cotangent where
    `where` holds (both traced).

    A tap for a scan: `store` rides in its carry, so the reverse scan writes each
    record in place. A `tap` on `store[j]` would instead add a store-sized
    `dynamic_update_slice` of zeros to the store's cotangent at every step, which
    XLA keeps as more copies of the store (measured: 146 MB more on the paper's
    RevNet at padding 18, whose store is 4 activations per block)."""
    return x, store


def _tap_into_fwd(x, store, j, where):
    return (x, store), (j, where)


def _tap_into_bwd(residuals, cts):
    j, where = residuals
    ct_x, ct_store = cts
    row = jnp.where(where, ct_x, ct_store[j])
    return ct_x, ct_store.at[j].set(row), None, None


tap_into.defvjp(_tap_into_fwd, _tap_into_bwd)


def identity(ct: Array) -> Array:
    return ct


def barrier(tree: PyTree) -> PyTree:
    """Keep XLA from merging a recomputation with the primal pass (CSE).

    Without it, the forward sweep's activations are recognised as the primal pass's
    and all of them are kept alive until the sweep reaches them: the memory that
    backprop spends, and more.
    """
    return jax.lax.optimization_barrier(tree)


def keep_perturbed(grads: PyTree, perturbed: PyTree) -> PyTree:
    """`None` for every leaf `eqx.filter_custom_vjp` does not differentiate."""
    return jax.tree.map(
        lambda g, p: g if p is True else None,
        grads,
        perturbed,
        is_leaf=lambda g: g is None,
    )
