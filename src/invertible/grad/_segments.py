"""Cutting a stack of `L` layers into segments of `k` for nested scans.

Anchors sit at segment starts. A stack is scanned as `L // k` segments of `k`
layers (an outer scan over an inner one) and, when `k` does not divide `L`, a tail
of `L % k` layers.
"""

import jax
import jax.numpy as jnp
from jaxtyping import PyTree


def segment_starts(length: int, every: int | None) -> tuple[int, ...]:
    """Layer indices that begin a segment (index 0 always does)."""
    if every is None or every >= length:
        return (0,)
    return tuple(range(0, length, every))


def split_segments(stacked: PyTree, length: int, every: int | None):
    """`(head, tail)`: `head` with leading axes `(L // k, k)`, `tail` with `(L % k,)`.

    Either part is `None` when empty.
    """
    k = length if every is None or every >= length else every
    q, r = divmod(length, k)
    head = jax.tree.map(lambda a: a[: q * k].reshape(q, k, *a.shape[1:]), stacked)
    tail = jax.tree.map(lambda a: a[q * k :], stacked) if r else None
    return head, tail


def join_segments(head: PyTree, tail: PyTree | None) -> PyTree:
    """Undo `split_segments` on per-layer outputs (e.g. gradients)."""
    flat = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), head)
    if tail is None:
        return flat
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), flat, tail)
