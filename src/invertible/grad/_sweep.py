"""The forward sweep (phase 2), shared by Mixed and Moonwalk.

From a chain's input carry and the exact cotangent at the start of each segment
(an *anchor*; for segment 0, the input cotangent `h_0`), each step rebuilds the
next activation and its cotangent with the layer's vijp and takes the parameter
gradient in the same computation. Only the current `(x, h)` is alive: memory does
not grow with depth. Resetting `h` to the anchor at every segment start stops
round-off, which the vijp recursion multiplies by inverse Jacobians, from
compounding past a segment; fragments complete the vijp of non-submersive layers.

At every segment's end the sweep meets an exact cotangent (the next anchor, or
the chain's output cotangent) and measures its *drift*, the relative difference
of the swept one. A segment that drifted past the tolerance is, by default,
redone exactly by reverse mode from its start, which the sweep holds
(`_recompute.py`); or its gradients are poisoned with NaN, or an error raised.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .._carry import (
    Carry,
    input_vjp,
    inverse_jvp_and_grads,
    needs_fragment,
    replace,
)
from .._layout import AbstractLayout, AbstractSegments
from ._recompute import recompute_grads
from ._taps import barrier

ON_DRIFT = ("repair", "nan", "error", "ignore")


def parameter_zeros(layout: AbstractLayout, carry: Carry) -> PyTree:
    """Per-layer gradient storage: zeros for every layer's floating arrays."""
    return layout.zeros(lambda layer, _: eqx.filter(layer, eqx.is_inexact_array), carry)


def drift_tolerance(dtype) -> float:
    """The default drift beyond which a segment is redone: 16 units of round-off
    (about 2e-6 in float32). A well-conditioned segment drifts by one or two; the
    gradients' error is at most about the drift, and backprop's own is a few units
    at depth, so this keeps the methods within a small multiple of backprop's."""
    return 16 * float(jnp.finfo(dtype).eps)


def relative_difference(got, want):
    """`‖got - want‖ / ‖want‖` over the whole array (the batch, if any); NaN
    stays NaN."""
    size = jnp.sqrt(jnp.sum(want**2))
    return jnp.sqrt(jnp.sum((got - want) ** 2)) / jnp.where(size > 0, size, 1)


def add_optional(total, more):
    """`total + more` leaf by leaf, or `None` where there is no total."""
    return None if total is None else jax.tree.map(jnp.add, total, more)


def sweep_segment(
    layout: AbstractLayout,
    segment: AbstractLayout,
    j,
    start: Carry,
    h,
    h_end,
    grads: PyTree,
    vijp,
    fragments: PyTree,
    ct_log_det,
    *,
    on_drift: str,
    tolerance: float,
    check_vijp: bool,
    short_segments: bool,
    start_cotangent: bool,
) -> tuple:
    """Sweep segment `j` from `start`, its cotangent there being `h` (its anchor),
    to its end, where the exact cotangent is `h_end`.

    **Returns:**

    `(end, ct_condition, h_start, grads, vijp, drift, drifted)`: the carry at the
    segment's end, the condition's cotangent from the segment, and the segment's
    start cotangent (with `start_cotangent`, else `None`): the anchor, unless the
    segment drifted and was redone (its repair's) or poisoned (NaN). A drift can
    come from an inexact anchor (rebuilt with inverses, one can be inexact where
    the rebuilt start matched), so only the repair's is known to be exact.
    """
    zero_condition = jax.tree.map(jnp.zeros_like, start.condition)

    def layer_step(state, layer, index):
        carry, h, ct_condition, grads, vijp = state
        fragment = layout.read(fragments, index) if needs_fragment(layer) else None

        def step(carry, h, fragment):
            out, h_y, g, g_condition = inverse_jvp_and_grads(
                layer, carry, h, ct_log_det, fragment, index=index
            )
            error = None
            if check_vijp:
                back = input_vjp(layer, carry, h_y, ct_log_det, index=index)
                error = relative_difference(back, h)
            # The barrier also forces the parameter gradient to be computed now,
            # while `x` and `h` are alive, rather than late with every `x` kept.
            return barrier((out.x, out.log_det, h_y, g, g_condition, error))

        x, log_det, h, g, g_condition, error = layout.isolate(step, carry, h, fragment)
        grads = layout.write(grads, index, g)
        if check_vijp:
            vijp = vijp.at[index.position].set(error)
        out = replace(carry, x=x, log_det=log_det)
        return out, h, add_optional(ct_condition, g_condition), grads, vijp

    inner = (start, h, zero_condition, grads, vijp)
    end, h_swept, ct_condition, grads, vijp = segment.scan(layer_step, inner)
    drift = relative_difference(h_swept, h_end)
    drifted = jnp.logical_not(drift <= tolerance)  # NaN drifts
    h_start = h if start_cotangent else None
    if on_drift == "repair":
        # Written over where the segment's gradients lie: a stack's part would be
        # a slice, a copy of them (a segment's parameters, measured).
        part, owner = layout.part(grads, segment)

        def repair(part, own, *h_start):
            part, own, ct_start = recompute_grads(
                segment,
                start,
                h_end,
                ct_log_det,
                part,
                owner=owner,
                short=short_segments,
            )
            return part, own, *((ct_start,) if h_start else ())

        keep = lambda part, own, *h_start: (part, own, *h_start)
        kept = () if h_start is None else (h_start,)
        part, ct_condition, *kept = jax.lax.cond(
            drifted, repair, keep, part, ct_condition, *kept
        )
        grads = layout.with_part(grads, segment, part, owner)
        h_start = kept[0] if kept else None
    elif on_drift == "nan":
        poison = lambda a: jnp.where(drifted, jnp.nan, a)
        block = jax.tree.map(poison, layout.block(grads, segment))
        grads = layout.with_block(grads, segment, block)
        h_start = None if h_start is None else poison(h_start)
    elif on_drift == "error":
        block = eqx.error_if(
            layout.block(grads, segment),
            drifted,
            "the forward sweep drifted from the exact cotangent beyond its "
            "tolerance (see the report: `report=True`); use `on_drift='repair'`",
        )
        grads = layout.with_block(grads, segment, block)
    return end, ct_condition, h_start, grads, vijp, drift, drifted


