"""A surjective (right-invertible) linear map, with an analytic vijp."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float, PRNGKeyArray

from .._abstract import AbstractSubmersive
from .._checks import check_input, check_same_shape


class SurjectiveLinear(AbstractSubmersive):
    """A linear map onto a smaller space: `y = A x[:m] + B x[m:] + b`.

    `m = out_features`. The square block `A = L U` is invertible by construction:
    `L` is unit lower triangular and `U` upper triangular with a positive diagonal
    `exp(log_diagonal)`, so the Jacobian `[A B]` has full row rank whatever the
    parameters, and `B` is free. This is a right-invertible layer: it has no
    `inverse` (information is lost), but every input cotangent has exactly one
    output cotangent, `ct_y = ct_x[:m] A⁻¹`, found by two triangular solves.

    Acts on one feature vector; use `jax.vmap` for a batch.
    """

    lower: Float[Array, "out out"]
    upper: Float[Array, "out out"]
    log_diagonal: Float[Array, " out"]
    rest: Float[Array, "out rest"]
    bias: Float[Array, " out"] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_features`: the input size `n`.
        - `out_features`: the output size `m`, with `1 <= m <= n`.
        - `use_bias`: whether to add a bias `b`.
        - `dtype`: the parameters' dtype; JAX's default float dtype if left out.
        - `key`: a `jax.random.PRNGKey` for the initialisation.

        `L` and the strictly upper part of `U` start uniform in
        `±1/sqrt(in_features)`, the diagonal of `U` at one, `B` and `b` uniform in
        `±1/sqrt(in_features)` (as `eqx.nn.Linear`).
        """
        for name, value in (
            ("in_features", in_features),
            ("out_features", out_features),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"SurjectiveLinear: `{name}` must be a positive int, got {value!r}."
                )
        if out_features > in_features:
            raise ValueError(
                f"SurjectiveLinear: `out_features` ({out_features}) must not exceed "
                f"`in_features` ({in_features}): a map onto a larger space cannot be "
                "surjective."
            )
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        m, n = out_features, in_features
        lim = 1 / math.sqrt(n)
        k_lower, k_upper, k_rest, k_bias = jr.split(key, 4)
        self.lower = jnp.tril(jr.uniform(k_lower, (m, m), dtype, -lim, lim), -1)
        self.upper = jnp.triu(jr.uniform(k_upper, (m, m), dtype, -lim, lim), 1)
        self.log_diagonal = jnp.zeros((m,), dtype)
        self.rest = jr.uniform(k_rest, (m, n - m), dtype, -lim, lim)
        self.bias = jr.uniform(k_bias, (m,), dtype, -lim, lim) if use_bias else None
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias

    def _factors(self) -> tuple[Array, Array]:
        """`L` (unit lower) and `U` (upper, positive diagonal), masked."""
        m = self.out_features
        lower = jnp.tril(self.lower, -1) + jnp.eye(m, dtype=self.lower.dtype)
        upper = jnp.triu(self.upper, 1) + jnp.diag(jnp.exp(self.log_diagonal))
        return lower, upper

    @property
    def weight(self) -> Float[Array, "out in"]:
        """The dense `(out_features, in_features)` matrix `[A B]` (for inspection)."""
        lower, upper = self._factors()
        return jnp.concatenate((lower @ upper, self.rest), axis=1)

    def _check(self, x: Array, what: str = "input") -> None:
        check_input(
            self,
            x,
            shape=(self.in_features,),
            describe=f"(in_features,) = ({self.in_features},)",
            what=what,
        )

    def __call__(
        self, x: Float[Array, " in"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " out"]:
        """**Arguments:**

        - `x`: a vector of shape `(in_features,)`.

        **Returns:**

        `y`, of shape `(out_features,)`.
        """
        self._check(x)
        m = self.out_features
        lower, upper = self._factors()
        y = lower @ (upper @ x[:m]) + self.rest @ x[m:]
        return y if self.bias is None else y + self.bias

    def inverse_jvp(
        self,
        x: Float[Array, " in"],
        ct_x: Float[Array, " in"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, " out"], Float[Array, " out"]]:
        """The vijp: `ct_y = ct_x[:m] A⁻¹`, by triangular solves with `L` and `U`.

        **Arguments:**

        - `x`: the input, of shape `(in_features,)`.
        - `ct_x`: its cotangent, of the same shape.

        **Returns:**

        `(y, ct_y)`. `ct_y` is exact when `ct_x` is a vjp of this layer; for any
        other `ct_x` (which no `ct_y` reaches) the entries `ct_x[m:]` are ignored.
        """
        self._check(x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        m = self.out_features
        lower, upper = self._factors()
        # ct_y L U = ct_x[:m]  <=>  U^T (L^T ct_y) = ct_x[:m].
        z = solve_triangular(upper, ct_x[:m], trans="T", lower=False)
        ct_y = solve_triangular(lower, z, trans="T", lower=True, unit_diagonal=True)
        return self(x), ct_y
