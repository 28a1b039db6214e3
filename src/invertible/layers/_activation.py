"""Elementwise activations: invertible ones, and plain ReLU (with a fragment)."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._abstract import AbstractInvertible, AbstractNonSubmersive
from .._checks import check_input, check_same_shape
from ._log_det import AbstractFlatLogDet


class LeakyReLU(AbstractFlatLogDet):
    """`y = x` for `x >= 0`, `y = a x` otherwise, with slope `a > 0`: invertible."""

    negative_slope: float = eqx.field(static=True)

    def __init__(self, negative_slope: float = 0.01):
        """**Arguments:**

        - `negative_slope`: the slope `a` for negative inputs; must be positive (a
          zero slope is plain ReLU, which is not invertible: use
          `invertible.ReLU`).
        """
        if not negative_slope > 0:
            raise ValueError(
                f"LeakyReLU: `negative_slope` must be positive to be invertible, got "
                f"{negative_slope}. For a zero slope use `invertible.ReLU`."
            )
        self.negative_slope = float(negative_slope)

    def log_abs_det(self, x: Float[Array, "*shape"]) -> Float[Array, ""]:
        """`log a` times the number of negative entries."""
        return jnp.sum(jnp.log(self._slope(x)))

    def _slope(self, x: Array) -> Array:
        return jnp.where(x >= 0, 1.0, self.negative_slope).astype(x.dtype)

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        check_input(self, x)
        return x * self._slope(x)

    def inverse(
        self, y: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        check_input(self, y)
        return y / self._slope(y)

    def inverse_jvp(
        self,
        x: Float[Array, "*shape"],
        ct_x: Float[Array, "*shape"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
        check_input(self, x)
        slope = self._slope(x)
        return x * slope, ct_x / slope


class ReLU(AbstractNonSubmersive):
    """`y = max(x, 0)`: not submersive, handled with a fragment.

    Where a unit is off (`x <= 0`) the vjp sends its cotangent to zero, so the
    output cotangent there is lost. The **fragment** is that lost part: `ct_y`
    where `x <= 0`, zero elsewhere (in practice a mask's worth of information).
    `inverse_jvp` takes `ct_y = ct_x` where the unit is on and the fragment
    elsewhere.

    The derivative at exactly `x = 0` is taken to be zero (the unit is off), the
    same convention as the fragment; `jax.nn.relu` is not used for that reason.
    """

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        check_input(self, x)
        return jnp.where(x > 0, x, 0).astype(x.dtype)

    def fragment(
        self,
        x: Float[Array, "*shape"],
        ct_y: Float[Array, "*shape"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "*shape"]:
        """The output cotangent where the unit is off.

        **Arguments:**

        - `x`: the input.
        - `ct_y`: a cotangent of the output, of the same shape.

        **Returns:**

        `where(x > 0, 0, ct_y)`.
        """
        check_input(self, x)
        check_same_shape(self, x, ct_y, "x", "ct_y")
        return jnp.where(x > 0, 0, ct_y).astype(ct_y.dtype)

    def inverse_jvp(
        self,
        x: Float[Array, "*shape"],
        ct_x: Float[Array, "*shape"],
        fragment: Float[Array, "*shape"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
        """`ct_y = where(x > 0, ct_x, fragment)`.

        **Arguments:**

        - `x`: the input.
        - `ct_x`: its cotangent, of the same shape.
        - `fragment`: `self.fragment(x, ct_y)`.

        **Returns:**

        `(y, ct_y)` with `y == self(x)`.
        """
        check_input(self, x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        check_same_shape(self, x, fragment, "x", "fragment")
        return self(x), jnp.where(x > 0, ct_x, fragment).astype(ct_x.dtype)


class Asinh(AbstractInvertible):
    """`y = asinh(x)`: a smooth, odd bijection of the real line.

    A drop-in for `tanh` in an invertible network: it is near the identity around
    zero and grows only logarithmically, but, unlike `tanh`, it is onto the whole
    real line, so every output has an input (`x = sinh(y)`). Its derivative
    `1 / sqrt(1 + x²)` never vanishes; the vijp multiplies by `sqrt(1 + x²)`.
    """

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        check_input(self, x)
        return jnp.arcsinh(x)

    def inverse(
        self, y: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        check_input(self, y)
        return jnp.sinh(y)

    def inverse_jvp(
        self,
        x: Float[Array, "*shape"],
        ct_x: Float[Array, "*shape"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
        check_input(self, x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        return jnp.arcsinh(x), ct_x * jnp.hypot(jnp.ones_like(x), x)

    def forward_and_log_det(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "*shape"], Float[Array, ""]]:
        check_input(self, x)
        return jnp.arcsinh(x), -0.5 * jnp.sum(jnp.log1p(x**2))

    def inverse_and_log_det(
        self, y: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "*shape"], Float[Array, ""]]:
        x = self.inverse(y)
        return x, 0.5 * jnp.sum(jnp.log1p(x**2))

    def inverse_jvp_and_log_det(
        self,
        x: Float[Array, "*shape"],
        ct_x: Float[Array, "*shape"],
        ct_log_det: Float[Array, ""],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "*shape"], Float[Array, ""], Float[Array, "*shape"]]:
        # log_det = -Σ log(1 + x²) / 2, whose gradient is -x / (1 + x²).
        check_same_shape(self, x, ct_x, "x", "ct_x")
        y, log_det = self.forward_and_log_det(x)
        ct = ct_x + ct_log_det * x / (1 + x**2)
        return y, log_det, ct * jnp.hypot(jnp.ones_like(x), x)
