"""Trace-time input validation shared by every layer.

Shapes and dtypes are static under `jit`, so these checks cost nothing at run time
and turn a would-be wrong gradient into an error that names the layer.
"""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array


def layer_name(layer: object) -> str:
    """The class name of `layer` (or `layer` itself, if it is already a name); for
    a plain function in a chain (`jnp.tanh`), `function <name>`: its class
    (`PjitFunction`) would say nothing."""
    if isinstance(layer, str):
        return layer
    if not isinstance(layer, eqx.Module) and callable(layer):
        name = getattr(layer, "__name__", None)
        if isinstance(name, str) and not isinstance(layer, type):
            return f"function {name}"
    return type(layer).__name__


def check_float(layer: object, x: Array, what: str = "input") -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{layer_name(layer)}: the {what} must be a floating-point array, got "
            f"dtype {dtype}. Cast it first, e.g. `x.astype(jnp.float32)`."
        )


def check_input(
    layer: object,
    x: Array,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    describe: str | None = None,
    what: str = "input",
) -> None:
    """Raise `TypeError`/`ValueError` unless `x` is a float array of the given form.

    `shape` may hold `None` for a free axis. `describe` names the expected layout
    (e.g. `"(channels, height, width)"`) in the message. Layers are per-example:
    the message reminds users to `jax.vmap` over a batch.
    """
    check_float(layer, x, what)
    expected = describe or (str(tuple(shape)) if shape is not None else f"{ndim}-D")
    hint = " Layers act on one example: use `jax.vmap` for a batch."
    if ndim is None and shape is not None:
        ndim = len(shape)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(
            f"{layer_name(layer)}: expected a {ndim}-D {what} of shape {expected}, "
            f"got shape {x.shape}.{hint}"
        )
    if shape is not None:
        for got, want in zip(x.shape, shape, strict=True):
            if want is not None and got != want:
                raise ValueError(
                    f"{layer_name(layer)}: expected an {what} of shape {expected}, "
                    f"got shape {x.shape}."
                )


def check_same_shape(layer: object, a: Array, b: Array, a_name: str, b_name: str):
    if a.shape != b.shape:
        raise ValueError(
            f"{layer_name(layer)}: `{b_name}` must have the shape of `{a_name}` "
            f"{a.shape}, got {b.shape}."
        )


def positive_int(owner: str, name: str, value, *, optional: bool = False):
    """`value` if it is a positive int (not a bool), else a `ValueError` naming
    `owner` (a class or function name) and the argument. With `optional`, `None`
    passes too."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive int" + (" or None" if optional else "")
        raise ValueError(f"{owner}: `{name}` must be {allowed}, got {value!r}.")
    return value
