"""Filtered transforms with `eqx.filter_grad`'s calling convention.

A chain method is a *rule*: a function `(chain, x) -> y` installed on every
outermost `Sequential`/`ScannedSequential` of the first argument, which computes the
chain's output under a `custom_vjp` (or checkpoints) of the method. Everything
around the chains is differentiated by ordinary reverse mode, so the result is the
same as `eqx.filter_grad`'s.
"""

import functools as ft
from collections.abc import Callable

import equinox as eqx

from ._chain import mark_chains


class _Sentinel:
    def __repr__(self):
        return "sentinel"


sentinel = _Sentinel()


def chain_transform(fun, rule: Callable, *, has_aux: bool, value: bool):
    @ft.wraps(fun)
    def with_rules(first, /, *args, **kwargs):
        return fun(mark_chains(first, rule), *args, **kwargs)

    transform = eqx.filter_value_and_grad if value else eqx.filter_grad
    return transform(with_rules, has_aux=has_aux)
