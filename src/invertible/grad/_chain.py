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


def check_chain(chain: Chain, x: Array, method: str) -> None:
    """Walk the chain abstractly before any method runs on it: trace-time errors
    that name the layer, instead of a wrong gradient or an error from deep inside
    a `custom_vjp` or a `lax.scan`.

    - The input is a floating-point array.
    - One floating dtype throughout: every layer's floating-point parameters have
      the input's dtype, and every layer keeps it. The vijp recursion runs in that
      dtype; a float32 model fed float64 data (or the reverse) is refused rather
      than promoted layer by layer.
    - Every layer accepts the output of the one before it (its own shape checks
      run here, and their message gets the layer's index).
    - A `ScannedSequential`'s layer keeps the shape (the `lax.scan` carry).
    """
    check_float(chain, x)
    if isinstance(chain, Sequential):
        layers = chain.layers
        apply = lambda layer, x: layer(x)
    else:
        layers = (chain.layers,)
        apply = lambda stack, x: stacked_layer(
            stack, jtu.tree_map(lambda a: a[0], split_stack(stack))
        )(x)
    for i, layer in enumerate(layers):
        name = f"{method}: layer {i} ({layer_name(layer)}) of the {layer_name(chain)}"
        for leaf in jtu.tree_leaves(eqx.filter(layer, eqx.is_inexact_array)):
            if leaf.dtype != x.dtype:
                raise TypeError(
                    f"{name} holds {leaf.dtype} parameters but receives a {x.dtype} "
                    "input. A chain computes in one floating dtype: cast the input "
                    f"(`x.astype(jnp.{leaf.dtype})`) or the model (`jax.tree.map("
                    f"lambda a: a.astype(jnp.{x.dtype}) if eqx.is_inexact_array(a) "
                    "else a, model)`)."
                )
        try:
            y = eqx.filter_eval_shape(apply, layer, x)
        except (ValueError, TypeError) as error:
            source = "the chain's input" if i == 0 else "the previous layer's output"
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(
                f"{name} rejects {source}, of shape {x.shape} and dtype {x.dtype}: "
                f"{error}"
            ) from error
        if not isinstance(y, jax.ShapeDtypeStruct):
            raise TypeError(
                f"{name} must return one array, got {jtu.tree_structure(y)}."
            )
        if y.dtype != x.dtype:
            raise TypeError(
                f"{name} turns its {x.dtype} input into a {y.dtype} output. Every "
                "layer of a chain must keep the input's dtype: check for constants "
                "of another dtype in the layer."
            )
        if isinstance(chain, ScannedSequential) and y.shape != x.shape:
            raise ValueError(
                f"{name} maps shape {x.shape} to {y.shape}, but the layers of a "
                "`ScannedSequential` must keep the shape (they are scanned). Use "
                "`invertible.Sequential` for layers that change it."
            )
        x = y


def forward_mode_guard(method: str, run: Callable, *args):
    """`run(*args)`, turning JAX's error for forward-mode autodiff of a
    `custom_vjp` into one that says what to do."""
    try:
        return run(*args)
    except (TypeError, NotImplementedError) as error:
        if "custom_vjp" not in str(error) and "custom_lin" not in str(error):
            raise
        raise TypeError(
            f"{method}: a chain (`invertible.Sequential`/`ScannedSequential`) was "
            "differentiated in forward mode (`jax.jvp`, `jax.jacfwd`, "
            f"`jax.linearize`) inside the loss. {method} differentiates each chain "
            "with a `jax.custom_vjp`, which JAX differentiates in reverse mode only. "
            "Use reverse mode inside the loss (`jax.vjp`, `jax.jacrev`), or take "
            "this gradient with `invertible.grad.checkpointed_grad` or "
            "`eqx.filter_grad`. Forward-over-reverse (`jax.jvp` of the gradient "
            "function, e.g. for Hessian-vector products) is supported."
        ) from error


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
