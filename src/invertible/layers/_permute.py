"""A fixed permutation of the channels (or features)."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._checks import check_input, check_same_shape, layer_name, positive_int
from ._log_det import AbstractFlatLogDet


class Permute(AbstractFlatLogDet):
    """`y = x[permutation]`: a fixed reordering of the first axis.

    Acts on the channels of an image `(C, H, W)` or the features of a vector `(C,)`
    (any `(C, ...)` input). Placed between couplings it lets every channel be
    transformed in turn (RealNVP's alternation, Glow's fixed shuffles). See
    `Permute.reverse`, `Permute.swap_halves` and `Permute.random` for the usual ones.

    The permutation is stored as integer arrays, not static fields, so that layers
    with different permutations can be stacked (`ScannedSequential`); integer arrays
    are never differentiated. The vijp permutes the cotangent the same way.
    """

    permutation: Int[Array, " channels"]
    inverse_permutation: Int[Array, " channels"]

    def __init__(self, permutation: Sequence[int] | Int[ArrayLike, " channels"]):
        """**Arguments:**

        - `permutation`: a reordering of `0, ..., C - 1`; output channel `i` is input
          channel `permutation[i]`. Checked at construction (`ValueError` otherwise);
          when it is traced (built under `jit`) it is checked at run time with
          `eqx.error_if`.
        """
        if isinstance(permutation, jax.core.Tracer):
            perm = permutation
            if perm.ndim != 1 or not jnp.issubdtype(perm.dtype, jnp.integer):
                raise ValueError(
                    "Permute: `permutation` must be a 1-D integer array, got "
                    f"{perm.dtype} of shape {perm.shape}."
                )
            n = perm.shape[0]
            seen = jnp.zeros(n, bool).at[perm].set(True, mode="drop")
            bad = jnp.any((perm < 0) | (perm >= n)) | ~jnp.all(seen)
            perm = eqx.error_if(
                perm, bad, "Permute: `permutation` is not a permutation"
            )
        else:
            values = np.asarray(permutation)
            if values.ndim != 1 or values.size == 0:
                raise ValueError(
                    "Permute: `permutation` must be a non-empty 1-D sequence of ints, "
                    f"got shape {values.shape}."
                )
            if not np.issubdtype(values.dtype, np.integer):
                raise ValueError(
                    f"Permute: `permutation` must hold integers, got {values.dtype}."
                )
            if sorted(values.tolist()) != list(range(values.size)):
                raise ValueError(
                    f"Permute: `permutation` must be a reordering of 0, ..., "
                    f"{values.size - 1} (each exactly once), got {values.tolist()}."
                )
            perm = jnp.asarray(values, jnp.int32)
        self.permutation = perm.astype(jnp.int32)
        self.inverse_permutation = jnp.argsort(perm).astype(jnp.int32)

    @classmethod
    def reverse(cls, channels: int) -> "Permute":
        """Reverse the order of the channels (RealNVP / Glow's "reverse").

        **Arguments:**

        - `channels`: the number of channels `C`.

        **Returns:**

        `Permute([C - 1, ..., 1, 0])`.
        """
        channels = positive_int("Permute", "channels", channels)
        return cls(list(range(channels - 1, -1, -1)))

    @classmethod
    def swap_halves(cls, channels: int) -> "Permute":
        """Swap the first and second halves of the channels.

        **Arguments:**

        - `channels`: the number of channels `C`, even.

        **Returns:**

        `Permute([C/2, ..., C - 1, 0, ..., C/2 - 1])`.
        """
        channels = positive_int("Permute", "channels", channels)
        if channels % 2:
            raise ValueError(
                f"Permute.swap_halves: `channels` must be even, got {channels}."
            )
        half = channels // 2
        return cls(list(range(half, channels)) + list(range(half)))

    @classmethod
    def random(cls, channels: int, *, key: PRNGKeyArray) -> "Permute":
        """A uniformly random permutation (Glow's "shuffle").

        **Arguments:**

        - `channels`: the number of channels `C`.
        - `key`: a `jax.random` key.

        **Returns:**

        A `Permute` with a random permutation of `0, ..., C - 1`.
        """
        return cls(jr.permutation(key, positive_int("Permute", "channels", channels)))

    def log_abs_det(self, x: Float[Array, "channels *rest"]) -> Float[Array, ""]:
        """0: a permutation preserves volume."""
        return jnp.zeros((), jnp.result_type(x))

    def _check(self, x: Array, what: str = "input") -> None:
        n = self.permutation.shape[0]
        check_input(self, x, describe=f"({n}, ...)", what=what)
        if x.ndim == 0 or x.shape[0] != n:
            raise ValueError(
                f"{layer_name(self)}: expected an {what} of shape ({n}, ...) (the "
                f"permutation has {n} entries), got shape {x.shape}."
            )

    def __call__(
        self, x: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "channels *rest"]:
        self._check(x)
        return x[self.permutation]

    def inverse(
        self, y: Float[Array, "channels *rest"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "channels *rest"]:
        self._check(y)
        return y[self.inverse_permutation]

    def inverse_jvp(
        self,
        x: Float[Array, "channels *rest"],
        ct_x: Float[Array, "channels *rest"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "channels *rest"], Float[Array, "channels *rest"]]:
        self._check(x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        return x[self.permutation], ct_x[self.permutation]
