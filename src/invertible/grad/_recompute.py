"""Reverse mode over one segment in memory that does not grow with its length.

Each layer's input is recomputed from the segment's start before the cotangent is
pulled back through the layer: quadratic time in the segment's length, but only a
couple of activations alive. Used where a cheap pass could not be trusted: a
rebuilt segment whose start did not match (phase 1), a swept segment that drifted
(the sweep's repair), or a whole chain under Moonwalk.
"""

import jax
import jax.numpy as jnp

from .._carry import Carry, forward, input_vjp, replace, vjp_and_grads
from .._layout import AbstractLayout
from ._taps import barrier


def _maybe(predicate, f, c):
    """`f(c)` if `predicate`, else `c`: a Python `if` for static predicates."""
    if isinstance(predicate, bool):
        return f(c) if predicate else c
    return jax.lax.cond(jnp.asarray(predicate), f, lambda c: c, c)


def _input_of(segment: AbstractLayout, start: Carry, at, tie):
    """The carry at the input of the layer at `at`, recomputed from `start`. The
    start is tied to `tie` (the current cotangent): otherwise XLA would merge the
    recomputations of straight-line code into one, keeping every input."""
    x, _ = barrier((start.x, tie))

    def up_to(c, layer, index):
        return _maybe(
            index.position < at.position, lambda c: forward(layer, c, index), c
        )

    return segment.scan(up_to, replace(start, x=x))


def recompute_input_vjps(segment: AbstractLayout, start: Carry, ct, ct_log_det):
    """The segment's input cotangent for its output cotangent `ct`."""

    def back(h, layer, at):
        below = _input_of(segment, start, at, h)
        return input_vjp(layer, below, h, ct_log_det, index=at)

    return segment.scan(back, ct, reverse=True)


def recompute_grads(segment: AbstractLayout, start: Carry, ct, ct_log_det, block):
    """Reverse mode with parameter gradients: `(block, ct_condition)`, the
    segment's per-layer gradients in its own storage `block` (written over) and its
    condition's cotangent."""
    ct_condition = jax.tree.map(jnp.zeros_like, start.condition)

    def back(state, layer, at):
        h, ct_condition, block = state
        below = _input_of(segment, start, at, h)
        h, g, g_condition = vjp_and_grads(layer, below, h, ct_log_det, index=at)
        block = segment.write(block, segment.local(at), g)
        if ct_condition is not None:
            ct_condition = jax.tree.map(jnp.add, ct_condition, g_condition)
        return h, ct_condition, block

    _, ct_condition, block = segment.scan(back, (ct, ct_condition, block), reverse=True)
    return block, ct_condition
