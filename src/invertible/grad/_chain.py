"""What the gradient methods share: iterating over a chain's layers, taps, barriers.

A chain is either a tuple of layers (`Sequential`, a Python loop) or one stacked
layer (`ScannedSequential`, a `lax.scan`). Each method is written once against the
small interface here.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from .._abstract import AbstractInvertible, AbstractNonSubmersive, AbstractSubmersive
from .._checks import check_float, layer_name
from ..layers._sequential import ScannedSequential, Sequential

Chain = Sequential | ScannedSequential


def is_chain(node: Any) -> bool:
    return isinstance(node, Sequential | ScannedSequential)


def with_rule(chain: Chain, rule: Callable | None) -> Chain:
    """The same chain, differentiated by `rule`."""
    return type(chain)(chain.layers, rule=rule)


def mark_chains(tree: PyTree, rule: Callable) -> PyTree:
    """Give every outermost chain in `tree` the rule. Chains nested inside a layer
    (say, a coupling's residual) stay plain: the outer method differentiates them."""
    return jtu.tree_map(
        lambda node: with_rule(node, rule) if is_chain(node) else node,
        tree,
        is_leaf=is_chain,
    )


def check_chain_input(chain: Chain, x: Array) -> None:
    check_float(chain, x)


def stacked_layer(stack: Any, params: PyTree) -> Any:
    return eqx.combine(params, eqx.filter(stack, eqx.is_array, inverse=True))


def split_stack(stack: Any) -> PyTree:
    return eqx.filter(stack, eqx.is_array)


def barrier(tree: PyTree) -> PyTree:
    """Keep XLA from merging a recomputation with the primal pass (CSE).

    Without it, the forward sweep's activations are recognised as the primal pass's
    and all of them are kept alive until the sweep reaches them: the memory that
    backprop spends, and more (DESIGN.md, trap 1).
    """
    return jax.lax.optimization_barrier(tree)


def fenced(f, *args):
    """`f(*args)` inside a `lax.cond` whose (always true) predicate XLA cannot fold.

    In straight-line code (a `Sequential`, unlike a `lax.scan` body) XLA fuses and
    schedules across the whole program: a ReLU's `x > 0` is recomputed in the
    reverse pass, keeping the float pre-activation instead of the one-byte mask,
    and the forward sweep is interleaved with phase 1 so that its activations
    pile up (at backprop's memory, measured). A branch is a separate computation
    that runs as a unit, like a scan body.
    """
    out = jax.eval_shape(f, *args)
    always = jax.lax.optimization_barrier(jnp.bool_(True))
    zeros = lambda *_: zeros_of(out)
    # `f` may be a module holding arrays: `cond` hashes its branches, so wrap it.
    return jax.lax.cond(always, lambda *a: f(*a), zeros, *args)


def param_grads(layer: Any, x: Array, ct_y: Array) -> PyTree:
    """`ct_y ∂layer(x)/∂θ`: the vjp with respect to the layer's parameters only."""
    _, vjp = eqx.filter_vjp(lambda layer: layer(x), layer)
    return vjp(ct_y)[0]


def zeros_of(struct: PyTree) -> PyTree:
    return jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), struct)


def keep_perturbed(grads: PyTree, perturbed: PyTree) -> PyTree:
    return jtu.tree_map(
        lambda g, p: g if p is True else None,
        grads,
        perturbed,
        is_leaf=lambda g: g is None,
    )


# ---------------------------------------------------------------------------------
# Taps: an identity whose backward pass hands a function of the cotangent to a
# dummy zero input. Differentiating w.r.t. the dummy records that value during the
# reverse pass: the exact cotangent (an anchor) or a fragment.


@eqx.filter_custom_vjp
def tap(vjp_arg, capture):
    y, _ = vjp_arg
    return y


@tap.def_fwd
def _tap_fwd(perturbed, vjp_arg, capture):
    del perturbed, capture
    return vjp_arg[0], None


@tap.def_bwd
def _tap_bwd(residuals, ct_y, perturbed, vjp_arg, capture):
    del residuals, perturbed
    y, _ = vjp_arg
    if ct_y is None:  # symbolic zero: nothing downstream depends on y
        ct_y = jnp.zeros_like(y)
    return ct_y, capture(ct_y)


def identity(ct: Array) -> Array:
    return ct


def require_submersive(layers: list[Any], method: str) -> None:
    for i, layer in enumerate(layers):
        if isinstance(layer, AbstractNonSubmersive):
            raise ValueError(
                f"{method}: layer {i} ({layer_name(layer)}) is not submersive, so the "
                "forward sweep cannot recover its output cotangent without its "
                "fragment. Use `invertible.grad.mixed_grad`, which records fragments."
            )
        if not isinstance(layer, AbstractSubmersive):
            raise TypeError(
                f"{method}: layer {i} ({layer_name(layer)}) is not an "
                "`invertible.AbstractSubmersive`: it has no `inverse_jvp`. Wrap it in "
                "`invertible.SolvedInverseJVP`, or move it out of the chain."
            )


def require_invertible(layers: list[Any], method: str) -> None:
    for i, layer in enumerate(layers):
        if not isinstance(layer, AbstractInvertible):
            raise TypeError(
                f"{method}: layer {i} ({layer_name(layer)}) has no `inverse`, which "
                "reversible backprop needs to rebuild its input. Use "
                "`invertible.grad.mixed_grad` instead."
            )


def require_known(layers: list[Any], method: str) -> None:
    for i, layer in enumerate(layers):
        if not isinstance(layer, AbstractSubmersive | AbstractNonSubmersive):
            raise TypeError(
                f"{method}: layer {i} ({layer_name(layer)}) is neither an "
                "`invertible.AbstractSubmersive` nor an `AbstractNonSubmersive`. Wrap "
                "an invertible module in `invertible.SolvedInverseJVP`, or move the "
                "layer out of the chain (before or after it)."
            )


def example_layers(chain: Chain) -> list[Any]:
    """The layers to validate: all of a Sequential, one of a stack."""
    if isinstance(chain, Sequential):
        return list(chain.layers)
    return [chain.layers]