def record(figures: dict, j, drift, drifted, vijp, on_drift: str) -> dict:
    """`figures` with segment `j`'s drift and repair, and the vijp errors."""
    dtype = figures["drift"].dtype
    repaired = drifted.astype(dtype) if on_drift in ("repair", "nan") else 0
    return {
        **figures,
        "drift": figures["drift"].at[j].set(drift),
        "repaired": figures["repaired"].at[j].set(repaired),
        "vijp": vijp,
    }


def empty_figures(layout: AbstractLayout, count: int, dtype, check_vijp: bool):
    """The figures of a sweep of `count` segments, zeros (see `sweep`)."""
    return {
        "drift": jnp.zeros(count, dtype),
        "repaired": jnp.zeros(count, dtype),
        "vijp": jnp.zeros(len(layout), dtype) if check_vijp else None,
    }


def sweep(
    layout: AbstractLayout,
    segments: AbstractSegments,
    carry: Carry,
    anchors: PyTree,
    ct: tuple,
    fragments: PyTree,
    *,
    on_drift: str = "repair",
    tolerance: float | None = None,
    check_vijp: bool = False,
    short_segments: bool = False,
) -> tuple[PyTree, Any, dict]:
    """Sweep the chain forwards, segment by segment.

    **Arguments:**

    - `layout`, `segments`: the chain, and the segments its anchors belong to.
    - `carry`: the chain's input.
    - `anchors`: per-segment storage (`segments.zeros`) holding the exact cotangent
      at each segment's start.
    - `ct`: the chain's output cotangents `(ct_x, ct_log_det)`.
    - `fragments`: per-layer storage (`layout.zeros`) holding the fragment of each
      non-submersive layer, `None` elsewhere (or `None` throughout).
    - `on_drift`: what to do with a segment whose drift exceeds `tolerance`
      (see `ON_DRIFT`).
    - `check_vijp`: also measure every layer's vijp against its vjp.
    - `short_segments`: whether a repair may keep a segment's activations (see
      `_recompute`): true for Mixed's short segments, false for Moonwalk's one.

    **Returns:**

    `(grads, ct_condition, figures)`: per-layer parameter gradients in the layout's
    storage, the condition's cotangent (`None` without a condition), and the
    figures of the report: per segment `"drift"` and `"repaired"` (1 where redone
    or poisoned), per layer `"vijp"` (with `check_vijp`).

    The anchors are taken as exact: backprop's cotangents, pulled back through
    exact linearisation points (or, for Moonwalk, from JVPs). Rebuilt anchors are
    not, and are checked before use instead (`_rebuilt.py`).
    """
    ct_out, ct_log_det = ct
    dtype = jnp.result_type(carry.x)
    if tolerance is None:
        tolerance = drift_tolerance(dtype)
    count = len(segments)
    options = dict(
        on_drift=on_drift,
        tolerance=tolerance,
        check_vijp=check_vijp,
        short_segments=short_segments,
    )

    def exact_end(j):
        """The exact cotangent at segment `j`'s end."""
        if isinstance(j, int):
            return ct_out if j + 1 == count else segments.read(anchors, j + 1)
        following = segments.read(anchors, jnp.minimum(j + 1, count - 1))
        return jnp.where(j + 1 < count, following, ct_out)

    def segment_step(state, segment, j):
        carry, ct_condition, grads, figures = state
        x, h = barrier((carry.x, segments.read(anchors, j)))
        carry, own, _, grads, vijp, drift, drifted = sweep_segment(
            layout,
            segment,
            j,
            replace(carry, x=x),
            h,
            exact_end(j),
            grads,
            figures["vijp"],
            fragments,
            ct_log_det,
            start_cotangent=False,
            **options,
        )
        figures = record(figures, j, drift, drifted, vijp, on_drift)
        return carry, add_optional(ct_condition, own), grads, figures

    grads = parameter_zeros(layout, carry)
    ct_condition = jax.tree.map(jnp.zeros_like, carry.condition)
    figures = empty_figures(layout, count, dtype, check_vijp)
    init = (carry, ct_condition, grads, figures)
    _, ct_condition, grads, figures = segments.scan(segment_step, init)
    return grads, ct_condition, figures
