"""How Mixed's phase 1 keeps what it needs: a plan made at trace time by counting
bytes.

Phase 1 needs the reverse pass of each layer's input path. It can pay for it by

- keeping its residuals ("residuals": what JAX's linearisation keeps; "bits":
  the same, with ReLU and leaky-ReLU signs packed into one bit per unit;
  "inputs": the input of the layer's expensive part, relinearised in the reverse
  pass);
- recomputing a whole segment from the input kept at its start ("recompute");
- rebuilding every layer's input with `inverse` from the segment's end
  ("rebuild"), which keeps nothing per layer: only one activation per segment,
  in the same slot where the segment's anchor (its exact start cotangent) is then
  written. Each rebuilt segment is checked against its stored start and recomputed
  if it drifted.

Anchors cost one activation per segment in any case. `"auto"` keeps residuals
(the cheapest of the three ways, per layer) when over the chain they cost no more
than that, which keeps Mixed at most twice the memory of rebuilding and saves a
pass; otherwise it rebuilds when every layer can be rebuilt (`can_rebuild`), and
else recomputes the segments whose residuals cost more than their start.
"""

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.extend
import numpy as np

from .._carry import Carry, Index, forward, needs_fragment, replace
from .._checks import layer_name
from .._layout import AbstractLayout
from ._dispatch import can_rebuild, keep_inputs, pack_bits

STRATEGIES = ("auto", "residuals", "bits", "inputs", "recompute", "rebuild")
STORED = ("residuals", "bits", "inputs")


def saveable(primitive, *_, **__) -> bool:
    # Phase 1 keeps whatever the input path needs, except broadcasts: `jax.nn.relu`'s
    # JVP rule broadcasts a zero to the layer's width, and keeping it would cost four
    # times the mask it sits beside. It is recomputed instead.
    return primitive is not jax.lax.broadcast_in_dim_p


def arrange(layer: Any, how: str) -> Any:
    """`layer` as phase 1 runs it under a per-layer strategy."""
    if how == "bits":
        return pack_bits(layer)
    if how == "inputs":
        return keep_inputs(layer)
    return layer


@dataclasses.dataclass(frozen=True)
class Plan:
    """What phase 1 does. `rebuild`: the whole chain is rebuilt (the explicit phase
    1); otherwise `how[slot]` is each layer's per-layer strategy and
    `recompute[j]` whether segment `j` is recomputed (for a stack, one entry for
    all of its segments)."""

    k: int
    rebuild: bool
    how: tuple[str, ...] = ()
    recompute: tuple[bool, ...] = ()

    def layer(self, slot: int) -> str:
        return self.how[slot]

    def segment(self, j) -> bool:
        return self.recompute[j] if isinstance(j, int) else self.recompute[0]


def anchor_spacing(anchor_every, length: int) -> int:
    """Layers per segment: `anchor_every`, or for `"auto"` about √L (at least 8):
    memory grows with the number of segments, and the time a drifted segment
    takes to redo with its length."""
    if anchor_every is None:
        return max(length, 1)
    if anchor_every == "auto":
        return max(8, math.ceil(math.sqrt(length)))
    return anchor_every


# ------------------------------------------------------------------ counting bytes

_counted: dict = {}


def _nbytes(aval) -> int:
    if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key):
        return int(np.prod(aval.shape)) * 8  # a typed key: two 32-bit words
    return int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize


