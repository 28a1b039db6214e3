"""Coupling layers: half the input passes through and conditions the other half."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._abstract import AbstractInvertible
from .._carry import is_stateful
from .._checks import check_input, check_same_shape, layer_name
from ._residual import call_residual

_sentinel = object()


def _axis(layer, x: Array) -> int:
    axis = layer.axis
    if not -x.ndim <= axis < max(x.ndim, 1):
        raise ValueError(
            f"{layer_name(layer)}: cannot split axis {axis} of an input of shape "
            f"{x.shape}."
        )
    return axis % x.ndim


def split_halves(layer: object, x: Array) -> tuple[Array, Array]:
    """Split `x` into two equal halves along the layer's `axis`."""
    check_input(layer, x, describe="(channels, ...) with an even channel count")
    if x.ndim == 0:
        raise ValueError(f"{layer_name(layer)}: cannot split a scalar input in halves.")
    axis = _axis(layer, x)
    if x.shape[axis] % 2:
        raise ValueError(
            f"{layer_name(layer)}: axis {axis} is split into two equal halves, so it "
            f"must have even size; got input shape {x.shape}. Pad the channels first "
            "(e.g. `invertible.ChannelPad`), or choose another `axis`."
        )
    return tuple(jnp.split(x, 2, axis=axis))


def join_halves(layer: object, first: Array, second: Array) -> Array:
    parts = (second, first) if layer.swap else (first, second)
    return jnp.concatenate(parts, axis=_axis(layer, first))


def output_halves(layer: object, y: Array) -> tuple[Array, Array]:
    """`(y1, y2)`: the halves of an output, undoing `swap`."""
    first, second = split_halves(layer, y)
    return (second, first) if layer.swap else (first, second)


def check_conditioner_output(
    layer: object, out: Array, half: Array, name: str, *, multiple: int = 1
):
    """Check that `out` has the shape of `half`, with `multiple` times its size
    along the coupling's axis."""
    axis = _axis(layer, half)
    expected = list(half.shape)
    expected[axis] *= multiple
    expected = tuple(expected)
    if out.shape != expected:
        target = (
            "the other's shape"
            if multiple == 1
            else f"{multiple} times its size along axis {axis} (a raw log-scale and "
            "a shift)"
        )
        raise ValueError(
            f"{layer_name(layer)}: `{name}` must map one half of shape {half.shape} to "
            f"{target}, shape {expected}; got output shape {out.shape}."
        )


class _Coupling(AbstractInvertible, eqx.nn.StatefulLayer):
    """What both couplings share: the halves, the key, state and condition that
    reach the network, and Equinox's stateful-layer protocol."""

    def is_stateful(self) -> bool:
        """Whether the network is stateful (then the coupling is called as
        `coupling(x, state) -> (y, state)`)."""
        return is_stateful(self._network)

    def _run(self, x1, key, state, condition):
        return call_residual(
            self,
            self._network,
            x1,
            key=key,
            state=state,
            condition=condition,
            axis=_axis(self, x1),
        )

    def _log_det_zero(self, x: Array) -> Array:
        return jnp.zeros((), x.dtype)


