"""Coupling layers: half the input passes through and conditions the other half."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._abstract import AbstractInvertible
from .._checks import check_input, layer_name


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


def check_conditioner_output(layer: object, out: Array, half: Array, name: str):
    if out.shape != half.shape:
        raise ValueError(
            f"{layer_name(layer)}: `{name}` must map one half of shape {half.shape} to "
            f"the other's shape {half.shape}, got output shape {out.shape}."
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
        self, x: Float[Array, "channels *rest"]
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
