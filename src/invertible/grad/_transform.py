"""`filter_grad` and `filter_value_and_grad` by a method: `eqx.filter_grad`'s
calling convention, with the chains differentiated by the method.

The transform marks every outermost chain of the first argument that has no method
of its own (a pytree leaf: tree structures are unchanged), and makes the method the
default while the function is traced, for chains built inside it and for lone
invertible layers (see `invertible/_method.py`). Everything else is differentiated
by ordinary reverse mode, so the result equals `eqx.filter_grad`'s.
"""

import functools as ft
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from .._carry import is_chain
from .._method import AbstractMethod, Usage, default_method
from ._report import assemble, collecting, zero_taps


class _Sentinel:
    def __repr__(self):
        return "sentinel"


sentinel = _Sentinel()


def with_method(chain, method: AbstractMethod):
    """The same chain, differentiated by `method` (its tree structure unchanged)."""
    return eqx.tree_at(lambda c: c.method, chain, method, is_leaf=lambda x: x is None)


def mark_chains(tree: PyTree, method: AbstractMethod) -> PyTree:
    """Give every outermost chain in `tree` that has no method the `method`. Chains
    nested inside a layer (say, a coupling's residual) stay plain: the outer method
    differentiates them."""
    return jtu.tree_map(
        lambda node: (
            with_method(node, method)
            if is_chain(node) and node.method is None
            else node
        ),
        tree,
        is_leaf=is_chain,
    )


def check_loss(name: str, out: Any, has_aux: bool) -> None:
    """Raise unless `out` is what `fun` must return: a floating-point scalar, or
    with `has_aux` a pair `(scalar, aux)`."""
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            got = (
                f"an array of shape {jnp.shape(out)}"
                if isinstance(out, jax.Array | np.ndarray)
                else f"a {type(out).__name__}"
            )
            raise TypeError(
                f"{name}(has_aux=True): the function must return a pair "
                f"`(loss, aux)`, got {got}. Return `loss, aux`, or leave `has_aux` "
                "out."
            )
        out = out[0]
    elif isinstance(out, tuple | list):
        raise TypeError(
            f"{name}: the function must return a scalar loss, got a "
            f"{type(out).__name__} of {len(out)}. If it returns `(loss, aux)`, pass "
            "`has_aux=True`."
        )
    if not isinstance(out, jax.Array | np.ndarray | np.generic | float | int):
        raise TypeError(
            f"{name}: the function must return a scalar loss, got {type(out).__name__}."
        )
    if jnp.shape(out) != ():
        raise ValueError(
            f"{name}: the function must return a scalar loss, got shape "
            f"{jnp.shape(out)}. Reduce it, e.g. with `jnp.mean`."
        )
    dtype = jnp.result_type(out)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name}: the loss must be a floating-point scalar, got dtype {dtype}."
        )


def warn_about(name: str, usage: Usage) -> None:
    """Say, once per trace, where the method could not do its job."""
    if usage.unhandled:
        layers = ", ".join(f"{n} x{c}" for n, c in sorted(usage.unhandled.items()))
        warnings.warn(
            f"{name}: layers called outside a chain that its method cannot "
            f"differentiate ({layers}) were differentiated by plain backprop.",
            stacklevel=4,
        )
    if usage.chains == 0 and not usage.lone_layers:
        warnings.warn(
            f"{name}: the function called no invertible chain or layer, so its "
            "gradient is plain backprop (`eqx.filter_grad`'s). Put invertible layers "
            "in an `invertible.Sequential` or `ScannedSequential`.",
            stacklevel=4,
        )
    elif sum(usage.lone_layers.values()) > 1:
        layers = ", ".join(f"{n} x{c}" for n, c in sorted(usage.lone_layers.items()))
        warnings.warn(
            f"{name}: invertible layers were called outside a chain ({layers}), so "
            "each was differentiated as a chain of its own, keeping about what "
            "per-layer checkpointing keeps. Put consecutive layers in an "
            "`invertible.Sequential` (or `ScannedSequential`) for the full saving.",
            stacklevel=4,
        )


def method_transform(
    fun: Callable,
    method: AbstractMethod,
    *,
    has_aux: bool,
    value: bool,
    name: str,
    report: bool = False,
):
    """`eqx.filter_grad(fun)` (or `filter_value_and_grad`), with every chain
    differentiated by `method`; `name` is the public transform's, for messages.
    With `report`, the returned function returns `(out, report)`, `out` being what
    it returns otherwise (see `_report.py`)."""

    def traced(first, args, kwargs):
        usage = Usage(name=name)
        with default_method(method, usage):
            out = fun(mark_chains(first, method), *args, **kwargs)
        check_loss(name, out, has_aux)
        warn_about(name, usage)
        return out

    @ft.wraps(fun)
    def with_chains_marked(first, /, *args, **kwargs):
        return traced(first, args, kwargs)

    transform = eqx.filter_value_and_grad if value else eqx.filter_grad
    if not report:
        return transform(with_chains_marked, has_aux=has_aux)

    @ft.wraps(fun)
    def with_taps(model_and_taps, /, *args, **kwargs):
        first, taps = model_and_taps
        with collecting(taps):
            return traced(first, args, kwargs)

    differentiated = transform(with_taps, has_aux=has_aux)

    @ft.wraps(fun)
    def with_report(first, /, *args, **kwargs):
        with collecting() as counted, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said again by the real trace
            eqx.filter_eval_shape(traced, first, args, kwargs)
        taps = zero_taps(counted.specs)
        out = differentiated((first, taps), *args, **kwargs)
        # `(grads, taps)` stands where the gradients stand: `eqx.filter_grad`'s
        # output, or `(value, grads)`, with `aux` after the gradients or the value.
        if value:
            head, (grads, tap_grads) = out
            out = (head, grads)
        elif has_aux:
            (grads, tap_grads), aux = out
            out = (grads, aux)
        else:
            grads, tap_grads = out
            out = grads
        return out, assemble(counted.specs, tap_grads)

    return with_report
