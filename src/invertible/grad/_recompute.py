"""Reverse mode over one segment, from its start: where a cheap pass could not be
trusted (a rebuilt segment whose start did not match, in phase 1; a swept segment
that drifted, the sweep's repair; a whole chain under Moonwalk).

Two ways. `short=False`: each layer's input is recomputed from the segment's start
before the cotangent is pulled back through it, in memory that does not grow with
the segment's length but quadratic time (Moonwalk's single segment is the whole
chain). `short=True`, for the short segments between Mixed's anchors: on an
unrolled segment one forward pass keeps every layer's input (the segment's
length in activations, about what the anchors keep), in linear time and, above
all, a program of linear size (the quadratic one dominated compile time).
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._carry import Carry, forward, input_vjp, replace, vjp_and_grads
from .._layout import AbstractLayout, Unrolled
from ._taps import barrier


def _maybe(predicate, f, c):
    """`f(c)` if `predicate`, else `c`: a Python `if` for static predicates."""
    if isinstance(predicate, bool):
        return f(c) if predicate else c
    return jax.lax.cond(jnp.asarray(predicate), f, lambda c: c, c)


def _forward_of(layer, index):
    return lambda c: forward(layer, c, index)


def _traced_forwards(segment: AbstractLayout, start: Carry):
    """For an unrolled segment, each layer's forward traced once (a jaxpr that
    every recomputation replays): run as Python, layer `i` would be traced once per
    later layer, and the repair branches dominated compile time. `None` for a
    stack, whose scan body is traced once anyway."""
    if not isinstance(segment, Unrolled):
        return None
    forwards, carry = [], start
    for layer, i in zip(segment.layers, range(len(segment)), strict=True):
        index = segment.index(i)
        # A closure, not default arguments: Equinox traces only closures.
        run = _forward_of(layer, index)
        traced = eqx.filter_closure_convert(run, carry)
        forwards.append(traced)
        carry = traced.out_struct
    return forwards


def _input_of(segment: AbstractLayout, start: Carry, at, tie, forwards):
    """The carry at the input of the layer at `at`, recomputed from `start`. The
    start is tied to `tie` (the current cotangent): otherwise XLA would merge the
    recomputations of straight-line code into one, keeping every input."""
    x, _ = barrier((start.x, tie))
    carry = replace(start, x=x)
    if forwards is not None:
        for run in forwards[: at.position - segment.first_position()]:
            carry = run(carry)
        return carry

    def up_to(c, layer, index):
        return _maybe(
            index.position < at.position, lambda c: forward(layer, c, index), c
        )

    return segment.scan(up_to, carry)


def _kept_inputs(segment: AbstractLayout, start: Carry, short: bool):
    """Every layer's input, by position, for a short unrolled segment; else `None`."""
    if not (short and isinstance(segment, Unrolled)):
        return None
    inputs, carry = {}, start
    for i, layer in enumerate(segment.layers):
        index = segment.index(i)
        inputs[index.position] = carry
        carry = forward(layer, carry, index)
    return inputs


def recompute_input_vjps(
    segment: AbstractLayout, start: Carry, ct, ct_log_det, *, short: bool = False
):
    """The segment's input cotangent for its output cotangent `ct`."""
    kept = _kept_inputs(segment, start, short)
    forwards = None if kept is not None else _traced_forwards(segment, start)

    def back(h, layer, at):
        if kept is not None:
            return segment.isolate(
                lambda below, h: input_vjp(layer, below, h, ct_log_det, index=at),
                kept[at.position],
                h,
            )
        below = _input_of(segment, start, at, h, forwards)
        return input_vjp(layer, below, h, ct_log_det, index=at)

    return segment.scan(back, ct, reverse=True)


def recompute_grads(
    segment: AbstractLayout,
    start: Carry,
    ct,
    ct_log_det,
    block,
    *,
    owner: AbstractLayout | None = None,
    short: bool = False,
):
    """Reverse mode with parameter gradients: `(block, ct_condition, ct_start)`,
    the segment's per-layer gradients written over in `block`, its condition's
    cotangent and its input's. `block` is the storage of `owner`: by default the
    segment's own; or that of a layout the segment is part of (the whole chain),
    written in place.
    """
    owner = segment if owner is None else owner
    where = segment.local if owner is segment else (lambda index: index)
    ct_condition = jax.tree.map(jnp.zeros_like, start.condition)
    kept = _kept_inputs(segment, start, short)
    forwards = None if kept is not None else _traced_forwards(segment, start)

    def back(state, layer, at):
        h, ct_condition, block = state
        pull = lambda below, h: vjp_and_grads(layer, below, h, ct_log_det, index=at)
        if kept is not None:
            h, g, g_condition = segment.isolate(pull, kept[at.position], h)
        else:
            h, g, g_condition = pull(_input_of(segment, start, at, h, forwards), h)
        block = owner.write(block, where(at), g)
        if ct_condition is not None:
            ct_condition = jax.tree.map(jnp.add, ct_condition, g_condition)
        return h, ct_condition, block

    ct_start, ct_condition, block = segment.scan(
        back, (ct, ct_condition, block), reverse=True
    )
    return block, ct_condition, ct_start
