"""The registry of layer constructors that every property test runs over.

Each entry says how to build a layer for a given per-example input shape, which
shapes it accepts (a hypothesis strategy) and what kind of layer it is. Add a layer
to the library, add it here: every property in `test_layer_properties.py` then
covers it, and a missing method fails (abstract classes cannot be instantiated).
"""

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr

import invertible as inv

Kind = Literal["invertible", "right-invertible", "fragment"]


@dataclasses.dataclass(frozen=True)
class LayerEntry:
    name: str
    kind: Kind
    build: Callable[[jax.Array, tuple[int, ...]], Any]  # (key, input shape) -> layer
    shapes: st.SearchStrategy[tuple[int, ...]]

    def __repr__(self):
        return self.name


# Shapes come from small fixed menus: every new shape costs a compile (seconds on
# CI's two cores), and the layers' logic does not depend on the sizes beyond
# evenness and divisibility, which the menus cover. Hypothesis varies the seeds
# (weights, inputs, cotangents) freely.
VECTORS = [(2,), (4,), (6,)]
IMAGES = [(2, 2, 2), (4, 2, 4), (8, 4, 2)]


def shapes(
    *,
    vectors: bool = True,
    images: bool = True,
    channel_multiple: int = 1,
    spatial_multiple: int = 1,
) -> st.SearchStrategy[tuple[int, ...]]:
    menu = (VECTORS if vectors else []) + (IMAGES if images else [])
    fits = [
        s
        for s in menu
        if s[0] % channel_multiple == 0
        and all(n % spatial_multiple == 0 for n in s[1:])
    ]
    return st.sampled_from(fits)


def mlp_or_conv(key, half_shape, out_channels=None):
    """A small non-invertible residual/conditioner for a half of the given shape."""
    c = half_shape[0]
    out = c if out_channels is None else out_channels
    if len(half_shape) == 1:
        return eqx.nn.MLP(c, out, 8, 2, activation=jnp.tanh, key=key)
    k1, k2 = jr.split(key)
    return eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(c, 4, 3, padding=1, key=k1),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Conv2d(4, out, 3, padding=1, key=k2),
        ]
    )


