"""Invertible rearrangements of an image's pixels."""

import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_input, check_same_shape, layer_name
from ._log_det import AbstractFlatLogDet


def _space_to_depth(x: Array) -> Array:
    c, h, w = x.shape
    x = x.reshape(c, h // 2, 2, w // 2, 2)  # (c, h', i, w', j)
    return x.transpose(2, 4, 0, 1, 3).reshape(4 * c, h // 2, w // 2)


def _depth_to_space(y: Array) -> Array:
    c4, h, w = y.shape
    y = y.reshape(2, 2, c4 // 4, h, w)  # (i, j, c, h', w')
    return y.transpose(2, 3, 0, 4, 1).reshape(c4 // 4, 2 * h, 2 * w)


class Squeeze(AbstractFlatLogDet):
    """The squeeze ψ of i-RevNet and Glow (space-to-depth): `(C, H, W) -> (4C, H/2,
    W/2)`.

    Each `2 × 2` block of pixels becomes one pixel with four times the channels:
    `y[(2i + j) C + c, h, w] = x[c, 2h + i, 2w + j]` for `i, j ∈ {0, 1}` (the order
    of TensorFlow's `space_to_depth`, which i-RevNet uses). The first half of the
    output channels holds the top row of every block, the second half the bottom
    row, so a following coupling splits each block between its two halves.

    A fixed permutation of the entries, hence orthogonal: the vijp applies the same
    rearrangement to the cotangent. `H` and `W` must be even.
    """

    def log_abs_det(self, x: Float[Array, "channels height width"]) -> Float[Array, ""]:
        """0: a rearrangement of the entries."""
        return jnp.zeros((), jnp.result_type(x))

    def _check(self, x: Array, what: str = "input") -> None:
        check_input(self, x, ndim=3, describe="(channels, height, width)", what=what)
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(
                f"{layer_name(self)}: the height and width of the {what} must be even "
                f"to fold 2x2 blocks into channels, got shape {x.shape}. Crop or pad "
                "the image first."
            )

    def __call__(
        self,
        x: Float[Array, "channels height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "4*channels height//2 width//2"]:
        self._check(x)
        return _space_to_depth(x)

    def inverse(
        self,
        y: Float[Array, "channels height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "channels//4 2*height 2*width"]:
        check_input(self, y, ndim=3, describe="(4 * channels, height, width)")
        if y.shape[0] % 4:
            raise ValueError(
                f"{layer_name(self)}: the inverse folds channels back into 2x2 blocks, "
                f"so the channel count must be a multiple of 4; got shape {y.shape}."
            )
        return _depth_to_space(y)

    def inverse_jvp(
        self,
        x: Float[Array, "channels height width"],
        ct_x: Float[Array, "channels height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[
        Float[Array, "4*channels height//2 width//2"],
        Float[Array, "4*channels height//2 width//2"],
    ]:
        self._check(x)
        check_same_shape(self, x, ct_x, "x", "ct_x")
        return _space_to_depth(x), _space_to_depth(ct_x)
