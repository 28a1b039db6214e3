"""Random models for the gradient tests, built from the layer registry.

A model is an optional stem, a chain of registry layers (a `Sequential`, or a
`ScannedSequential` of one registry layer), and an optional head, applied per
example under `jax.vmap` inside a random scalar loss. A registry layer is eligible
at a given shape when it builds and traces there: layers check their input shapes
at trace time, so the registry itself says what fits.
"""

import contextlib
import dataclasses
import random
from typing import Any

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr

import invertible as inv
from helpers import IMAGES, REGISTRY, RESIDUALS, VECTORS, LayerEntry, to_float64

BATCH = 2


class Stem(eqx.Module):
    """An elementwise affine map: gives the chain's input a gradient to carry."""

    scale: jax.Array
    shift: jax.Array

    def __call__(self, x):
        return jnp.tanh(x * self.scale + self.shift)


class Model(eqx.Module):
    stem: Stem | None
    body: Any
    head: eqx.nn.Linear | None

    def __call__(self, x):
        if self.stem is not None:
            x = self.stem(x)
        y = self.body(x)
        return y.ravel() if self.head is None else self.head(y.ravel())


LOSSES = {
    "sum_of_squares": lambda y: jnp.sum(y**2),
    "sin_mean": lambda y: jnp.mean(jnp.sin(3 * y)),
    "logsumexp": lambda y: jax.nn.logsumexp(y),
}


@dataclasses.dataclass
class Architecture:
    model: Model
    x: jax.Array
    loss_name: str
    has_aux: bool
    kinds: set[str]

    def loss(self, model, x):
        value = jnp.mean(jax.vmap(lambda x: LOSSES[self.loss_name](model(x)))(x))
        return (
            (value, {"mean_output": jnp.mean(jax.vmap(model)(x))})
            if self.has_aux
            else value
        )


def _fits(entry: LayerEntry, shape) -> tuple[int, ...] | None:
    """The output shape of `entry`'s layer on `shape`, or None if it does not fit.
    Abstract evaluation only: nothing is compiled."""

    def apply(key):
        layer = entry.build(key, shape)
        return layer(jnp.zeros(shape, jnp.float64))

    try:
        return eqx.filter_eval_shape(apply, jr.key(0)).shape
    except (ValueError, TypeError, ZeroDivisionError):
        # ZeroDivisionError: Equinox's conv init for a zero-channel half.
        return None


def _has_parameters(entry: LayerEntry, shape) -> bool:
    layer = eqx.filter_eval_shape(entry.build, jr.key(0), shape)
    is_float = lambda leaf: (
        isinstance(leaf, jax.ShapeDtypeStruct)
        and jnp.issubdtype(leaf.dtype, jnp.inexact)
    )
    return any(is_float(leaf) for leaf in jax.tree.leaves(layer))


def _choose(draw, shape, *, stackable: bool):
    """A registry entry that fits `shape`, with its output shape. A stackable one
    keeps the shape and has parameters to stack (a `ScannedSequential` reads its
    length from them)."""
    entries = REGISTRY + RESIDUALS
    options = [(e, out) for e in entries if (out := _fits(e, shape)) is not None]
    if stackable:
        options = [
            (e, out) for e, out in options if out == shape and _has_parameters(e, shape)
        ]
    return draw(st.sampled_from(options))


@contextlib.contextmanager
def _global_random_untouched():
    """Under the test-time type checker, beartype checks one random item of each
    list argument, drawn from the global `random` module; hypothesis forbids
    strategies to move that state (its draws must replay). Put it back."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


@st.composite
def architectures(draw, *, max_depth: int = 4, scanned: bool | None = None):
    with _global_random_untouched():
        return _architecture(draw, max_depth, scanned)


def _architecture(draw, max_depth: int, scanned: bool | None) -> Architecture:
    seed = draw(st.integers(0, 2**31 - 1))
    keys = iter(jr.split(jr.key(seed), 64))
    shape = draw(st.sampled_from(VECTORS[1:] + IMAGES[:2]))
    if scanned is None:
        scanned = draw(st.booleans())
    kinds = set()
    if scanned:
        entry, _ = _choose(draw, shape, stackable=True)
        depth = draw(st.integers(1, max_depth))
        layer_keys = jr.split(next(keys), depth)
        stack = eqx.filter_vmap(lambda k: to_float64(entry.build(k, shape)))(layer_keys)
        body, out_shape, kinds = inv.ScannedSequential(stack), shape, {entry.kind}
        in_shape = shape
    else:
        in_shape, layers = shape, []
        for _ in range(draw(st.integers(1, max_depth))):
            entry, out = _choose(draw, shape, stackable=False)
            layers.append(to_float64(entry.build(next(keys), shape)))
            kinds.add(entry.kind)
            shape = out
        body, out_shape = inv.Sequential(layers), shape
    stem = None
    if draw(st.booleans()):
        k1, k2 = jr.split(next(keys))
        stem = Stem(
            1 + 0.3 * jr.normal(k1, in_shape, jnp.float64),
            0.3 * jr.normal(k2, in_shape, jnp.float64),
        )
    head = None
    if draw(st.booleans()):
        size = 1
        for n in out_shape:
            size *= n
        head = to_float64(eqx.nn.Linear(size, 3, key=next(keys)))
    x = jr.normal(next(keys), (BATCH, *in_shape), jnp.float64)
    return Architecture(
        Model(stem, body, head),
        x,
        draw(st.sampled_from(sorted(LOSSES))),
        draw(st.booleans()),
        kinds,
    )
