"""Layouts: how a chain's layers are stored and iterated, so that every method is
written once for both kinds of chain.

- `Unrolled`: a tuple of layers (`invertible.Sequential`), iterated by a Python
  loop; indices are Python ints.
- `Scanned`: one layer, or one block of several layers (an `invertible.Sequential`),
  whose array leaves carry a leading axis of stacked copies
  (`invertible.ScannedSequential`), iterated by `lax.scan`; indices are traced.

Both offer the same operations: `scan` over the layers (forwards or backwards),
`segments(k)` (runs of `k` layers, or of whole blocks, each a layout of the same
kind, with their own `scan`), and per-layer and per-segment storage (`zeros`,
`write`, `read`) that writes each value in its final place, so that no method
builds a stack and concatenates it (a copy of every layer's gradients).
"""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from ._carry import Carry, Index, forward


class AbstractLayout(eqx.Module):
    """The layers of a chain, as the methods of `invertible.grad` see them."""

    def __len__(self) -> int:
        raise NotImplementedError

    def apply(self, carry: Carry) -> Carry:
        """The plain forward pass."""
        return self.scan(lambda c, layer, index: forward(layer, c, index), carry)

    def scan(
        self,
        step: Callable[[Any, Any, Index], Any],
        init: Any,
        *,
        reverse: bool = False,
    ) -> Any:
        """`step(carry, layer, index) -> carry` over the layers, in order (or in
        reverse)."""
        raise NotImplementedError

    def segments(self, k: int, *, views: bool = False) -> "AbstractSegments":
        """The layers in runs of `k` (the last may be shorter). `views`: for a
        computation that JAX does not differentiate through the segments (a
        stack's segments then read their entries from the whole stack one at a
        time, instead of each holding a copy of its own)."""
        raise NotImplementedError

    def layer_types(self) -> tuple:
        """One layer per position of a stacked block (all layers, unrolled), for
        trace-time checks of their kind."""
        raise NotImplementedError

    def zeros(self, make: Callable[[Any, Carry], PyTree], carry: Carry) -> PyTree:
        """Per-layer storage for the whole chain: zeros shaped like
        `make(layer, carry_at_layer)` (a pytree of arrays or `ShapeDtypeStruct`s,
        `None` allowed), where `carry_at_layer` is `carry` carried abstractly to
        the layer's input."""
        raise NotImplementedError

    def first_position(self):
        """The position in the chain of this layout's first layer."""
        raise NotImplementedError

    def slot(self, index: Index) -> int:
        """The position in the whole chain's `layer_types()` of the layer at
        `index` (static, also for a segment's layout)."""
        raise NotImplementedError

    def isolate(self, f: Callable, *args):
        """`f(*args)`, computed as a unit: fenced in straight-line code (see
        `fenced`, and a scan of one step, which XLA inlines), as is in the body
        of a longer scan, which already is one."""
        return f(*args)

    def cotangent(self, store: PyTree) -> "AbstractLayout":
        """Per-layer gradients, as the cotangent of this layout (same structure)."""
        raise NotImplementedError

    def write(self, store: PyTree, index: Index, value: PyTree) -> PyTree:
        raise NotImplementedError

    def read(self, store: PyTree, index: Index) -> PyTree:
        raise NotImplementedError

    def block(self, store: PyTree, segment: "AbstractLayout") -> PyTree:
        """The part of per-layer storage `store` (of this, the whole chain's,
        layout) that belongs to `segment`, as the segment's own storage (written
        with `segment.write(block, segment.local(index), value)`)."""
        raise NotImplementedError

    def with_block(self, store: PyTree, segment: "AbstractLayout", block) -> PyTree:
        """`store` with `segment`'s part replaced by `block`."""
        raise NotImplementedError

    def part(self, store: PyTree, segment: "AbstractLayout") -> tuple:
        """`(part, owner)`: what a computation over `segment` takes of per-layer
        storage `store` to write over, as the storage of `owner`. By default the
        segment's block, its own storage; a layout whose blocks are copies (a
        stack's are slices) gives the whole store, to be written in place."""
        return self.block(store, segment), segment

    def with_part(self, store, segment: "AbstractLayout", part, owner) -> PyTree:
        """`store` with what `part` (see `part`) holds."""
        return part if owner is self else self.with_block(store, segment, part)

    def local(self, index: Index) -> Index:
        """`index`, counted from this layout's first entry (for its own storage)."""
        return index._replace(entry=index.entry - self.start)

    def as_layers(self, store: PyTree) -> PyTree:
        """Per-layer storage (e.g. gradients) in the structure of the layers the
        chain holds (`Sequential.layers`, `ScannedSequential.layers`)."""
        raise NotImplementedError