def residual_bytes(layer: Any, carry: Carry, how: str) -> int:
    """The bytes phase 1 keeps for `layer` at `carry` under a per-layer strategy:
    the residuals of its input path's reverse pass (parameters excluded: they are
    kept anyway)."""
    dynamic, static = eqx.partition((layer, carry), eqx.is_array)
    leaves, treedef = jax.tree.flatten(dynamic)
    key = (how, treedef, static, tuple((a.shape, a.dtype) for a in leaves))
    try:
        hash(key)
    except TypeError:
        key = None
    if key is not None and key in _counted:
        return _counted[key]

    def pullback(*leaves):
        layer, carry = eqx.combine(jax.tree.unflatten(treedef, leaves), static)
        arranged = arrange(layer, how)

        def input_path(x):
            out = forward(arranged, replace(carry, x=x), Index(0, 0))
            return out.x, out.log_det

        if how != "inputs":  # as phase 1 runs it (`_phase1.py`)
            input_path = jax.checkpoint(input_path, policy=saveable)
        return jax.vjp(input_path, carry.x)[1]

    closed = jax.make_jaxpr(pullback)(*leaves)
    jaxpr = closed.jaxpr
    x_at = [i for i, a in enumerate(leaves) if a is carry.x]
    constants = {v for i, v in enumerate(jaxpr.invars) if i not in x_at}
    total, seen = 0, set()
    for var in jaxpr.outvars:
        if isinstance(var, jax.extend.core.Literal) or var in constants:
            continue
        if var in seen:
            continue
        seen.add(var)
        if hasattr(var.aval, "shape"):
            total += _nbytes(var.aval)
    if key is not None:
        _counted[key] = total
    return total


def make_plan(layout: AbstractLayout, carry: Carry, strategy: str, k: int) -> Plan:
    """The plan for `strategy` (one of `STRATEGIES`)."""
    layers = layout.layer_types()
    segments = layout.segments(k)
    blocked = [
        f"{i} ({layer_name(layer)})"
        for i, layer in enumerate(layers)
        if not can_rebuild(layer)
    ]
    rebuildable = not blocked
    if strategy == "rebuild":
        if blocked:
            raise ValueError(
                f"Mixed(strategy='rebuild'): layer {', '.join(blocked)} cannot be "
                "rebuilt with its inverse: it has none, or an ill-conditioned one "
                "(`invertible.grad.can_rebuild`, e.g. a LeakyReLU with a slope "
                "below 0.5). Use strategy 'recompute', or 'auto', which rebuilds "
                "only where every layer can be."
            )
        return Plan(k, True)
    if strategy in STORED:
        return Plan(k, False, (strategy,) * len(layers), (False,) * len(segments))
    if strategy == "recompute":
        return Plan(k, False, ("residuals",) * len(layers), (True,) * len(segments))
    return _auto(layout, carry, segments, k, rebuildable)


def _auto(layout, carry, segments, k: int, rebuildable: bool) -> Plan:
    layers = layout.layer_types()
    at = _inputs_along(layout, carry)
    how, cost = [], []
    for layer, c in zip(layers, at, strict=True):
        options = ["residuals", "bits", "inputs"]
        if needs_fragment(layer):
            options = ["residuals", "bits"]  # the fragment's tap needs the layer
        counts = {o: residual_bytes(layer, c, o) for o in options}
        best = min(options, key=lambda o: (counts[o], options.index(o)))
        how.append(best)
        cost.append(counts[best])
    x_bytes = [_nbytes(c.x) for c in at]
    per = len(layers)  # layers per stack entry (all of them, unrolled)
    entries = len(layout) // per
    starts = segments.starts()
    kept = sum(cost) * entries
    anchors = sum(x_bytes[s % per] for s in starts)
    if kept <= anchors:
        return Plan(k, False, tuple(how), (False,) * len(segments))
    if rebuildable:
        return Plan(k, True)
    ends = [*starts[1:], len(layout)]
    recompute = [
        sum(cost[i % per] for i in range(s, e)) > x_bytes[s % per]
        for s, e in zip(starts, ends, strict=True)
    ]
    return Plan(k, False, tuple(how), tuple(recompute))


def _inputs_along(layout, carry: Carry) -> list[Carry]:
    """The (abstract) carry at each layer type's input."""

    def walk(carry):
        out = []
        for j, layer in enumerate(layout.layer_types()):
            out.append(carry)
            carry = forward(layer, carry, Index(j, 0, j))
        return out

    shapes = jax.eval_shape(walk, carry)
    return [replace(carry, x=jax.numpy.zeros(s.x.shape, s.x.dtype)) for s in shapes]
