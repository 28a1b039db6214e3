"""Mixed's phase 1 under the linearising strategies (`"rebuild"` is
`_rebuilt.py`): the exact cotangent at every segment start (the anchors, the first
being the chain's input cotangent `h_0`) and the fragments, by a reverse pass that
keeps only what the input path needs, written for both layouts. The primal forward
pass is linearised with respect to the input alone (parameters held constant)
under `jax.checkpoint`, each layer arranged by its per-layer strategy and each
segment recomputed or not (see `_plan.py`); identity taps record the anchors and
fragments during the reverse pass.
"""

import functools as ft
from typing import Any

import equinox as eqx
import jax

from .._carry import (
    Carry,
    forward,
    fragment,
    needs_fragment,
    replace,
)
from .._layout import AbstractLayout, AbstractSegments
from ._plan import Plan, arrange, saveable
from ._taps import identity, tap, tap_into


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