class AbstractSegments(eqx.Module):
    """A layout cut into segments; segment `j` is itself a layout."""

    def __len__(self) -> int:
        raise NotImplementedError

    def starts(self) -> list[int]:
        """The position in the chain of each segment's first layer."""
        raise NotImplementedError

    def scan(
        self,
        step: Callable[[Any, AbstractLayout, Any], Any],
        init: Any,
        *,
        reverse=False,
    ) -> Any:
        """`step(carry, segment, j) -> carry` over the segments."""
        raise NotImplementedError

    def zeros(self, make: Callable[[Carry], PyTree], carry: Carry) -> PyTree:
        """Per-segment storage: zeros shaped like `make(carry_at_start)`, where
        `carry_at_start` is `carry` carried abstractly to the segment's start."""
        raise NotImplementedError

    def write(self, store: PyTree, j, value: PyTree) -> PyTree:
        raise NotImplementedError

    def read(self, store: PyTree, j) -> PyTree:
        raise NotImplementedError

    def locate(self, index: Index) -> tuple:
        """`(j, first)`: the segment of the layer at `index`, and whether it is
        the segment's first layer (static where the layout's indices are)."""
        raise NotImplementedError


def _zeros(struct: PyTree, lead: tuple = ()) -> PyTree:
    return jax.tree.map(lambda s: jnp.zeros((*lead, *s.shape), s.dtype), struct)


def _walk_shapes(layers, make, carry: Carry, index) -> list:
    """`make(layer, carry_at_layer)` for consecutive layers, evaluated abstractly."""

    def walk(carry):
        out = []
        for j, layer in enumerate(layers):
            out.append(make(layer, carry))
            carry = forward(layer, carry, index(j))
        return out

    return jax.eval_shape(walk, carry)


def fenced(f: Callable, *args):
    """`f(*args)` inside a `lax.cond` whose (always true) predicate XLA cannot fold.

    In straight-line code (an `Unrolled` chain, unlike a `lax.scan` body) XLA fuses
    and schedules across the whole program: a ReLU's `x > 0` is recomputed in the
    reverse pass, keeping the float pre-activation instead of the one-byte mask,
    and the forward sweep is interleaved with phase 1 so that its activations pile
    up (at backprop's memory, measured). A branch is a separate computation that
    runs as a unit, like a scan body.
    """
    dynamic, static = eqx.partition(args, eqx.is_array)
    shapes = []

    def run(dynamic):
        out = f(*eqx.combine(dynamic, static))
        shapes.append(
            jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out)
        )
        return out

    def zeros(dynamic):
        # `f` is traced once: `lax.cond` traces the true branch first, whose output
        # shapes the zeros take (were the order to change, they are worked out).
        return _zeros(shapes[0] if shapes else jax.eval_shape(run, dynamic))

    always = jax.lax.optimization_barrier(jnp.bool_(True))
    return jax.lax.cond(always, run, zeros, dynamic)


# ------------------------------------------------------------------------- unrolled


class Unrolled(AbstractLayout):
    """A tuple of layers. `start` is the position of `layers[0]` in the whole
    chain (for a segment); `fold_keys=False` gives a lone layer the key it was
    called with."""

    layers: tuple
    start: int = eqx.field(static=True, default=0)
    fold_keys: bool = eqx.field(static=True, default=True)

    def __len__(self) -> int:
        return len(self.layers)

    def index(self, i: int) -> Index:
        """The index of `layers[i]`."""
        position = self.start + i
        return Index(position, position, 0, self.fold_keys)

    def scan(self, step, init, *, reverse=False):
        order = range(len(self.layers))
        for i in reversed(order) if reverse else order:
            init = step(init, self.layers[i], self.index(i))
        return init

    def segments(self, k: int, *, views: bool = False) -> "UnrolledSegments":
        bounds = range(0, len(self.layers), k)
        return UnrolledSegments(
            tuple(
                Unrolled(self.layers[s : s + k], self.start + s, self.fold_keys)
                for s in bounds
            )
        )

    def layer_types(self) -> tuple:
        return self.layers

    def slot(self, index):
        return index.entry

    def first_position(self):
        return self.start

    def zeros(self, make, carry):
        shapes = _walk_shapes(self.layers, make, carry, self.index)
        return tuple(_zeros(s) for s in shapes)

    def isolate(self, f, *args):
        return fenced(f, *args)

    def cotangent(self, store):
        return Unrolled(store, self.start, self.fold_keys)

    def write(self, store, index, value):
        i = index.entry
        return (*store[:i], value, *store[i + 1 :])

    def read(self, store, index):
        return store[index.entry]

    def as_layers(self, store):
        return store

    def block(self, store, segment):
        return store[segment.start : segment.start + len(segment)]

    def with_block(self, store, segment, block):
        end = segment.start + len(segment)
        return (*store[: segment.start], *block, *store[end:])


