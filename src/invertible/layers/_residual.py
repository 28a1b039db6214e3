"""Calling a coupling's residual or conditioner: its key, state and condition.

A residual is any callable. It gets the coupling's `key` if it takes one (Equinox
modules do, so an `eqx.nn.Dropout` inside an `eqx.nn.Sequential` gets its key), the
`state` if it is stateful (Equinox's `StatefulLayer` protocol: `eqx.nn.BatchNorm`,
an `eqx.nn.Sequential` holding one), and the condition, concatenated to its input
along the coupling's axis.
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array

from .._carry import is_stateful
from .._checks import layer_name
from .._signatures import takes


def with_condition(layer: object, x: Array, condition: Array, axis: int) -> Array:
    """`x` with the condition (a vector) appended along `axis`, broadcast over the
    other axes (a class embedding becomes extra channels of an image)."""
    condition = jnp.asarray(condition)
    if condition.ndim != 1:
        raise ValueError(
            f"{layer_name(layer)}: the condition must be a vector (one per example), "
            f"got shape {condition.shape}."
        )
    shape = list(x.shape)
    shape[axis] = condition.shape[0]
    expand = [1] * x.ndim
    expand[axis] = condition.shape[0]
    tiled = jnp.broadcast_to(condition.astype(x.dtype).reshape(expand), shape)
    return jnp.concatenate((x, tiled), axis=axis)


def call_residual(
    layer: object,
    fn: Callable,
    x: Array,
    *,
    key: Any = None,
    state: Any = None,
    condition: Array | None = None,
    axis: int = 0,
) -> tuple[Array, Any]:
    """`(fn(x, ...), new state)`; `layer` names errors."""
    if condition is not None:
        x = with_condition(layer, x, condition, axis)
    options = {"key": key} if key is not None and takes(fn, "key") else {}
    if is_stateful(fn) and state is None:
        raise TypeError(
            f"{layer_name(layer)}: its {layer_name(fn)} is stateful; call it as "
            "`layer(x, state)` (or its chain as `chain(x, state)`), with the "
            "state from `eqx.nn.make_with_state`."
        )
    try:
        if is_stateful(fn):
            return fn(x, state, **options)
        return fn(x, **options), state
    except (TypeError, ValueError) as error:
        if type(error) not in (TypeError, ValueError):
            raise  # JAX's own kinds (say, a concretization error) stay as they are
        # The usual cause: a conditional flow called without its condition, or
        # a plain one with one.
        given = (
            "no condition"
            if condition is None
            else f"the condition appended along axis {axis}"
        )
        raise type(error)(
            f"{layer_name(layer)}: its {layer_name(fn)} rejects its input, of shape "
            f"{x.shape} ({given}; a conditional layer needs `condition=` at every "
            f"call): {error}"
        ) from error
