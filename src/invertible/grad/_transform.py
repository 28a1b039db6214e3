"""Filtered transforms with `eqx.filter_grad`'s calling convention.

A chain method is a *rule*: a function `(chain, x) -> y` installed on every
outermost `Sequential`/`ScannedSequential` of the first argument, which computes the
chain's output under a `custom_vjp` (or checkpoints) of the method. Everything
around the chains is differentiated by ordinary reverse mode, so the result is the
same as `eqx.filter_grad`'s.

Misuse is caught at trace time, with the transform's name in the message: every
chain is walked abstractly before its rule runs (`check_chain`), and the loss must
return a floating-point scalar (or a `(loss, aux)` pair with `has_aux=True`).
"""

import functools as ft
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..layers._sequential import Sequential
from ._chain import check_chain, forward_mode_guard, is_chain, mark_chains


class _Sentinel:
    def __repr__(self):
        return "sentinel"


sentinel = _Sentinel()


def check_loss(method: str, out: Any, has_aux: bool) -> None:
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
                f"{method}(has_aux=True): the function must return a pair "
                f"`(loss, aux)`, got {got}. Return `loss, aux`, or leave `has_aux` "
                "out."
            )
        out = out[0]
    elif isinstance(out, tuple | list):
        raise TypeError(
            f"{method}: the function must return a scalar loss, got a "
            f"{type(out).__name__} of {len(out)}. If it returns `(loss, aux)`, pass "
            "`has_aux=True`."
        )
    if not isinstance(out, jax.Array | np.ndarray | np.generic | float | int):
        raise TypeError(
            f"{method}: the function must return a scalar loss, got "
            f"{type(out).__name__}."
        )
    if jnp.shape(out) != ():
        raise ValueError(
            f"{method}: the function must return a scalar loss, got shape "
            f"{jnp.shape(out)}. Reduce it, e.g. with `jnp.mean`."
        )
    dtype = jnp.result_type(out)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{method}: the loss must be a floating-point scalar, got dtype {dtype}."
        )


def checked_rule(rule: Callable, method: str, *, custom_vjp: bool = False):
    """`rule`, preceded by the trace-time checks of the chain and its input. With
    `custom_vjp`, JAX's error for forward-mode autodiff of the rule says what to
    do."""

    def checked(chain, x):
        if isinstance(chain, Sequential) and any(map(is_chain, chain.layers)):
            # A `ScannedSequential` inside a `Sequential`: each inner chain and each
            # run of layers between them is a chain of its own, by the same method.
            for part in split_at_chains(chain):
                x = checked(part, x)
            return x
        check_chain(chain, x, method)
        if custom_vjp:
            return forward_mode_guard(method, rule, chain, x)
        return rule(chain, x)

    return checked


def split_at_chains(chain: Sequential) -> list:
    """The inner chains of `chain`, and `Sequential`s of the layers between them."""
    parts, run = [], []
    for layer in chain.layers:
        if is_chain(layer):
            parts += [Sequential(run)] if run else []
            parts.append(layer)
            run = []
        else:
            run.append(layer)
    return parts + ([Sequential(run)] if run else [])


def chain_transform(
    fun,
    rule: Callable,
    *,
    has_aux: bool,
    value: bool,
    name: str,
    custom_vjp: bool = True,
):
    """`eqx.filter_grad(fun)` (or `filter_value_and_grad`), with every outermost
    chain of the first argument differentiated by `rule`. `name` is the public
    transform's, for error messages; `custom_vjp` says whether `rule` is one."""
    rule = checked_rule(rule, name, custom_vjp=custom_vjp)

    @ft.wraps(fun)
    def with_rules(first, /, *args, **kwargs):
        out = fun(mark_chains(first, rule), *args, **kwargs)
        check_loss(name, out, has_aux)
        return out

    transform = eqx.filter_value_and_grad if value else eqx.filter_grad
    return transform(with_rules, has_aux=has_aux)
