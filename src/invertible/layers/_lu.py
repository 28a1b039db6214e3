"""An invertible square matrix stored as its pivoted LU factors (Glow's layout).

Shared by `InvertibleLinear` and `Invertible1x1Conv`: both multiply the first axis of
their input by the same kind of matrix. Products with `W` use the dense matrix;
products with `W⁻¹` and `W⁻ᵀ` use two triangular solves with the stored factors, so
no inverse is ever formed and no general linear solve is ever made.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float, Int, PRNGKeyArray


class LUMatrix(eqx.Module):
    """`W = P L (U + diag(sign · exp(log_scale)))`, an `n × n` invertible matrix.

    - `P` is a fixed permutation of the rows: `(P z)[i] = z[row_permutation[i]]`.
    - `L` is unit lower triangular: only its strictly lower part is stored in `lower`
      (the rest of that array is ignored).
    - `U` is strictly upper triangular: only the strictly upper part of `upper` is
      used.
    - The diagonal of the upper factor is `sign · exp(log_scale)`: it cannot reach
      zero, so `W` is invertible whatever values training gives the parameters. The
      signs are fixed integers (not trained), so `det W` keeps its sign.

    The trainable parameters are `lower`, `upper` and `log_scale` (floats); the
    permutations and signs are integer arrays, which `eqx.filter_grad` and the
    transforms of `invertible.grad` leave alone. Arrays rather than static fields
    keep layers with different random permutations stackable (`ScannedSequential`).
    """

    lower: Float[Array, "n n"]
    upper: Float[Array, "n n"]
    log_scale: Float[Array, " n"]
    sign: Int[Array, " n"]
    row_permutation: Int[Array, " n"]
    row_inverse: Int[Array, " n"]

    def __init__(self, n: int, *, key: PRNGKeyArray, dtype=None):
        """A random orthogonal matrix (Glow's initialisation), factorised.

        **Arguments:**

        - `n`: the size of the matrix.
        - `key`: a `jax.random` key.
        - `dtype`: the floating-point dtype of the parameters; defaults to JAX's
          default float.
        """
        dtype = jnp.result_type(float) if dtype is None else dtype
        q, r = jnp.linalg.qr(jr.normal(key, (n, n), dtype))
        q = q * jnp.where(jnp.diagonal(r) < 0, -1, 1).astype(dtype)
        # `lax.linalg.lu` gives q[perm] = L U, so q = P L U with P z = z[argsort(perm)].
        lu, _, perm = jax.lax.linalg.lu(q)
        diagonal = jnp.diagonal(lu)
        self.lower = jnp.tril(lu, -1)
        self.upper = jnp.triu(lu, 1)
        self.log_scale = jnp.log(jnp.abs(diagonal))
        self.sign = jnp.where(diagonal < 0, -1, 1).astype(jnp.int32)
        self.row_inverse = perm.astype(jnp.int32)
        self.row_permutation = jnp.argsort(perm).astype(jnp.int32)

    @property
    def size(self) -> int:
        return self.log_scale.shape[0]

    def _factors(self) -> tuple[Array, Array]:
        """The unit lower factor `L` and the full upper factor `U + diag(s)`."""
        eye = jnp.eye(self.size, dtype=self.lower.dtype)
        scale = self.sign.astype(self.log_scale.dtype) * jnp.exp(self.log_scale)
        return jnp.tril(self.lower, -1) + eye, jnp.triu(self.upper, 1) + jnp.diag(scale)

    def matrix(self) -> Float[Array, "n n"]:
        """The dense matrix `W`."""
        lower, upper = self._factors()
        return (lower @ upper)[self.row_permutation]

    def log_abs_det(self) -> Float[Array, ""]:
        """`log |det W|`, the sum of `log_scale`."""
        return jnp.sum(self.log_scale)

    def apply(self, x: Float[Array, "n *rest"]) -> Float[Array, "n *rest"]:
        """`W x`, contracting the first axis of `x`."""
        return jnp.tensordot(self.matrix(), x, axes=1)

    def solve(self, y: Float[Array, "n *rest"]) -> Float[Array, "n *rest"]:
        """`W⁻¹ y` (the first axis of `y`), by two triangular solves."""
        lower, upper = self._factors()
        z = _flat(y)[self.row_inverse]  # P⁻¹ y
        z = solve_triangular(lower, z, lower=True, unit_diagonal=True)
        z = solve_triangular(upper, z, lower=False)
        return z.reshape(y.shape)

    def solve_transpose(self, c: Float[Array, "n *rest"]) -> Float[Array, "n *rest"]:
        """`W⁻ᵀ c` (the first axis of `c`): the `c_y` with `c_y W = c` for a row `c`.

        `Wᵀ = (U + diag s)ᵀ Lᵀ Pᵀ`, so `W⁻ᵀ c = P L⁻ᵀ (U + diag s)⁻ᵀ c`: two
        triangular solves and a gather.
        """
        lower, upper = self._factors()
        z = solve_triangular(upper, _flat(c), trans="T", lower=False)
        z = solve_triangular(lower, z, trans="T", lower=True, unit_diagonal=True)
        return z[self.row_permutation].reshape(c.shape)


def _flat(x: Array) -> Array:
    """`x` as a matrix `(n, everything else)`, for `solve_triangular`."""
    return x.reshape(x.shape[0], -1)
