"""Invertible linear maps: a dense layer on vectors, Glow's 1x1 convolution."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_input, positive_int
from ._log_det import AbstractFlatLogDet
from ._lu import LUMatrix


def _bias_shape(x: Array) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.ndim - 1)


class InvertibleLinear(AbstractFlatLogDet):
    """`y = W x + b` on a vector, with `W` kept invertible by its LU parametrisation.

    `W = P L (U + diag(sign · exp(log_scale)))` (Glow, Kingma & Dhariwal 2018): `P` a
    fixed permutation, `L` unit lower triangular, `U` strictly upper triangular, and
    a diagonal that cannot reach zero. See `weight` (an `LUMatrix`) for the fields.
    `W` starts as a random orthogonal matrix.

    The inverse and the vijp `c_y = c_x W⁻¹` each cost two triangular solves with the
    stored factors; no inverse matrix is formed.
    """

    weight: LUMatrix
    bias: Float[Array, " features"] | None
    features: int = eqx.field(static=True)

    def __init__(
        self, features: int, *, use_bias: bool = True, key: PRNGKeyArray, dtype=None
    ):
        """**Arguments:**

        - `features`: the size of the input and output vectors.
        - `use_bias`: whether to add a bias `b` (initialised like `eqx.nn.Linear`'s,
          uniform in `±1/sqrt(features)`).
        - `key`: a `jax.random` key for the initial weights.
        - `dtype`: the floating-point dtype of the parameters; defaults to JAX's
          default float.
        """
        self.features = positive_int("InvertibleLinear", "features", features)
        w_key, b_key = jr.split(key)
        self.weight = LUMatrix(features, key=w_key, dtype=dtype)
        if use_bias:
            dtype = self.weight.log_scale.dtype
            lim = 1 / features**0.5
            self.bias = jr.uniform(b_key, (features,), dtype, -lim, lim)
        else:
            self.bias = None

    def _check(self, x: Array, what: str = "input") -> None:
        check_input(
            self, x, shape=(self.features,), describe=f"({self.features},)", what=what
        )

    def log_abs_det(self, x: Float[Array, " features"]) -> Float[Array, ""]:
        """`log |det W|`, the sum of the LU diagonal's `log_scale`."""
        return self.weight.log_abs_det()

    def __call__(
        self, x: Float[Array, " features"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " features"]:
        self._check(x)
        y = self.weight.apply(x)
        return y if self.bias is None else y + self.bias

    def inverse(
        self, y: Float[Array, " features"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " features"]:
        self._check(y)
        return self.weight.solve(y if self.bias is None else y - self.bias)

    def inverse_jvp(
        self,
        x: Float[Array, " features"],
        ct_x: Float[Array, " features"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, " features"], Float[Array, " features"]]:
        self._check(x)
        self._check(ct_x, "input cotangent")
        return self(x), self.weight.solve_transpose(ct_x)


class Invertible1x1Conv(AbstractFlatLogDet):
    """Glow's invertible 1x1 convolution: `y[:, h, w] = W x[:, h, w]` at every pixel.

    `W` is a `channels × channels` matrix with the LU parametrisation of
    `InvertibleLinear` (see `LUMatrix`), initialised as a random orthogonal matrix.
    There is no bias by default: in Glow an `ActNorm` precedes each 1x1 convolution.

    The inverse and the vijp each cost two triangular solves, with all pixels as
    right-hand sides.
    """

    weight: LUMatrix
    bias: Float[Array, " channels"] | None
    channels: int = eqx.field(static=True)

    def __init__(
        self, channels: int, *, use_bias: bool = False, key: PRNGKeyArray, dtype=None
    ):
        """**Arguments:**

        - `channels`: the number of input and output channels.
        - `use_bias`: whether to add a per-channel bias (initialised to zero).
        - `key`: a `jax.random` key for the initial weights.
        - `dtype`: the floating-point dtype of the parameters; defaults to JAX's
          default float.
        """
        self.channels = positive_int("Invertible1x1Conv", "channels", channels)
        self.weight = LUMatrix(channels, key=key, dtype=dtype)
        dtype = self.weight.log_scale.dtype
        self.bias = jnp.zeros((channels,), dtype) if use_bias else None

    def _check(self, x: Array, what: str = "input") -> None:
        check_input(
            self,
            x,
            shape=(self.channels, None, None),
            describe=f"({self.channels}, height, width)",
            what=what,
        )

    def log_abs_det(self, x: Float[Array, "channels height width"]) -> Float[Array, ""]:
        """`height · width · log |det W|`: the matrix acts at every pixel."""
        self._check(x)
        return self.weight.log_abs_det() * (x.shape[1] * x.shape[2])

    def _bias(self, x: Array) -> Array:
        return self.bias.reshape(_bias_shape(x))

    def __call__(
        self,
        x: Float[Array, "channels height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "channels height width"]:
        self._check(x)
        y = self.weight.apply(x)
        return y if self.bias is None else y + self._bias(y)

    def inverse(
        self,
        y: Float[Array, "channels height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "channels height width"]:
        self._check(y)
        return self.weight.solve(y if self.bias is None else y - self._bias(y))

    def inverse_jvp(
        self,
        x: Float[Array, "channels height width"],
        ct_x: Float[Array, "channels height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[
        Float[Array, "channels height width"], Float[Array, "channels height width"]
    ]:
        self._check(x)
        self._check(ct_x, "input cotangent")
        return self(x), self.weight.solve_transpose(ct_x)
