"""Coupling layers: half the input passes through and conditions the other half."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._abstract import AbstractInvertible
from .._checks import check_input, check_same_shape, layer_name


def split_halves(layer: object, x: Array) -> tuple[Array, Array]:
    """Split `x` into two equal halves along its first (channel or feature) axis."""
    check_input(layer, x, describe="(channels, ...) with an even channel count")
    if x.ndim == 0 or x.shape[0] % 2:
        raise ValueError(
            f"{layer_name(layer)}: the first axis is split into two equal halves, so "
            f"it must have even size; got input shape {x.shape}. Pad the channels "
            "first (e.g. `invertible.ChannelPad`)."
        )
    half = x.shape[0] // 2
    return x[:half], x[half:]


def check_conditioner_output(
    layer: object, out: Array, half: Array, name: str, *, multiple: int = 1
):
    """Check that `out` has the shape of `half`, with `multiple` times its channels."""
    expected = (multiple * half.shape[0], *half.shape[1:])
    if out.shape != expected:
        target = (
            "the other's shape"
            if multiple == 1
            else f"{multiple} times its channels (a raw log-scale and a shift)"
        )
        raise ValueError(
            f"{layer_name(layer)}: `{name}` must map one half of shape {half.shape} to "
            f"{target}, shape {expected}; got output shape {out.shape}."
        )


def join_halves(first: Array, second: Array, swap: bool) -> Array:
    return jnp.concatenate((second, first) if swap else (first, second))


class AdditiveCoupling(AbstractInvertible):
    """The additive coupling of NICE and RevNet: `y1 = x1`, `y2 = x2 + F(x1)`.

    `x` is split into halves `x1, x2` along its first axis (channels, or features
    for a vector). `F`, the *residual*, may be any module or callable mapping one
    half to the other's shape; it need not be invertible. With `swap=True` the
    halves trade places on output, `y = (x2 + F(x1), x1)`, so that a stack of
    identical couplings updates both halves in turn.

    The vijp costs one evaluation of `F` and one vjp through it.
    """

    residual: Callable[[Array], Array]
    swap: bool = eqx.field(static=True)

    def __init__(self, residual: Callable[[Array], Array], *, swap: bool = False):
        """**Arguments:**

        - `residual`: `F`, mapping `x1` to an array of `x2`'s shape.
        - `swap`: whether to swap the halves on output.
        """
        self.residual = residual
        self.swap = swap

    def __call__(
        self, x: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "channels *rest"]:
        x1, x2 = split_halves(self, x)
        shift = self.residual(x1)
        check_conditioner_output(self, shift, x2, "residual")
        return join_halves(x1, x2 + shift, self.swap)

    def inverse(
        self, y: Float[Array, "channels *rest"]
    ) -> Float[Array, "channels *rest"]:
        first, second = split_halves(self, y)
        y1, y2 = (second, first) if self.swap else (first, second)
        return jnp.concatenate((y1, y2 - self.residual(y1)))

    def inverse_jvp(
        self, x: Float[Array, "channels *rest"], ct_x: Float[Array, "channels *rest"]
    ) -> tuple[Float[Array, "channels *rest"], Float[Array, "channels *rest"]]:
        x1, x2 = split_halves(self, x)
        ct_x1, ct_x2 = split_halves(self, ct_x)
        shift, vjp = jax.vjp(self.residual, x1)
        check_conditioner_output(self, shift, x2, "residual")
        # ct_x1 = ct_y1 + ct_y2 F'(x1) and ct_x2 = ct_y2: solve for ct_y.
        (through,) = vjp(ct_x2)
        y = join_halves(x1, x2 + shift, self.swap)
        ct_y = join_halves(ct_x1 - through, ct_x2, self.swap)
        return y, ct_y


class AffineCoupling(AbstractInvertible):
    """The affine coupling of RealNVP and Glow: `y1 = x1`, `y2 = s(x1) x2 + t(x1)`.

    `x` is split into halves `x1, x2` along its first axis (channels, or features
    for a vector). The *conditioner* maps `x1` to an array with twice the channels
    of `x2` (any module or callable; it need not be invertible): its first half is
    a raw log-scale `r`, its second half the shift `t`. The scale is

    `s = exp(max_log_scale · tanh(r / max_log_scale))`,

    a soft clamp of `exp(r)`: it equals `exp(r)` to first order near `r = 0` (a
    conditioner that outputs zeros gives the identity), and stays in
    `(exp(-max_log_scale), exp(max_log_scale))`, so it never reaches zero and the
    divisions by `s` in `inverse` and `inverse_jvp` stay well conditioned.

    With `swap=True` the halves trade places on output, `y = (y2, x1)`, as in
    `AdditiveCoupling`.

    The vijp costs one evaluation of the conditioner and one vjp through it:
    `ct_y2 = ct_x2 / s` and `ct_y1 = ct_x1 - (ct_y2 x2) ∂s/∂x1 - ct_y2 ∂t/∂x1`.
    """

    conditioner: Callable[[Array], Array]
    max_log_scale: float = eqx.field(static=True)
    swap: bool = eqx.field(static=True)

    def __init__(
        self,
        conditioner: Callable[[Array], Array],
        *,
        max_log_scale: float = 2.0,
        swap: bool = False,
    ):
        """**Arguments:**

        - `conditioner`: maps `x1`, of shape `(C/2, ...)`, to an array of shape
          `(C, ...)`: the raw log-scale (first `C/2` channels) and the shift (last
          `C/2`).
        - `max_log_scale`: the bound `m > 0` on `|log s|`; the scale lies in
          `(exp(-m), exp(m))`.
        - `swap`: whether to swap the halves on output.
        """
        if not max_log_scale > 0:
            raise ValueError(
                "AffineCoupling: `max_log_scale` must be positive (it bounds "
                f"|log scale|), got {max_log_scale}."
            )
        self.conditioner = conditioner
        self.max_log_scale = float(max_log_scale)
        self.swap = swap

    def scale_and_shift(
        self, x1: Float[Array, "half *rest"]
    ) -> tuple[Float[Array, "half *rest"], Float[Array, "half *rest"]]:
        """**Arguments:**

        - `x1`: the half that passes through.

        **Returns:**

        The pair `(s, t)` applied to the other half: `y2 = s x2 + t`.
        """
        out = self.conditioner(x1)
        check_conditioner_output(self, out, x1, "conditioner", multiple=2)
        half = x1.shape[0]
        m = self.max_log_scale
        log_scale = m * jnp.tanh(out[:half] / m)
        return jnp.exp(log_scale), out[half:]

    def __call__(
        self, x: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "channels *rest"]:
        x1, x2 = split_halves(self, x)
        scale, shift = self.scale_and_shift(x1)
        return join_halves(x1, x2 * scale + shift, self.swap)

    def inverse(
        self, y: Float[Array, "channels *rest"]
    ) -> Float[Array, "channels *rest"]:
        first, second = split_halves(self, y)
        y1, y2 = (second, first) if self.swap else (first, second)
        scale, shift = self.scale_and_shift(y1)
        return jnp.concatenate((y1, (y2 - shift) / scale))

    def inverse_jvp(
        self, x: Float[Array, "channels *rest"], ct_x: Float[Array, "channels *rest"]
    ) -> tuple[Float[Array, "channels *rest"], Float[Array, "channels *rest"]]:
        x1, x2 = split_halves(self, x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        ct_x1, ct_x2 = split_halves(self, ct_x)
        (scale, shift), vjp = jax.vjp(self.scale_and_shift, x1)
        # vjp: ct_x2 = ct_y2 s and ct_x1 = ct_y1 + (ct_y2 x2) s'(x1) + ct_y2 t'(x1).
        ct_y2 = ct_x2 / scale
        (through,) = vjp((ct_y2 * x2, ct_y2))
        y = join_halves(x1, x2 * scale + shift, self.swap)
        ct_y = join_halves(ct_x1 - through, ct_y2, self.swap)
        return y, ct_y