class AdditiveCoupling(_Coupling):
    """The additive coupling of NICE and RevNet: `y1 = x1`, `y2 = x2 + F(x1)`.

    `x` is split into halves `x1, x2` along `axis` (0: the channels of an image or
    the features of a vector; -1: the features of a `(tokens, features)`
    sequence). `F`, the *residual*, may be any module or callable mapping one half
    to the other's shape; it need not be invertible. It gets the coupling's `key`
    if it takes one (dropout), the state if it is stateful (batch norm), and the
    condition appended along `axis`. With `swap=True` the halves trade places on
    output, `y = (x2 + F(x1), x1)`, so that a stack of identical couplings updates
    both halves in turn.

    The vijp costs one evaluation of `F` and one vjp through it; the log-det is 0.
    """

    residual: Callable
    swap: bool = eqx.field(static=True)
    axis: int = eqx.field(static=True)

    def __init__(self, residual: Callable, *, swap: bool = False, axis: int = 0):
        """**Arguments:**

        - `residual`: `F`, mapping `x1` (with the condition appended, in a
          conditional flow) to an array of `x2`'s shape.
        - `swap`: whether to swap the halves on output.
        - `axis`: the axis split into halves.
        """
        self.residual = residual
        self.swap = swap
        self.axis = axis

    @property
    def _network(self):
        return self.residual

    def _shift(self, x1, x2, key, state, condition):
        shift, state = self._run(x1, key, state, condition)
        check_conditioner_output(self, shift, x2, "residual")
        return shift, state

    def __call__(
        self,
        x: Float[Array, "..."],
        state: Any = _sentinel,
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> Any:
        x1, x2 = split_halves(self, x)
        given = None if state is _sentinel else state
        shift, new_state = self._shift(x1, x2, key, given, condition)
        y = join_halves(self, x1, x2 + shift)
        return y if state is _sentinel else (y, new_state)

    def inverse(
        self,
        y: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
        state: Any = None,
    ) -> Float[Array, "..."]:
        y1, y2 = output_halves(self, y)
        shift, _ = self._shift(y1, y2, key, state, condition)
        return jnp.concatenate((y1, y2 - shift), axis=_axis(self, y))

    def inverse_jvp(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
        state: Any = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        x1, x2 = split_halves(self, x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        ct_x1, ct_x2 = split_halves(self, ct_x)
        shift, vjp = jax.vjp(
            lambda x1: self._shift(x1, x2, key, state, condition)[0], x1
        )
        # ct_x1 = ct_y1 + ct_y2 F'(x1) and ct_x2 = ct_y2: solve for ct_y.
        (through,) = vjp(ct_x2)
        y = join_halves(self, x1, x2 + shift)
        return y, join_halves(self, ct_x1 - through, ct_x2)

    def forward_and_log_det(
        self,
        x: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, ""]]:
        return self(x, key=key, condition=condition), self._log_det_zero(x)

    def inverse_and_log_det(self, y, **kwargs):
        return self.inverse(y, **kwargs), self._log_det_zero(y)

    def inverse_jvp_and_log_det(self, x, ct_x, ct_log_det, **kwargs):
        y, ct_y = self.inverse_jvp(x, ct_x, **kwargs)
        return y, self._log_det_zero(x), ct_y


class AffineCoupling(_Coupling):
    """The affine coupling of RealNVP and Glow: `y1 = x1`, `y2 = s(x1) x2 + t(x1)`.

    `x` is split into halves `x1, x2` along `axis` (as in `AdditiveCoupling`). The
    *conditioner* maps `x1` to an array with twice the size of `x2` along `axis`
    (any module or callable; it need not be invertible): its first half is a raw
    log-scale `r`, its second half the shift `t`. The scale is

    `s = exp(max_log_scale · tanh(r / max_log_scale))`,

    a soft clamp of `exp(r)`: it equals `exp(r)` to first order near `r = 0` (a
    conditioner that outputs zeros gives the identity), and stays in
    `(exp(-max_log_scale), exp(max_log_scale))`, so it never reaches zero and the
    divisions by `s` in `inverse` and `inverse_jvp` stay well conditioned.

    With `swap=True` the halves trade places on output, `y = (y2, x1)`, as in
    `AdditiveCoupling`; the conditioner gets the key, state and condition as the
    residual does there.

    The vijp costs one evaluation of the conditioner and one vjp through it:
    `ct_y2 = ct_x2 / s` and `ct_y1 = ct_x1 - (ct_y2 x2) ∂s/∂x1 - ct_y2 ∂t/∂x1`. The
    log-det is `Σ log s`; with it, the augmented vijp is still one vjp.
    """

    conditioner: Callable
    max_log_scale: float = eqx.field(static=True)
    swap: bool = eqx.field(static=True)
    axis: int = eqx.field(static=True)

    def __init__(
        self,
        conditioner: Callable,
        *,
        max_log_scale: float = 2.0,
        swap: bool = False,
        axis: int = 0,
    ):
        """**Arguments:**

        - `conditioner`: maps `x1` (with the condition appended, in a conditional
          flow) to an array with twice `x1`'s size along `axis`: the raw log-scale
          (first half) and the shift (second half).
        - `max_log_scale`: the bound `m > 0` on `|log s|`; the scale lies in
          `(exp(-m), exp(m))`.
        - `swap`: whether to swap the halves on output.
        - `axis`: the axis split into halves.
        """
        if not max_log_scale > 0:
            raise ValueError(
                "AffineCoupling: `max_log_scale` must be positive (it bounds "
                f"|log scale|), got {max_log_scale}."
            )
        self.conditioner = conditioner
        self.max_log_scale = float(max_log_scale)
        self.swap = swap
        self.axis = axis

    @property
    def _network(self):
        return self.conditioner

    def _scale(self, x1, key, state, condition):
        """`(log s, t, new state)`."""
        out, state = self._run(x1, key, state, condition)
        check_conditioner_output(self, out, x1, "conditioner", multiple=2)
        raw, shift = jnp.split(out, 2, axis=_axis(self, x1))
        m = self.max_log_scale
        return m * jnp.tanh(raw / m), shift, state

    def scale_and_shift(
        self,
        x1: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
        state: Any = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """**Arguments:**

        - `x1`: the half that passes through.
        - `key`, `condition`, `state`: as for `__call__`.

        **Returns:**

        The pair `(s, t)` applied to the other half: `y2 = s x2 + t`.
        """
        log_scale, shift, _ = self._scale(x1, key, state, condition)
        return jnp.exp(log_scale), shift

    def _forward(self, x, key, state, condition):
        x1, x2 = split_halves(self, x)
        log_scale, shift, state = self._scale(x1, key, state, condition)
        y = join_halves(self, x1, x2 * jnp.exp(log_scale) + shift)
        return y, jnp.sum(log_scale), state

    def __call__(
        self,
        x: Float[Array, "..."],
        state: Any = _sentinel,
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> Any:
        given = None if state is _sentinel else state
        y, _, new_state = self._forward(x, key, given, condition)
        return y if state is _sentinel else (y, new_state)

    def forward_and_log_det(
        self,
        x: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, ""]]:
        y, log_det, _ = self._forward(x, key, None, condition)
        return y, log_det

    def inverse_and_log_det(
        self,
        y: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
        state: Any = None,
    ) -> tuple[Float[Array, "..."], Float[Array, ""]]:
        y1, y2 = output_halves(self, y)
        log_scale, shift, _ = self._scale(y1, key, state, condition)
        x2 = (y2 - shift) * jnp.exp(-log_scale)
        return jnp.concatenate((y1, x2), axis=_axis(self, y)), -jnp.sum(log_scale)

    def inverse(
        self,
        y: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
        state: Any = None,
    ) -> Float[Array, "..."]:
        return self.inverse_and_log_det(y, key=key, condition=condition, state=state)[0]

    def inverse_jvp_and_log_det(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        ct_log_det: Float[Array, ""],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
        state: Any = None,
    ) -> tuple[Float[Array, "..."], Float[Array, ""], Float[Array, "..."]]:
        x1, x2 = split_halves(self, x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        ct_x1, ct_x2 = split_halves(self, ct_x)

        def conditioner(x1):
            log_scale, shift, _ = self._scale(x1, key, state, condition)
            return jnp.exp(log_scale), shift, jnp.sum(log_scale)

        (scale, shift, log_det), vjp = jax.vjp(conditioner, x1)
        # vjp: ct_x2 = ct_y2 s and ct_x1 = ct_y1 + (ct_y2 x2) s'(x1) + ct_y2 t'(x1)
        # (+ ct_log_det ∇log_det with a log-det): one vjp through the conditioner.
        ct_y2 = ct_x2 / scale
        (through,) = vjp((ct_y2 * x2, ct_y2, ct_log_det))
        y = join_halves(self, x1, x2 * scale + shift)
        return y, log_det, join_halves(self, ct_x1 - through, ct_y2)

    def inverse_jvp(
        self,
        x: Float[Array, "..."],
        ct_x: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        condition: Array | None = None,
        state: Any = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        zero = jnp.zeros((), jnp.result_type(x))
        y, _, ct_y = self.inverse_jvp_and_log_det(
            x, ct_x, zero, key=key, condition=condition, state=state
        )
        return y, ct_y
