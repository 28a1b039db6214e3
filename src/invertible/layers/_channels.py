"""Changing the number of channels: dropping some (right-invertible) or zero-padding
(non-submersive, with a fragment)."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._abstract import AbstractNonSubmersive, AbstractSubmersive
from .._checks import check_input, check_same_shape, layer_name, positive_int


def _check_channel_first(layer: object, x: Array, what: str = "input") -> None:
    check_input(layer, x, describe="(channels, ...) or (features,)", what=what)
    if x.ndim == 0:
        raise ValueError(
            f"{layer_name(layer)}: expected an {what} of shape (channels, ...) or "
            f"(features,), got a scalar."
        )


class KeepChannels(AbstractSubmersive):
    """Keep the first `channels` channels (or features) and drop the rest.

    `y = x[:channels]`, acting on the first axis of a `(C, ...)` input (an image
    `(C, H, W)` or a vector `(features,)`). A right-invertible layer: the vjp pads
    `ct_y` with zeros, so its unique inverse is `ct_y = ct_x[:channels]`. This is
    the "factor out" step of multi-scale flows.
    """

    channels: int = eqx.field(static=True)

    def __init__(self, channels: int):
        """**Arguments:**

        - `channels`: how many leading channels to keep, at least one and at most
          the input's.
        """
        self.channels = positive_int(layer_name(self), "channels", channels)

    def _check(self, x: Array, what: str = "input") -> None:
        _check_channel_first(self, x, what)
        if x.shape[0] < self.channels:
            raise ValueError(
                f"{layer_name(self)}: cannot keep {self.channels} channels of an "
                f"{what} of shape {x.shape} with only {x.shape[0]}."
            )

    def __call__(
        self, x: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "kept *rest"]:
        """**Arguments:**

        - `x`: an input of shape `(C, ...)`, `C >= channels`.
        - `key`: ignored; keyword-only, as in every Equinox layer.

        **Returns:**

        `x[:channels]`.
        """
        self._check(x)
        return x[: self.channels]

    def inverse_jvp(
        self,
        x: Float[Array, "channels *rest"],
        ct_x: Float[Array, "channels *rest"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "kept *rest"], Float[Array, "kept *rest"]]:
        """The vijp: `ct_y = ct_x[:channels]`.

        **Arguments:**

        - `x`: the input.
        - `ct_x`: its cotangent, of the same shape.

        **Returns:**

        `(y, ct_y)` with `y == self(x)`.
        """
        check_same_shape(self, x, ct_x, "x", "ct_x")
        return self(x), ct_x[: self.channels]


class ChannelPad(AbstractNonSubmersive):
    """Zero-pad the channels (or features) from `C` up to `out_channels`.

    `y = concat(x, zeros)` along the first axis of a `(C, ...)` input (an image
    `(C, H, W)` or a vector `(features,)`), e.g. to give a coupling more room
    (i-RevNet's injective variant). Not submersive: the vjp keeps only
    `ct_y[:C]`, so the padded entries' cotangent `ct_y[C:]` is lost. That part is
    the **fragment**; with it, `inverse_jvp` rebuilds `ct_y = concat(ct_x,
    fragment)`.
    """

    out_channels: int = eqx.field(static=True)

    def __init__(self, out_channels: int):
        """**Arguments:**

        - `out_channels`: the number of channels after padding, at least the
          input's.
        """
        self.out_channels = positive_int(layer_name(self), "out_channels", out_channels)

    def _check(self, x: Array, what: str = "input") -> None:
        _check_channel_first(self, x, what)
        if x.shape[0] > self.out_channels:
            raise ValueError(
                f"{layer_name(self)}: cannot pad an {what} of shape {x.shape} to "
                f"fewer channels ({self.out_channels}); use `invertible.KeepChannels` "
                "to drop channels."
            )

    def __call__(
        self, x: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out_channels *rest"]:
        """**Arguments:**

        - `x`: an input of shape `(C, ...)`, `C <= out_channels`.
        - `key`: ignored; keyword-only, as in every Equinox layer.

        **Returns:**

        `x` followed by `out_channels - C` channels of zeros.
        """
        self._check(x)
        zeros = jnp.zeros((self.out_channels - x.shape[0], *x.shape[1:]), x.dtype)
        return jnp.concatenate((x, zeros))

    def _check_output(self, x: Array, ct_y: Array) -> None:
        expected = (self.out_channels, *x.shape[1:])
        if ct_y.shape != expected:
            raise ValueError(
                f"{layer_name(self)}: `ct_y` must have the output's shape {expected}, "
                f"got {ct_y.shape}."
            )

    def fragment(
        self,
        x: Float[Array, "channels *rest"],
        ct_y: Float[Array, "out_channels *rest"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "padded *rest"]:
        """The cotangent of the padded channels, `ct_y[C:]`.

        **Arguments:**

        - `x`: the input, of shape `(C, ...)`.
        - `ct_y`: a cotangent of the output.

        **Returns:**

        `ct_y[C:]`, of shape `(out_channels - C, ...)`.
        """
        self._check(x)
        self._check_output(x, ct_y)
        return ct_y[x.shape[0] :]

    def inverse_jvp(
        self,
        x: Float[Array, "channels *rest"],
        ct_x: Float[Array, "channels *rest"],
        fragment: Float[Array, "padded *rest"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "out_channels *rest"], Float[Array, "out_channels *rest"]]:
        """Rebuild `ct_y = concat(ct_x, fragment)`.

        **Arguments:**

        - `x`: the input.
        - `ct_x`: its cotangent, of the same shape.
        - `fragment`: `self.fragment(x, ct_y)`.

        **Returns:**

        `(y, ct_y)` with `y == self(x)`.
        """
        self._check(x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        expected = (self.out_channels - x.shape[0], *x.shape[1:])
        if fragment.shape != expected:
            raise ValueError(
                f"{layer_name(self)}: the fragment must have shape {expected} (the "
                f"padded channels), got {fragment.shape}."
            )
        return self(x), jnp.concatenate((ct_x, fragment.astype(ct_x.dtype)))