class UnrolledSegments(AbstractSegments):
    parts: tuple

    def __len__(self) -> int:
        return len(self.parts)

    def starts(self) -> list[int]:
        return [part.start for part in self.parts]

    def scan(self, step, init, *, reverse=False):
        order = range(len(self.parts))
        for j in reversed(order) if reverse else order:
            init = step(init, self.parts[j], j)
        return init

    def locate(self, index):
        starts = self.starts()
        j = max(j for j, s in enumerate(starts) if s <= index.position)
        return j, index.position == starts[j]

    def zeros(self, make, carry):
        def walk(carry):
            out = []
            for part in self.parts:
                out.append(make(carry))
                carry = part.apply(carry)
            return out

        return tuple(_zeros(s) for s in jax.eval_shape(walk, carry))

    def write(self, store, j, value):
        return (*store[:j], value, *store[j + 1 :])

    def read(self, store, j):
        return store[j]


# -------------------------------------------------------------------------- scanned


def _entry_layers(entry: Any, size: int) -> tuple:
    """The layers of one stack entry: the entry itself, or a block's layers."""
    return tuple(entry.layers) if size > 1 else (entry,)


class Scanned(AbstractLayout):
    """`length` stacked copies of one layer, or of one block of `size` layers (an
    `invertible.Sequential` whose leaves are stacked). `start` is the stack
    position of entry 0 in the whole chain (traced inside a scan over segments)."""

    stack: Any
    length: int = eqx.field(static=True)
    size: int = eqx.field(static=True, default=1)
    start: Any = 0
    # A view (see `ScannedSegments`): `stack` holds more entries, from position
    # `origin` on, and entries `start + i` are read from it one at a time.
    view: bool = eqx.field(static=True, default=False)
    origin: Any = 0

    def __len__(self) -> int:
        return self.length * self.size

    def _split(self):
        return eqx.partition(self.stack, eqx.is_array)

    def entry(self, params: PyTree) -> Any:
        return eqx.combine(params, self._split()[1])

    def scan(self, step, init, *, reverse=False):
        dynamic, static = self._split()
        positions = self.start + jnp.arange(self.length)
        subs = range(self.size)

        def body(carry, item):
            params, entry = item
            if self.view:
                at = entry - self.origin
                take = lambda a: jax.lax.dynamic_index_in_dim(a, at, keepdims=False)
                params = jax.tree.map(take, dynamic)
            layers = _entry_layers(eqx.combine(params, static), self.size)
            for j in reversed(subs) if reverse else subs:
                index = Index(entry * self.size + j, entry, j)
                carry = step(carry, layers[j], index)
            return carry, None

        xs = (None if self.view else dynamic, positions)
        return jax.lax.scan(body, init, xs, reverse=reverse)[0]

    def segments(self, k: int, *, views: bool = False) -> "ScannedSegments":
        return ScannedSegments(self, max(1, math.ceil(k / self.size)), views)

    def isolate(self, f, *args):
        # XLA inlines a loop of one step: its body is then straight-line code
        # (unfenced, the paper's RevNet at one layer per block kept 1.5x
        # backprop's memory under Mixed; fenced, 0.82x).
        return fenced(f, *args) if self.length == 1 else f(*args)

    def layer_types(self) -> tuple:
        dynamic, static = self._split()
        first = eqx.combine(jax.tree.map(lambda a: a[0], dynamic), static)
        return _entry_layers(first, self.size)

    def slot(self, index):
        return index.sub

    def first_position(self):
        return self.start * self.size

    def zeros(self, make, carry):
        shapes = _walk_shapes(self.layer_types(), make, carry, lambda j: Index(j, 0, j))
        stacked = tuple(_zeros(s, (self.length,)) for s in shapes)
        return stacked[0] if self.size == 1 else stacked

    def cotangent(self, store):
        return Scanned(self.as_layers(store), self.length, self.size, self.start)

    def _part(self, store, index):
        return store if self.size == 1 else store[index.sub]

    def write(self, store, index, value):
        part = jax.tree.map(
            lambda s, v: s.at[index.entry].set(v), self._part(store, index), value
        )
        if self.size == 1:
            return part
        return (*store[: index.sub], part, *store[index.sub + 1 :])

    def read(self, store, index):
        return jax.tree.map(lambda s: s[index.entry], self._part(store, index))

    def part(self, store, segment):
        return store, self

    def block(self, store, segment):
        take = lambda a: jax.lax.dynamic_slice_in_dim(a, segment.start, segment.length)
        return jax.tree.map(take, store)

    def with_block(self, store, segment, block):
        put = lambda a, b: jax.lax.dynamic_update_slice_in_dim(a, b, segment.start, 0)
        return jax.tree.map(put, store, block)

    def as_layers(self, store):
        if self.size == 1:
            return store
        skeleton = eqx.filter(self.stack, lambda _: False)
        return eqx.tree_at(lambda block: block.layers, skeleton, store)


