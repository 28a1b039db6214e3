"""Log-determinants of layers whose Jacobian's determinant does not vary with the
input, or only piecewise: the augmented vijp is then the plain vijp."""

import abc

from jaxtyping import Array, Float

from .._abstract import AbstractInvertible
from .._signatures import only_taken


class AbstractFlatLogDet(AbstractInvertible):
    """An invertible layer with `∇ log |det J| = 0` almost everywhere (linear maps,
    permutations, per-channel scalings, leaky ReLU): it gives `log_abs_det(x)` and
    gets `forward_and_log_det`, `inverse_and_log_det` and
    `inverse_jvp_and_log_det` (which, with the log-det's gradient zero, is
    `inverse_jvp`)."""

    @abc.abstractmethod
    def log_abs_det(self, x: Float[Array, "..."]) -> Float[Array, ""]:
        """`log |det ∂y/∂x|` at the input `x`."""

    def forward_and_log_det(self, x, **kwargs):
        return self(x, **only_taken(self, "__call__", kwargs)), self.log_abs_det(x)

    def inverse_and_log_det(self, y, **kwargs):
        x = self.inverse(y, **only_taken(self, "inverse", kwargs))
        return x, -self.log_abs_det(x)

    def inverse_jvp_and_log_det(self, x, ct_x, ct_log_det, **kwargs):
        kwargs = only_taken(self, "inverse_jvp", kwargs)
        y, ct_y = self.inverse_jvp(x, ct_x, **kwargs)
        return y, self.log_abs_det(x), ct_y
