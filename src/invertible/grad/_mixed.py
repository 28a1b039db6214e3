"""Mixed mode: the input cotangent (and an anchor per segment) by a reverse pass
that keeps only what the input path needs (phase 1, `_phase1.py`, planned by
`_plan.py`), then the forward sweep (`_sweep.py`)."""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from .._carry import is_known
from .._checks import positive_int
from ._phase1 import linearised_backward, linearised_forward
from ._plan import STRATEGIES, anchor_spacing, make_plan
from ._rebuilt import rebuilt_backward, rebuilt_forward
from ._rule import AbstractRuleMethod, Cotangents
from ._sweep import ON_DRIFT, sweep
from ._validate import require_known


@dataclasses.dataclass(frozen=True)
class Mixed(AbstractRuleMethod):
    """Mixed mode (the method of `invertible.grad.mixed_grad`).

    **Arguments:**

    - `anchor_every`: the length of a segment, in layers. At every segment start
      phase 1 records the exact cotangent (an *anchor*) and the sweep resets to it:
      the vijp recursion multiplies round-off by inverse Jacobians, and anchors
      stop it from compounding past a segment, for one activation per segment.
      `"auto"`: about √L layers (at least 8). `None`: no anchors.
    - `strategy`: how phase 1 pays for each layer's input-path reverse pass (per
      example, with `n` the size of a layer's input):

        - `"auto"` (default): chosen at trace time by counting the bytes each way
          keeps: residuals (the cheapest of the next three, per layer) when over
          the chain they cost no more than the anchors, else `"rebuild"` if every
          layer can be rebuilt (`invertible.grad.can_rebuild`), else
          `"recompute"` for the segments whose residuals cost more than their
          start.
        - `"residuals"`: what the linearisation of the input path keeps (a byte
          per ReLU unit, a float per unit of a smooth activation, the normalised
          input of a LayerNorm...). No extra pass.
        - `"bits"`: the same, with ReLU and leaky-ReLU signs packed into one bit
          per unit. No extra pass.
        - `"inputs"`: the input of each layer's expensive part (a coupling's
          network: `n/2` floats), relinearised in the reverse pass: one extra
          forward pass.
        - `"recompute"`: only each segment's input (`n` floats per segment); the
          reverse pass recomputes the segment, keeping its residuals while it
          goes back through it: one extra forward pass.
        - `"rebuild"`: only each segment's input (`n` floats per segment); the
          reverse pass rebuilds every layer's input with `inverse` from the
          segment's end, checks the rebuilt start against the kept one and
          recomputes a segment that drifted. One extra pass of inverses. Every
          layer must be invertible. A rebuilt input's round-off can flip a
          ReLU's derivative, and the anchor pulled back through it be inexact
          where the rebuilt start matched; so the segments are taken last first,
          each rebuilt and then swept from its kept input, and an anchor is
          checked by its segment's drift (and repaired) before the segments
          before it are pulled back from it.
    - `on_drift`: at every segment's end the sweep meets an exact cotangent and
      measures its drift from it. A segment that drifted past `drift_tolerance` is
      `"repair"`ed (default: redone exactly by reverse mode from its start, in
      memory that does not grow with its length and time quadratic in it),
      poisoned with `"nan"`, raises an `"error"` at run time (`eqx.error_if`), or
      is kept (`"ignore"`). A drift can also come from an inexact anchor, which
      `"rebuild"` can leave (see there): a repair also gives the exact anchor,
      which the segments before are then pulled back from (`"nan"` poisons them
      too), the chain's input cotangent included.
    - `drift_tolerance`: by default 16 units of round-off of the chain's dtype
      (2e-6 in float32).
    - `check_vijp`: also measure, at every layer, how far its `inverse_jvp` is from
      inverting its vjp, for the report (one more vjp per layer).
    """

    anchor_every: int | str | None = "auto"
    strategy: str = "auto"
    on_drift: str = "repair"
    drift_tolerance: float | None = None
    check_vijp: bool = False
    transform: ClassVar[str] = "mixed_grad"

    def __post_init__(self):
        if self.anchor_every != "auto":
            positive_int("Mixed", "anchor_every", self.anchor_every, optional=True)
        check_on_drift("Mixed", self.on_drift)
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"Mixed: `strategy` must be one of {', '.join(map(repr, STRATEGIES))}, "
                f"got {self.strategy!r}."
            )

    def handles(self, layer) -> bool:
        return is_known(layer)

    def check(self, layout, carry, name):
        super().check(layout, carry, name)
        require_known(layout, name)

    def plan(self, layout, carry):
        k = anchor_spacing(self.anchor_every, len(layout))
        return make_plan(layout, carry, self.strategy, k)

    def report_zeros(self, layout, carry):
        plan = self.plan(layout, carry)
        return report_zeros(layout.segments(plan.k), layout, carry, plan.rebuild, self)

    def forward(self, layout, carry):
        plan = self.plan(layout, carry)
        if plan.rebuild:  # not differentiated by JAX: the segments may be views
            return rebuilt_forward(layout, layout.segments(plan.k, views=True), carry)
        return linearised_forward(layout, layout.segments(plan.k), carry, plan)

    def backward(self, residuals, ct, layout, carry):
        plan = self.plan(layout, carry)
        # Not differentiated by JAX: the segments are views of a stack, not slices.
        segments = layout.segments(plan.k, views=True)
        # Without anchors the one segment is the whole chain: its repair must not
        # keep its activations.
        options = dict(
            on_drift=self.on_drift,
            tolerance=self.drift_tolerance,
            check_vijp=self.check_vijp,
            short_segments=self.anchor_every is not None,
        )
        if plan.rebuild:
            ct_log_det = ct[1]
            grads, ct_condition, h0, figures = rebuilt_backward(
                residuals, ct, layout, segments, carry, **options
            )
        else:
            h0, ct_log_det, anchors, fragments = linearised_backward(residuals, ct)
            grads, ct_condition, figures = sweep(
                layout, segments, carry, anchors, ct, fragments, **options
            )
            figures["rebuild"] = None
        return Cotangents(grads, h0, ct_log_det, ct_condition, figures)


def check_on_drift(owner: str, on_drift: str) -> None:
    if on_drift not in ON_DRIFT:
        raise ValueError(
            f"{owner}: `on_drift` must be one of {', '.join(map(repr, ON_DRIFT))}, "
            f"got {on_drift!r}."
        )


def report_zeros(segments, layout, carry, rebuild: bool, method) -> dict:
    """Zeros shaped like the figures of a sweep (see `sweep`)."""
    dtype = jnp.result_type(carry.x)
    count = len(segments)
    return {
        "drift": jnp.zeros(count, dtype),
        "repaired": jnp.zeros(count, dtype),
        "vijp": jnp.zeros(len(layout), dtype) if method.check_vijp else None,
        "rebuild": jnp.zeros(count, dtype) if rebuild else None,
    }
