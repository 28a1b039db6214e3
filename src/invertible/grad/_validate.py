"""Trace-time checks of a chain and its input, before any method runs on it.

Errors name the transform, the layer's index and class, and what to do, instead of
a wrong gradient or an error from deep inside a `custom_vjp` or a `lax.scan`.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.tree_util as jtu

from .._carry import (
    Carry,
    factors,
    forward,
    is_invertible,
    is_known,
    is_stateful,
    is_submersive,
    needs_fragment,
    replace,
)
from .._checks import check_float, layer_name
from .._layout import AbstractLayout, Scanned


def _where(method: str, i: int, layer, layout: AbstractLayout) -> str:
    chain = "ScannedSequential" if isinstance(layout, Scanned) else "Sequential"
    return f"{method}: layer {i} ({layer_name(layer)}) of the {chain}"


def check_chain(layout: AbstractLayout, carry: Carry, method: str) -> None:
    """Walk the chain abstractly:

    - the input is a floating-point array;
    - one floating dtype throughout: every layer's floating-point parameters have
      the input's dtype, and every layer keeps it (the vijp recursion runs in that
      dtype; a float32 model fed float64 data, or the reverse, is refused rather
      than promoted layer by layer);
    - every layer accepts the output of the one before it (its own shape checks run
      here, and their message gets the layer's index);
    - a stacked layer or block keeps the shape (the `lax.scan` carry);
    - stateful layers do not share state entries (each recomputation reads the
      state as it was at the chain's call).
    """
    check_float(method, carry.x)
    x = carry.x
    dtype = jax.numpy.result_type(x)
    layers = layout.layer_types()
    markers: dict = {}
    for i, layer in enumerate(layers):
        name = _where(method, i, layer, layout)
        for leaf in jtu.tree_leaves(eqx.filter(layer, eqx.is_inexact_array)):
            if leaf.dtype != dtype:
                raise TypeError(
                    f"{name} holds {leaf.dtype} parameters but receives a {dtype} "
                    "input. A chain computes in one floating dtype: cast the input "
                    f"(`x.astype(jnp.{leaf.dtype})`) or the model (`jax.tree.map("
                    f"lambda a: a.astype(jnp.{dtype}) if eqx.is_inexact_array(a) "
                    "else a, model)`)."
                )
        if is_stateful(layer):
            for index in _state_indices(layer):
                if index.marker in markers:
                    other = markers[index.marker]
                    raise ValueError(
                        f"{name} shares a state entry with layer {other}: every "
                        "recomputation reads the state as it was at the chain's "
                        "call, which is exact only when each layer has its own. "
                        "Give each layer its own stateful sublayers."
                    )
                markers[index.marker] = i
        example = jax.ShapeDtypeStruct(x.shape, x.dtype)
        try:
            y = eqx.filter_eval_shape(
                lambda layer, x, i: forward(layer, replace(carry, x=x), i).x,
                layer,
                example,
                i,
            )
        except (ValueError, TypeError) as error:
            source = "the chain's input" if i == 0 else "the previous layer's output"
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(
                f"{name} rejects {source}, of shape {x.shape} and dtype {dtype}: "
                f"{error}"
            ) from error
        if not isinstance(y, jax.ShapeDtypeStruct):
            raise TypeError(
                f"{name} must return one array, got {jtu.tree_structure(y)}."
            )
        if y.dtype != dtype:
            raise TypeError(
                f"{name} turns its {dtype} input into a {y.dtype} output. Every "
                "layer of a chain must keep the input's dtype: check for constants "
                "of another dtype in the layer."
            )
        x = y
    if isinstance(layout, Scanned) and x.shape != carry.x.shape:
        what = (
            _where(method, 0, layers[0], layout)
            if len(layers) == 1
            else (f"{method}: the stacked block of the ScannedSequential")
        )
        raise ValueError(
            f"{what} maps shape "
            f"{carry.x.shape} to {x.shape}, but a stack must keep the shape (it is "
            "scanned). Use `invertible.Sequential` for layers that change it."
        )


def _state_indices(layer) -> list:
    return [
        leaf
        for leaf in jtu.tree_leaves(
            layer, is_leaf=lambda x: isinstance(x, eqx.nn.StateIndex)
        )
        if isinstance(leaf, eqx.nn.StateIndex)
    ]


def _require(layout, method: str, ok: Callable, kind, message: str) -> None:
    for i, layer in enumerate(layout.layer_types()):
        if not ok(layer):
            raise kind(f"{method}: layer {i} ({layer_name(layer)}) {message}")


def require_known(layout, method: str) -> None:
    _require(
        layout,
        method,
        is_known,
        TypeError,
        "is neither an `invertible.AbstractSubmersive` nor an "
        "`AbstractNonSubmersive`. Wrap an invertible module in "
        "`invertible.SolvedInverseJVP`, or move the layer out of the chain (before "
        "or after it).",
    )


def require_submersive(layout, method: str) -> None:
    _require(
        layout,
        method,
        lambda layer: not needs_fragment(layer),
        ValueError,
        "is not submersive, so the forward sweep cannot recover its output "
        "cotangent without its fragment. Use `invertible.grad.mixed_grad`, which "
        "records fragments.",
    )
    _require(
        layout,
        method,
        is_submersive,
        TypeError,
        "is not an `invertible.AbstractSubmersive`: it has no `inverse_jvp`. Wrap "
        "it in `invertible.SolvedInverseJVP`, or move it out of the chain.",
    )


def require_invertible(layout, method: str) -> None:
    _require(
        layout,
        method,
        lambda layer: is_invertible(layer) or factors(layer),
        TypeError,
        "has no `inverse`, which reversible backprop needs to rebuild its input. "
        "Use `invertible.grad.mixed_grad` instead.",
    )
