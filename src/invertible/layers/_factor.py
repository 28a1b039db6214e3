"""Multi-scale flows: factor part of the channels out to a base density."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._abstract import AbstractSubmersive
from .._checks import check_input, check_same_shape, layer_name, positive_int


def standard_normal_log_density(z: Array) -> Array:
    """`log N(z; 0, I)`, summed over all entries."""
    return -0.5 * jnp.sum(z**2) - 0.5 * z.size * jnp.log(2 * jnp.pi).astype(z.dtype)


class FactorOut(AbstractSubmersive):
    """RealNVP and Glow's multi-scale split: keep the first `keep` channels, send
    the rest, `z = x[keep:]`, to a base density.

    `y = x[:keep]`, and the layer adds `log p(z)` to the chain's log-det
    accumulator (`forward_and_log_det`), so that after the last layer
    `log p(x) = log p_base(y_final) + log_det` counts every factored part. The
    chain then carries only the kept channels: later layers, and Mixed's memory,
    see the smaller activation.

    A right-invertible layer (its Jacobian `[I 0]` is onto): the vijp is
    `ct_y = ct_x[:keep]`, with or without the log-det. `inverse(y, z=z)` puts a
    factored part back (for sampling, draw `z` from the base density, e.g. with
    `sample_factored`); `reversible_grad` keeps the factored parts to do so.

    Acts on the first axis of a `(C, ...)` input.
    """

    keep: int = eqx.field(static=True)
    log_density: Callable[[Array], Array] | None

    def __init__(self, keep: int, log_density: Callable[[Array], Array] | None = None):
        """**Arguments:**

        - `keep`: how many leading channels continue through the flow.
        - `log_density`: the base log-density of the factored part, a function (or
          module, whose parameters are then trained) of `z` returning a scalar;
          `None` for the standard normal.
        """
        self.keep = positive_int("FactorOut", "keep", keep)
        self.log_density = log_density

    def _check(self, x: Array) -> None:
        check_input(self, x, describe="(channels, ...)")
        if x.ndim == 0 or x.shape[0] <= self.keep:
            raise ValueError(
                f"{layer_name(self)}: cannot keep {self.keep} channels of an input of "
                f"shape {x.shape} and factor out the rest: it needs more than "
                f"{self.keep}."
            )

    def _log_p(self, z: Array) -> Array:
        if self.log_density is None:
            return standard_normal_log_density(z)
        return jnp.asarray(self.log_density(z), z.dtype)

    def factored(self, x: Float[Array, "channels *rest"]) -> Float[Array, "..."]:
        """The part sent to the base density, `x[keep:]`."""
        self._check(x)
        return x[self.keep :]

    def __call__(
        self, x: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "keep *rest"]:
        self._check(x)
        return x[: self.keep]

    def forward_and_log_det(
        self, x: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "keep *rest"], Float[Array, ""]]:
        """`(x[:keep], log p(x[keep:]))`."""
        return self(x), self._log_p(self.factored(x))

    def inverse(
        self,
        y: Float[Array, "keep *rest"],
        *,
        z: Array | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "channels *rest"]:
        """`concatenate(y, z)`.

        **Arguments:**

        - `y`: the kept channels.
        - `z`: the factored part, shape `(C - keep, ...)`.
        - `key`: ignored.
        """
        if z is None:
            raise TypeError(
                f"{layer_name(self)}.inverse: pass the factored part `z` (for "
                "sampling, draw it from the base density, e.g. `sample_factored`)."
            )
        check_input(self, y, describe="(keep, ...)")
        return jnp.concatenate((y, z.astype(y.dtype)))

    def sample_factored(
        self, y: Float[Array, "keep *rest"], channels: int, *, key: PRNGKeyArray
    ) -> Float[Array, "..."]:
        """A draw of the factored part from the standard normal base density, for
        an input of `channels` channels. Only for the default density: a given
        `log_density` cannot be sampled from, and raises `ValueError`."""
        if self.log_density is not None:
            raise ValueError(
                f"{layer_name(self)}.sample_factored: this layer's base density is "
                "a given `log_density`, which cannot be sampled from; draw its "
                "factored part with that density's own sampler and pass it to "
                "`inverse(y, z=z)`."
            )
        return jr.normal(key, (channels - self.keep, *y.shape[1:]), y.dtype)

    def inverse_jvp(
        self,
        x: Float[Array, "channels *rest"],
        ct_x: Float[Array, "channels *rest"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "keep *rest"], Float[Array, "keep *rest"]]:
        check_same_shape(self, x, ct_x, "x", "ct_x")
        return self(x), ct_x[: self.keep]

    def inverse_jvp_and_log_det(
        self,
        x: Float[Array, "channels *rest"],
        ct_x: Float[Array, "channels *rest"],
        ct_log_det: Float[Array, ""],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[
        Float[Array, "keep *rest"], Float[Array, ""], Float[Array, "keep *rest"]
    ]:
        # The log-density depends on the factored channels only, which y drops.
        check_same_shape(self, x, ct_x, "x", "ct_x")
        return self(x), self._log_p(self.factored(x)), ct_x[: self.keep]