class ScannedSegments(AbstractSegments):
    """Segments of `k` stack entries: `q` full ones, scanned, then a tail of `r`.

    The parameters are cut into segments here, once, outside any function that a
    method differentiates or checkpoints: the segments' parameters then reach the
    scan as its `xs`, which JAX forwards as they are; cut inside, they would be
    intermediates, and a copy of every layer's parameters would be kept as
    residuals (measured).

    With `views` (where JAX does not differentiate through the segments) nothing is
    cut: each segment reads its entries from the whole stack one at a time, which
    spares XLA the copy of a segment's parameters that a sliced `xs` costs in a
    nested scan (measured)."""

    head: Any  # the first q * k entries, with leading axes (q, k); with views, all
    tail: Any  # the last r entries, or None
    static: Any = eqx.field(static=True)
    k: int = eqx.field(static=True)
    q: int = eqx.field(static=True)
    r: int = eqx.field(static=True)
    size: int = eqx.field(static=True)
    views: bool = eqx.field(static=True)
    start: Any

    def __init__(self, layout: Scanned, k: int, views: bool = False):
        q, r = divmod(layout.length, k)
        dynamic, self.static = layout._split()
        if views:
            self.head, self.tail = dynamic, None
        else:
            self.head = jax.tree.map(
                lambda a: a[: q * k].reshape(q, k, *a.shape[1:]), dynamic
            )
            self.tail = jax.tree.map(lambda a: a[q * k :], dynamic) if r else None
        self.k, self.q, self.r, self.size, self.views, self.start = (
            k,
            q,
            r,
            layout.size,
            views,
            layout.start,
        )

    def __len__(self) -> int:
        return self.q + (self.r > 0)

    def starts(self) -> list[int]:
        return [j * self.k * self.size for j in range(len(self))]

    def _segment(self, params, length: int, start) -> Scanned:
        if self.views:
            params, view, origin = self.head, True, self.start
        else:
            view, origin = False, 0
        stack = eqx.combine(params, self.static)
        return Scanned(stack, length, self.size, start, view, origin)

    def scan(self, step, init, *, reverse=False):
        q, r, k = self.q, self.r, self.k

        def full(carry, item):
            params, j = item
            return step(carry, self._segment(params, k, self.start + j * k), j), None

        def head(carry):
            if q == 0:
                return carry
            items = (None if self.views else self.head, jnp.arange(q))
            return jax.lax.scan(full, carry, items, reverse=reverse)[0]

        def tail(carry):
            if not r:
                return carry
            return step(carry, self._segment(self.tail, r, self.start + q * k), q)

        return head(tail(init)) if reverse else tail(head(init))

    def locate(self, index):
        if index.sub != 0:
            return None, False
        entry = index.entry - self.start
        return entry // self.k, entry % self.k == 0

    def zeros(self, make, carry):
        return _zeros(jax.eval_shape(make, carry), (len(self),))

    def write(self, store, j, value):
        return jax.tree.map(lambda s, v: s.at[j].set(v), store, value)

    def read(self, store, j):
        return jax.tree.map(lambda s: s[j], store)
