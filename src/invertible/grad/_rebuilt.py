"""Mixed with `strategy="rebuild"`: phase 1 and the sweep, segment by segment
from the chain's end.

The forward pass keeps every segment's input. Then, for the last segment first:
rebuild each layer's input with `inverse` from the segment's end and pull the
exact cotangent there back through it (phase 1: the segment's anchor); sweep the
segment forwards from its kept input and that anchor (phase 2: its gradients);
and compare the swept cotangent at its end with the exact one. The anchor is the
exact end cotangent of the segment before, so it is checked before it is used.

Why the order matters: a rebuilt input is exact only to round-off, and where a
unit sits at a kink (a ReLU's zero) round-off can flip its derivative, so the
anchor pulled back through it can be wrong while the rebuilt start matches the
kept one. Its own segment's sweep drifts and is repaired; but every anchor
before it was pulled back from it, and the segments before would end, without a
drift, on the wrong cotangent (measured: float32, stacked GroupNorm conv
couplings, gradients 30 times backprop's error). Here a segment's repair gives
the exact anchor from which the segments before are pulled back.
"""

from typing import Any

import jax
import jax.numpy as jnp

from .._carry import Carry, input_vjp, inverse, replace
from .._layout import AbstractLayout, AbstractSegments
from ._recompute import recompute_input_vjps
from ._sweep import (
    add_optional,
    drift_tolerance,
    empty_figures,
    parameter_zeros,
    record,
    sweep_segment,
)
from ._taps import barrier


def rebuilt_forward(
    layout: AbstractLayout, segments: AbstractSegments, carry: Carry
) -> tuple[Carry, Any]:
    """The output carry; residuals: every segment's input, and the output."""

    def segment_step(state, segment, j):
        c, kept = state
        kept = segments.write(kept, j, c.x)
        return segment.apply(c), kept

    kept = segments.zeros(lambda c: c.x, carry)
    out, kept = segments.scan(segment_step, (carry, kept))
    return out, (kept, out.x)


def _relative_mismatch(got, want):
    """The largest per-example `‖got - want‖ / ‖want‖` (over the batch, if any)."""
    axes = tuple(range(1, got.ndim)) if got.ndim > 1 else None
    diff = jnp.sqrt(jnp.sum((got - want) ** 2, axis=axes))
    size = jnp.sqrt(jnp.sum(want**2, axis=axes))
    return jnp.max(diff / jnp.where(size > 0, size, 1))


def rebuild_tolerance(dtype) -> float:
    """The relative error of a rebuilt segment start beyond which the segment is
    recomputed instead: 128 units of round-off."""
    return 128 * float(jnp.finfo(dtype).eps)


def rebuilt_backward(
    residuals,
    ct,
    layout: AbstractLayout,
    segments: AbstractSegments,
    carry: Carry,
    *,
    on_drift: str = "repair",
    tolerance: float | None = None,
    check_vijp: bool = False,
    short_segments: bool,
) -> tuple:
    """Both phases over the segments, last first (the options are `sweep`'s).

    **Returns:**

    `(grads, ct_condition, h_0, figures)` as `sweep`'s, and in `figures`, per
    segment, `"rebuild"`: the rebuilt start's relative error (the segment's anchor
    was recomputed where it exceeds `rebuild_tolerance`).
    """
    kept, y = residuals
    ct_x, ct_log_det = ct
    dtype = jnp.result_type(carry.x)
    rebuilt_tolerance = rebuild_tolerance(dtype)
    options = dict(
        on_drift=on_drift,
        tolerance=drift_tolerance(dtype) if tolerance is None else tolerance,
        check_vijp=check_vijp,
        short_segments=short_segments,
    )

    def layer_back(state, layer, index):
        x, h = state

        def step(x, h):
            below = inverse(layer, replace(carry, x=x, log_det=None), index).x
            at = replace(carry, x=below)
            return barrier((below, input_vjp(layer, at, h, ct_log_det, index=index)))

        return step(x, h)

    def anchor(segment, x_end, h, x_start):
        """Phase 1 over the segment: its start cotangent, and the rebuilt start's
        error (past the tolerance, the anchor is recomputed from the kept start)."""
        rebuilt, h_start = segment.scan(layer_back, (x_end, h), reverse=True)
        error = _relative_mismatch(rebuilt, x_start)
        h_start = jax.lax.cond(
            error <= rebuilt_tolerance,
            lambda h_start, h: h_start,
            lambda h_start, h: recompute_input_vjps(
                segment, replace(carry, x=x_start), h, ct_log_det, short=short_segments
            ),
            h_start,
            h,
        )
        return h_start, error

    def segment_back(state, segment, j):
        x_end, h_end, ct_condition, grads, figures = state
        x_start = segments.read(kept, j)
        h, error = layout.isolate(anchor, segment, x_end, h_end, x_start)
        x_start, h = barrier((x_start, h))
        _, own, h, grads, vijp, drift, drifted = sweep_segment(
            layout,
            segment,
            j,
            replace(carry, x=x_start),
            h,
            h_end,
            grads,
            figures["vijp"],
            None,
            ct_log_det,
            start_cotangent=True,
            **options,
        )
        figures = record(figures, j, drift, drifted, vijp, on_drift)
        figures["rebuild"] = figures["rebuild"].at[j].set(error)
        return x_start, h, add_optional(ct_condition, own), grads, figures

    count = len(segments)
    figures = empty_figures(layout, count, dtype, check_vijp)
    figures["rebuild"] = jnp.zeros(count, dtype)
    grads = parameter_zeros(layout, carry)
    ct_condition = jax.tree.map(jnp.zeros_like, carry.condition)
    init = (y, ct_x, ct_condition, grads, figures)
    _, h0, ct_condition, grads, figures = segments.scan(
        segment_back, init, reverse=True
    )
    return grads, ct_condition, h0, figures
