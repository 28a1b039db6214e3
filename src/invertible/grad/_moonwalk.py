"""Pure Moonwalk: `h_0` by forward mode, then the forward sweep."""

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from .._carry import Carry, forward, is_submersive, replace
from .._checks import positive_int
from .._layout import AbstractLayout
from ._mixed import check_on_drift, report_zeros
from ._rule import AbstractRuleMethod, Cotangents
from ._sweep import sweep
from ._taps import barrier
from ._validate import require_submersive


@dataclasses.dataclass(frozen=True)
class Moonwalk(AbstractRuleMethod):
    """Pure Moonwalk (the method of `invertible.grad.moonwalk_grad`).

    **Arguments:**

    - `chunk_size`: how many JVPs (one per input element of an example) run at once
      (`None`: all); trades memory for time.
    - `on_drift`, `drift_tolerance`, `check_vijp`: as for `invertible.grad.Mixed`.
      Pure Moonwalk has no anchors: its sweep meets an exact cotangent only at the
      chain's output, so the whole chain is one segment, and `"repair"` (the
      default) redoes the whole chain by reverse mode in memory that does not grow
      with depth, in time quadratic in it. `"nan"` poisons the gradients instead.
      No setting hands back a drifted gradient without saying so in the report.
    """

    chunk_size: int | None = 16
    on_drift: str = "repair"
    drift_tolerance: float | None = None
    check_vijp: bool = False
    transform: ClassVar[str] = "moonwalk_grad"

    def __post_init__(self):
        positive_int("Moonwalk", "chunk_size", self.chunk_size, optional=True)
        check_on_drift("Moonwalk", self.on_drift)

    def report_zeros(self, layout, carry):
        return report_zeros(layout.segments(len(layout)), layout, carry, False, self)

    def handles(self, layer) -> bool:
        return is_submersive(layer)

    def check(self, layout, carry, name):
        super().check(layout, carry, name)
        require_submersive(layout, name)

    def forward(self, layout, carry):
        return layout.apply(carry), None  # nothing stored but the inputs

    def backward(self, residuals, ct, layout, carry):
        del residuals
        h0 = input_cotangent_by_jvps(layout, carry, ct, self.chunk_size)
        segments = layout.segments(len(layout), views=True)
        anchors = segments.write(segments.zeros(lambda c: c.x, carry), 0, h0)
        grads, ct_condition, figures = sweep(
            layout,
            segments,
            carry,
            anchors,
            ct,
            None,
            on_drift=self.on_drift,
            tolerance=self.drift_tolerance,
            check_vijp=self.check_vijp,
        )
        figures["rebuild"] = None
        return Cotangents(grads, h0, ct[1], ct_condition, figures)


def _jvp(layout: AbstractLayout, carry: Carry, tangent):
    """The chain's JVP, `(t_x, t_log_det)` at the output. Each layer is isolated:
    otherwise XLA runs the whole primal chain of straight-line code before the
    tangent chain and keeps every layer's residuals in between (measured)."""

    def step(state, layer, index):
        c, t = state

        def one(x, log_det, t):
            def primal(x, log_det):
                out = forward(layer, replace(c, x=x, log_det=log_det), index)
                return out.x, out.log_det

            return jax.jvp(primal, (x, log_det), t)

        (x, log_det), t = layout.isolate(one, c.x, c.log_det, t)
        return replace(c, x=x, log_det=log_det), t

    return layout.scan(step, (carry, tangent))[1]


def input_cotangent_by_jvps(layout, carry: Carry, ct, chunk_size):
    """`ct · ∂(x, log_det)/∂x_0` by forward mode only, one JVP per element of an
    example. On the batch route (`carry.batch`), axis 0 indexes examples: each JVP
    moves the same element of every example at once."""
    x0 = carry.x
    batched = carry.batch is not None
    example_shape = x0.shape[1:] if batched else x0.shape
    size = math.prod(example_shape)
    ct_x, ct_log_det = ct
    zero_log_det = None if carry.log_det is None else jnp.zeros_like(carry.log_det)

    def along_basis(index):
        # Tie the primal to the loop index: otherwise XLA hoists the (loop-invariant)
        # primal pass out of the map and keeps every layer's residuals for it.
        x0_here, index = barrier((x0, index))
        basis = jnp.zeros(size, x0.dtype).at[index].set(1).reshape(example_shape)
        tangent = (jnp.broadcast_to(basis, x0.shape), zero_log_det)
        t_x, t_log_det = _jvp(layout, replace(carry, x=x0_here), tangent)
        moved = t_x * ct_x
        moved = (
            jnp.sum(moved.reshape(moved.shape[0], -1), 1) if batched else moved.sum()
        )
        if t_log_det is not None:
            moved = moved + t_log_det * ct_log_det
        return moved

    columns = jax.lax.map(along_basis, jnp.arange(size), batch_size=chunk_size)
    return (columns.T if batched else columns).reshape(x0.shape)
