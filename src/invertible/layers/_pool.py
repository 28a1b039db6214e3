"""Average pooling: right-invertible, with an analytic vijp."""

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from .._abstract import AbstractSubmersive
from .._checks import check_input, check_same_shape, layer_name


class AvgPool2d(AbstractSubmersive):
    """Non-overlapping average pooling over `kh x kw` windows of a `(C, H, W)` image.

    Each output pixel is the mean of one window, so the Jacobian has full row rank:
    a right-invertible layer. The vjp spreads `ct_y / (kh kw)` over each window;
    its unique inverse sums `ct_x` over each window (which is also the
    least-squares answer when `ct_x` is not a vjp of this layer).

    Unlike `eqx.nn.AvgPool2d`, the stride is the window and there is no padding:
    `H` and `W` must be multiples of the window.
    """

    kernel_size: tuple[int, int] = eqx.field(static=True)

    def __init__(self, kernel_size: int | tuple[int, int]):
        """**Arguments:**

        - `kernel_size`: the window `k` (a `k x k` window) or `(kh, kw)`; also the
          stride.
        """
        size = (
            (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        )
        try:
            size = tuple(size)
        except TypeError:
            size = ()
        if len(size) != 2 or not all(isinstance(k, int) and k >= 1 for k in size):
            raise ValueError(
                "AvgPool2d: `kernel_size` must be a positive int or a pair of "
                f"positive ints, got {kernel_size!r}."
            )
        self.kernel_size = size

    def _windows(self, x: Array, what: str = "input") -> Array:
        """`x` reshaped to `(C, H/kh, kh, W/kw, kw)`, after validation."""
        check_input(self, x, ndim=3, describe="(channels, height, width)", what=what)
        kh, kw = self.kernel_size
        c, h, w = x.shape
        if h % kh or w % kw:
            raise ValueError(
                f"{layer_name(self)}: the height and width of the {what} must be "
                f"multiples of the window {self.kernel_size}, got shape {x.shape}. "
                "Pad or crop the image first."
            )
        return x.reshape(c, h // kh, kh, w // kw, kw)

    def __call__(
        self,
        x: Float[Array, "channels height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "channels out_height out_width"]:
        """**Arguments:**

        - `x`: an image of shape `(C, H, W)`, `H` and `W` multiples of the window.
        - `key`: ignored; keyword-only, as in every Equinox layer.

        **Returns:**

        The pooled image, of shape `(C, H / kh, W / kw)`.
        """
        return self._windows(x).mean(axis=(2, 4))

    def inverse_jvp(
        self,
        x: Float[Array, "channels height width"],
        ct_x: Float[Array, "channels height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[
        Float[Array, "channels out_height out_width"],
        Float[Array, "channels out_height out_width"],
    ]:
        """The vijp: `ct_y` is the sum of `ct_x` over each window.

        **Arguments:**

        - `x`: the input image.
        - `ct_x`: its cotangent, of the same shape.

        **Returns:**

        `(y, ct_y)` with `y == self(x)`.
        """
        check_same_shape(self, x, ct_x, "x", "ct_x")
        return self(x), self._windows(ct_x, "cotangent").sum(axis=(2, 4))
