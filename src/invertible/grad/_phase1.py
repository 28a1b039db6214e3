"""Mixed's phase 1: the exact cotangent at every segment start (the anchors, the
first being the chain's input cotangent `h_0`) and the fragments, by a reverse pass
that keeps only what the input path needs. Two forms, written for both layouts:

- `Linearised`: the primal forward pass is linearised with respect to the input
  alone (parameters held constant) under `jax.checkpoint`, each layer arranged by
  its per-layer strategy and each segment recomputed or not (see `_plan.py`);
  identity taps record the anchors and fragments during the reverse pass.
- `Rebuilt`: the forward pass keeps the input of every segment; the reverse pass
  rebuilds each layer's input from the segment's end with `inverse`, pulls the
  cotangent back through it, checks the rebuilt start against the kept one (and
  recomputes the segment if it drifted), and writes the anchor into the slot the
  segment's input held.
"""

import functools as ft
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._carry import (
    Carry,
    forward,
    fragment,
    input_vjp,
    inverse,
    needs_fragment,
    replace,
)
from .._layout import AbstractLayout, AbstractSegments
from ._plan import Plan, arrange, saveable
from ._recompute import recompute_input_vjps
from ._taps import barrier, identity, tap, tap_into


def _fragment_shape(layer, carry: Carry):
    if not needs_fragment(layer):
        return None
    return fragment(layer, carry, forward(layer, carry, 0).x, index=0)


def _capture_fragment(layer, carry: Carry, index, ct_y):
    return fragment(layer, carry, ct_y, index=index)


def linearised_forward(
    layout: AbstractLayout, segments: AbstractSegments, carry: Carry, plan: Plan
) -> tuple[Carry, Any]:
    """The output carry, and the pullback of the input path."""
    anchors = segments.zeros(lambda c: c.x, carry)
    fragments = layout.zeros(_fragment_shape, carry)

    def input_path(x, log_det, anchors, fragments):
        def layer_step(c, layer, index, recomputed=False):
            how = plan.layer(layout.slot(index))
            arranged = arrange(layer, how)

            def apply(c):
                out = forward(arranged, c, index)
                return out.x, out.log_det, out.state

            # A recomputed segment is checkpointed and fenced as a whole (below):
            # a policy that saves residuals, or a fence, inside it would make it
            # keep every layer's residuals. "inputs" has its own checkpoint.
            if recomputed:
                x, log_det, state = apply(c)
            else:
                if how != "inputs":
                    apply = jax.checkpoint(apply, policy=saveable)
                x, log_det, state = layout.isolate(apply, c)
            if needs_fragment(layer):
                frozen = replace(c, x=jax.lax.stop_gradient(c.x))
                capture = eqx.Partial(_capture_fragment, layer, frozen, index)
                x = tap((x, layout.read(fragments, index)), capture)
            return replace(c, x=x, log_det=log_det, state=state)

        def run(segment, c):
            out = segment.scan(ft.partial(layer_step, recomputed=True), c)
            return out.x, out.log_det, out.state

        def segment_step(c, segment, j):
            c = replace(c, x=tap((c.x, segments.read(anchors, j)), identity))
            if plan.segment(j):  # keep the segment's input, recompute it backwards
                checkpointed = eqx.filter_checkpoint(run)
                x, log_det, state = layout.isolate(checkpointed, segment, c)
                return replace(c, x=x, log_det=log_det, state=state)
            return segment.scan(layer_step, c)

        def flat_step(state, layer, index):
            c, store = state
            j, first = segments.locate(index)
            if first is True:  # static: an unrolled chain's tuple of anchors
                c = replace(c, x=tap((c.x, segments.read(anchors, j)), identity))
            elif first is not False:  # traced: a stack's entry
                x, store = tap_into(c.x, store, j, first)
                c = replace(c, x=x)
            return layer_step(c, layer, index), store

        start = replace(carry, x=x, log_det=log_det)
        if any(plan.recompute):
            out = segments.scan(segment_step, start)
        else:
            # One scan over the layers, not one over segments of a scan over
            # their layers: a stack's segment would then be a slice of its
            # parameters, which XLA copies into the inner scan (measured).
            out, _ = layout.scan(flat_step, (start, anchors))
        return (out.x, out.log_det), out.state

    (y, log_det), pullback, state = jax.vjp(
        input_path, carry.x, carry.log_det, anchors, fragments, has_aux=True
    )
    return replace(carry, x=y, log_det=log_det, state=state), pullback


def linearised_backward(pullback, ct) -> tuple:
    """`(h_0, ct_log_det, anchors, fragments)`."""
    return pullback(ct)


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
    short_segments: bool,
) -> tuple:
    """`(h_0, ct_log_det, anchors, None, rebuilt)`; `rebuilt` holds, per segment,
    the rebuilt start's relative error (the segment was recomputed where it
    exceeds `rebuild_tolerance`)."""
    kept, y = residuals
    ct_x, ct_log_det = ct
    tolerance = rebuild_tolerance(jnp.result_type(carry.x))
    mismatch = segments.zeros(lambda c: jnp.zeros((), c.x.dtype), carry)

    def layer_back(state, layer, index):
        x, h = state

        def step(x, h):
            below = inverse(layer, replace(carry, x=x, log_det=None), index).x
            at = replace(carry, x=below)
            return barrier((below, input_vjp(layer, at, h, ct_log_det, index=index)))

        return step(x, h)

    def rebuild(segment, x_end, h, x_start):
        rebuilt, h_start = segment.scan(layer_back, (x_end, h), reverse=True)
        error = _relative_mismatch(rebuilt, x_start)
        h_start = jax.lax.cond(
            error <= tolerance,
            lambda h_start, h: h_start,
            lambda h_start, h: recompute_input_vjps(
                segment, replace(carry, x=x_start), h, ct_log_det, short=short_segments
            ),
            h_start,
            h,
        )
        return h_start, error

    def segment_back(state, segment, j):
        x_end, h, kept, mismatch = state
        x_start = segments.read(kept, j)
        h_start, error = layout.isolate(rebuild, segment, x_end, h, x_start)
        kept = segments.write(kept, j, h_start)  # the anchor takes the input's slot
        mismatch = segments.write(mismatch, j, error)
        return x_start, h_start, kept, mismatch

    _, h0, anchors, mismatch = segments.scan(
        segment_back, (y, ct_x, kept, mismatch), reverse=True
    )
    if isinstance(mismatch, tuple):  # unrolled: one scalar per segment
        mismatch = jnp.stack(mismatch)
    return h0, ct_log_det, anchors, None, mismatch