def _additive(key, shape, swap):
    half = (shape[0] // 2, *shape[1:])
    return inv.AdditiveCoupling(mlp_or_conv(key, half), swap=swap)


REGISTRY: list[LayerEntry] = [
    LayerEntry(
        "AdditiveCoupling",
        "invertible",
        lambda key, shape: _additive(key, shape, swap=False),
        shapes(channel_multiple=2),
    ),
    LayerEntry(
        "AdditiveCoupling(swap)",
        "invertible",
        lambda key, shape: _additive(key, shape, swap=True),
        shapes(channel_multiple=2),
    ),
    LayerEntry(
        "LeakyReLU", "invertible", lambda key, shape: inv.LeakyReLU(0.1), shapes()
    ),
]


# Invertible flow layers (couplings, permutations, LU-parametrised linear maps).


def _affine(key, shape):
    half = (shape[0] // 2, *shape[1:])
    # Both `swap` settings across the shape menu, without a second entry to compile.
    swap = shape[0] % 4 == 0
    return inv.AffineCoupling(mlp_or_conv(key, half, 2 * half[0]), swap=swap)


def _actnorm(key, shape):
    k_bias, k_scale = jr.split(key)
    layer = inv.ActNorm(shape[0])
    random = (jr.normal(k_bias, (shape[0],)), 0.5 * jr.normal(k_scale, (shape[0],)))
    return eqx.tree_at(lambda a: (a.bias, a.log_scale), layer, random)


def _random_lu_scale(layer, key):
    """An LU-parametrised layer with a random diagonal, so that `log |det W|` is
    not the 0 of its orthogonal initialisation."""
    n = layer.weight.log_scale.shape[0]
    return eqx.tree_at(lambda a: a.weight.log_scale, layer, 0.3 * jr.normal(key, (n,)))


def _linear(key, shape):
    k_layer, k_scale = jr.split(key)
    return _random_lu_scale(inv.InvertibleLinear(shape[0], key=k_layer), k_scale)


def _conv1x1(key, shape):
    k_layer, k_bias, k_scale = jr.split(key, 3)
    layer = inv.Invertible1x1Conv(shape[0], use_bias=True, key=k_layer)
    layer = eqx.tree_at(lambda a: a.bias, layer, jr.normal(k_bias, (shape[0],)))
    return _random_lu_scale(layer, k_scale)


REGISTRY += [
    LayerEntry("AffineCoupling", "invertible", _affine, shapes(channel_multiple=2)),
    LayerEntry(
        "Squeeze",
        "invertible",
        lambda key, shape: inv.Squeeze(),
        shapes(vectors=False, spatial_multiple=2),
    ),
    LayerEntry(
        "Permute",
        "invertible",
        lambda key, shape: inv.Permute.random(shape[0], key=key),
        shapes(),
    ),
    LayerEntry("Asinh", "invertible", lambda key, shape: inv.Asinh(), shapes()),
    LayerEntry("InvertibleLinear", "invertible", _linear, shapes(images=False)),
    LayerEntry(
        "Invertible1x1Conv",
        "invertible",
        _conv1x1,
        shapes(vectors=False),
    ),
    LayerEntry("ActNorm", "invertible", _actnorm, shapes()),
]


def cast(tree, dtype):
    """`tree` with every floating array in `dtype`."""
    return jax.tree.map(
        lambda leaf: leaf.astype(dtype) if eqx.is_inexact_array(leaf) else leaf, tree
    )


def to_float64(tree):
    return cast(tree, jnp.float64)


def random_like(key, tree):
    """Standard normal arrays shaped like the leaves of `tree`."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jr.split(key, len(leaves))
    draws = [jr.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, draws)


def relative_error(grads, reference) -> float:
    """Worst leaf of ‖g - ref‖ / ‖ref‖, in float64."""
    errors = [
        float(jnp.linalg.norm((g.astype(jnp.float64) - r).ravel()))
        / max(float(jnp.linalg.norm(r.ravel())), 1e-300)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True)
    ]
    return max(errors)


def mlp_couplings(depth, *, features, width, activation=jax.nn.relu, key):
    """A `Sequential` of additive couplings with one-hidden-layer MLP residuals."""
    half = features // 2
    keys = jr.split(key, depth)
    return inv.Sequential(
        [
            inv.AdditiveCoupling(
                eqx.nn.MLP(half, half, width, 1, activation=activation, key=k),
                swap=True,
            )
            for k in keys
        ]
    )


def squared_loss(model, x):
    return jnp.mean(jax.vmap(model)(x) ** 2)


def ones(*shape, dtype=jnp.float64):
    return jnp.ones(shape, dtype)


@eqx.filter_jit
def _build(make, key, shape):
    k_layer, k_x = jr.split(key)
    return to_float64(make(k_layer, shape)), jr.normal(k_x, shape, jnp.float64)


def build(entry: LayerEntry, seed: int, shape: tuple[int, ...]):
    """A float64 layer and a float64 input for it, built under `jit`.

    Compiled once per (entry, shape): hypothesis varies the seed freely, while
    eager construction would recompile every small op for every new shape.
    """
    return _build(entry.build, jr.key(seed), shape)


def assert_close(a, b, rtol=1e-10, atol=1e-12):
    a_leaves, b_leaves = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(a_leaves, b_leaves, strict=True):
        assert x.shape == y.shape, (x.shape, y.shape)
        assert jnp.allclose(x, y, rtol=rtol, atol=atol), float(jnp.max(jnp.abs(x - y)))


# Right-invertible layers (the output is smaller) and non-submersive layers (with a
# fragment).


def _surjective_linear(key, shape):
    k_layer, k_diagonal = jr.split(key)
    n = shape[0]
    layer = inv.SurjectiveLinear(n, max(1, n // 2), key=k_layer)
    diagonal = 0.5 * jr.normal(k_diagonal, layer.log_diagonal.shape)
    return eqx.tree_at(lambda a: a.log_diagonal, layer, diagonal)


REGISTRY += [
    LayerEntry(
        "SurjectiveLinear",
        "right-invertible",
        _surjective_linear,
        shapes(images=False),
    ),
    LayerEntry(
        "AvgPool2d",
        "right-invertible",
        lambda key, shape: inv.AvgPool2d(2),
        shapes(vectors=False, spatial_multiple=2),
    ),
    LayerEntry(
        "KeepChannels",
        "right-invertible",
        lambda key, shape: inv.KeepChannels(max(1, shape[0] // 2)),
        shapes(),
    ),
    LayerEntry(
        "ChannelPad",
        "fragment",
        lambda key, shape: inv.ChannelPad(shape[0] + 3),
        shapes(),
    ),
    LayerEntry("ReLU", "fragment", lambda key, shape: inv.ReLU(), shapes()),
]


# Residual kinds beyond tanh MLPs and convs, for the generated chains
# (`architectures.py`): what Mixed keeps differs per kind (see docs/concepts.md),
# and every strategy must be exact on each. Couplings like the registry's, so the
# per-layer properties need not be checked again.


def _gelu_mlp(key, half_shape):
    return eqx.nn.MLP(half_shape[0], half_shape[0], 8, 1, jax.nn.gelu, key=key)


class _PreNorm(eqx.Module):
    """A pre-LayerNorm residual: `F(LayerNorm(x))`."""

    norm: eqx.nn.LayerNorm
    inner: eqx.nn.MLP

    def __call__(self, x):
        return self.inner(self.norm(x))


def _layer_norm_mlp(key, half_shape):
    return _PreNorm(eqx.nn.LayerNorm(half_shape[0]), _gelu_mlp(key, half_shape))


def _group_norm_conv(key, half_shape):
    c = half_shape[0]
    return eqx.nn.Sequential(
        [
            eqx.nn.GroupNorm(1, c),
            eqx.nn.Conv2d(c, c, 3, padding=1, key=key),
            eqx.nn.Lambda(jnp.tanh),
        ]
    )


def _coupling_with(make):
    def build(key, shape):
        half = (shape[0] // 2, *shape[1:])
        return inv.AdditiveCoupling(make(key, half), swap=shape[0] % 4 == 0)

    return build


RESIDUALS: list[LayerEntry] = [
    LayerEntry(
        "AdditiveCoupling(GELU)",
        "invertible",
        _coupling_with(_gelu_mlp),
        shapes(channel_multiple=2, images=False),
    ),
    LayerEntry(
        "AdditiveCoupling(LayerNorm)",
        "invertible",
        _coupling_with(_layer_norm_mlp),
        shapes(channel_multiple=2, images=False),
    ),
    LayerEntry(
        "AdditiveCoupling(GroupNorm)",
        "invertible",
        _coupling_with(_group_norm_conv),
        shapes(channel_multiple=2, vectors=False),
    ),
]
