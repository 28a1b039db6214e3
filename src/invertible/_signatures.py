"""Which keywords a layer's methods take: the call site passes a key, a condition
or a state only to methods that take them."""

import functools as ft
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx


def _takes(fn: Callable, keyword: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )


@ft.lru_cache(maxsize=1024)
def _method_takes(cls: type, method: str, keyword: str) -> bool:
    return _takes(getattr(cls, method), keyword)


def takes(fn: Any, keyword: str, method: str = "__call__") -> bool:
    """Whether `fn`'s `method` takes the keyword (looked up once per class for
    modules; a plain function's own signature otherwise)."""
    if isinstance(fn, eqx.Module):
        return _method_takes(type(fn), method, keyword)
    return _takes(fn if method == "__call__" else getattr(fn, method), keyword)


def only_taken(fn: Any, method: str, kwargs: dict) -> dict:
    """The entries of `kwargs` that `fn`'s `method` takes."""
    return {k: v for k, v in kwargs.items() if takes(fn, k, method)}
