"""The forward sweep (phase 2), shared by Mixed and Moonwalk.

From a chain's input carry and the exact cotangent at the start of each segment
(an *anchor*; for segment 0, the input cotangent `h_0`), each step rebuilds the
next activation and its cotangent with the layer's vijp and takes the parameter
gradient in the same computation. Only the current `(x, h)` is alive: memory does
not grow with depth. Resetting `h` to the anchor at every segment start stops
round-off, which the vijp recursion multiplies by inverse Jacobians, from
compounding past a segment; fragments complete the vijp of non-submersive layers.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .._carry import Carry, inverse_jvp_and_grads, needs_fragment, replace
from .._layout import AbstractLayout, AbstractSegments
from ._taps import barrier


def parameter_zeros(layout: AbstractLayout, carry: Carry) -> PyTree:
    """Per-layer gradient storage: zeros for every layer's floating arrays."""
    return layout.zeros(lambda layer, _: eqx.filter(layer, eqx.is_inexact_array), carry)


def _add(total, more):
    return None if total is None else jax.tree.map(jnp.add, total, more)


def sweep(
    layout: AbstractLayout,
    segments: AbstractSegments,
    carry: Carry,
    anchors: PyTree,
    ct_log_det: Any,
    fragments: PyTree,
) -> tuple[PyTree, Any]:
    """Sweep the chain forwards, segment by segment.

    **Arguments:**

    - `layout`, `segments`: the chain, and the segments its anchors belong to.
    - `carry`: the chain's input.
    - `anchors`: per-segment storage (`segments.zeros`) holding the exact cotangent
      at each segment's start.
    - `ct_log_det`: the cotangent of the chain's log-det (`None` without one).
    - `fragments`: per-layer storage (`layout.zeros`) holding the fragment of each
      non-submersive layer, `None` elsewhere (or `None` throughout).

    **Returns:**

    `(grads, ct_condition)`: per-layer parameter gradients in the layout's storage,
    and the condition's cotangent (`None` without a condition).
    """
    grads = parameter_zeros(layout, carry)
    ct_condition = jax.tree.map(jnp.zeros_like, carry.condition)

    def layer_step(state, layer, index):
        carry, h, ct_condition, grads = state
        fragment = layout.read(fragments, index) if needs_fragment(layer) else None

        def step(carry, h, fragment):
            out, h, g, g_condition = inverse_jvp_and_grads(
                layer, carry, h, ct_log_det, fragment, index=index
            )
            # The barrier also forces the parameter gradient to be computed now,
            # while `x` and `h` are alive, rather than late with every `x` kept.
            return barrier((out.x, out.log_det, h, g, g_condition))

        x, log_det, h, g, g_condition = layout.isolate(step, carry, h, fragment)
        grads = layout.write(grads, index, g)
        out = replace(carry, x=x, log_det=log_det)
        return out, h, _add(ct_condition, g_condition), grads

    def segment_step(state, segment, j):
        carry, ct_condition, grads = state
        x, h = barrier((carry.x, segments.read(anchors, j)))
        carry = replace(carry, x=x)
        carry, _, ct_condition, grads = segment.scan(
            layer_step, (carry, h, ct_condition, grads)
        )
        return carry, ct_condition, grads

    _, ct_condition, grads = segments.scan(segment_step, (carry, ct_condition, grads))
    return grads, ct_condition
