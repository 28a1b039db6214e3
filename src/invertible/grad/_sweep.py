"""The forward sweep (phase 2), shared by Mixed and Moonwalk.

From a chain's input `x_0` and its cotangent `h_0`, each step rebuilds the next
activation and its cotangent with the layer's vijp, then takes the parameter
gradient with one vjp. Only the current `(x, h)` is alive: memory does not grow
with depth. Anchors (exact cotangents recorded in phase 1 at segment starts)
replace the swept `h` to stop round-off from compounding; fragments complete the
vijp of non-submersive layers.
"""

import functools as ft
from typing import Any

import jax
from jaxtyping import Array, PyTree

from .._abstract import AbstractNonSubmersive
from ._chain import barrier, fenced, param_grads, stacked_layer
from ._segments import join_segments


def sweep_step(layer: Any, x: Array, h: Array, fragment: PyTree = None):
    """One layer of the sweep: `(y, h_y, grads)`, tied together by a barrier."""
    if isinstance(layer, AbstractNonSubmersive):
        y, h = layer.inverse_jvp(x, h, fragment)
    else:
        y, h = layer.inverse_jvp(x, h)
    # The barrier also forces the parameter gradient to be computed now, while
    # `x` and `h` are alive, rather than late with every `x_i` kept for it.
    return barrier((y, h, param_grads(layer, x, h)))


def sweep_layers(layers, starts, x0, h0, anchors, fragments) -> tuple:
    """Sweep a tuple of layers. `anchors[j]` replaces `h` at layer `starts[j + 1]`;
    `fragments` holds one entry per non-submersive layer, in order."""
    anchors, fragments = iter(anchors), iter(fragments)
    x, h = barrier((x0, h0))
    grads = []
    for i, layer in enumerate(layers):
        if i in starts[1:]:
            h = next(anchors)
        fragment = next(fragments) if isinstance(layer, AbstractNonSubmersive) else None
        x, h, g = fenced(ft.partial(sweep_step, layer, fragment=fragment), x, h)
        grads.append(g)
    return tuple(grads)


def sweep_stack(stack, head, tail, x0, anchors, fragments) -> PyTree:
    """Sweep a stacked layer cut into segments (see `_segments.py`).

    `anchors` is `(head_anchors, tail_anchor)`: one exact cotangent per segment,
    the first being `h_0`; `fragments` is `(head_fragments, tail_fragments)`, per
    layer, or `None`s for submersive stacks.
    """

    def layer_step(carry, item):
        params, fragment = item
        y, h, g = sweep_step(stacked_layer(stack, params), *carry, fragment)
        return (y, h), g

    def segment_step(x, item):
        params, anchor, fragment = item
        (x, _), g = jax.lax.scan(layer_step, barrier((x, anchor)), (params, fragment))
        return x, g

    x, g_head = jax.lax.scan(segment_step, x0, (head, anchors[0], fragments[0]))
    g_tail = None
    if tail is not None:
        carry = barrier((x, anchors[1]))
        _, g_tail = jax.lax.scan(layer_step, carry, (tail, fragments[1]))
    return join_segments(g_head, g_tail)
