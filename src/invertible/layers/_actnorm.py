"""Glow's activation normalisation: a learnt per-channel affine map."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_input, check_same_shape, layer_name
from ._log_det import AbstractFlatLogDet


class ActNorm(AbstractFlatLogDet):
    """`y = (x + bias) · exp(log_scale)`, per channel (Glow, Kingma & Dhariwal 2018).

    The channel is the first axis: the layer acts on images `(C, H, W)`, vectors
    `(C,)` or any `(C, ...)` input, with one `bias` and one `log_scale` per channel.
    The scale `exp(log_scale)` cannot reach zero. It starts as the identity; use
    `ActNorm.from_data` for Glow's data-dependent initialisation.

    The vijp is `ct_y = ct_x · exp(-log_scale)`.
    """

    bias: Float[Array, " channels"]
    log_scale: Float[Array, " channels"]
    channels: int = eqx.field(static=True)

    def __init__(self, channels: int, *, dtype=None):
        """**Arguments:**

        - `channels`: the size `C` of the first axis of the input.
        - `dtype`: the floating-point dtype of the parameters; defaults to JAX's
          default float.
        """
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(
                f"ActNorm: `channels` must be a positive int, got {channels!r}."
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.channels = channels
        self.bias = jnp.zeros((channels,), dtype)
        self.log_scale = jnp.zeros((channels,), dtype)

    @classmethod
    def from_data(
        cls, xs: Float[Array, "batch channels *rest"], *, eps: float = 1e-6
    ) -> "ActNorm":
        """Glow's data-dependent initialisation: outputs of zero mean and unit variance
        per channel on the batch `xs`. A pure function of `xs`.

        **Arguments:**

        - `xs`: a batch of inputs, `(batch, C, ...)`.
        - `eps`: added to the standard deviation before taking its logarithm.

        **Returns:**

        An `ActNorm` with `bias = -mean` and `log_scale = -log(std + eps)`, the
        statistics taken per channel over the batch and any other axes. To use it
        inside a model, replace the layer with `eqx.tree_at`.
        """
        if not jnp.issubdtype(jnp.result_type(xs), jnp.floating):
            raise TypeError(
                "ActNorm.from_data: `xs` must be a floating-point array, got dtype "
                f"{jnp.result_type(xs)}."
            )
        if xs.ndim < 2:
            raise ValueError(
                "ActNorm.from_data: `xs` must be a batch of shape (batch, channels, "
                f"...), got shape {xs.shape}."
            )
        axes = (0, *range(2, xs.ndim))
        layer = cls(xs.shape[1], dtype=xs.dtype)
        bias = -jnp.mean(xs, axis=axes)
        log_scale = -jnp.log(jnp.std(xs, axis=axes) + eps)
        return eqx.tree_at(lambda a: (a.bias, a.log_scale), layer, (bias, log_scale))

    def _check(self, x: Array, what: str = "input") -> None:
        check_input(self, x, describe=f"({self.channels}, ...)", what=what)
        if x.ndim == 0 or x.shape[0] != self.channels:
            raise ValueError(
                f"{layer_name(self)}: expected an {what} of shape ({self.channels}, "
                f"...) (one entry per channel on the first axis), got shape {x.shape}."
            )

    def log_abs_det(self, x: Float[Array, "channels *rest"]) -> Float[Array, ""]:
        """`Σ log_scale` times the number of entries per channel."""
        self._check(x)
        return jnp.sum(self.log_scale) * (x.size // self.channels)

    def _per_channel(self, p: Array, x: Array) -> Array:
        return p.reshape((self.channels,) + (1,) * (x.ndim - 1))

    def __call__(
        self, x: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "channels *rest"]:
        self._check(x)
        scale = jnp.exp(self._per_channel(self.log_scale, x))
        return (x + self._per_channel(self.bias, x)) * scale

    def inverse(
        self, y: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "channels *rest"]:
        self._check(y)
        inverse_scale = jnp.exp(-self._per_channel(self.log_scale, y))
        return y * inverse_scale - self._per_channel(self.bias, y)

    def inverse_jvp(
        self,
        x: Float[Array, "channels *rest"],
        ct_x: Float[Array, "channels *rest"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "channels *rest"], Float[Array, "channels *rest"]]:
        self._check(x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        inverse_scale = jnp.exp(-self._per_channel(self.log_scale, x))
        return self(x), ct_x * inverse_scale
