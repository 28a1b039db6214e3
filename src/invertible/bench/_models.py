"""The benchmark networks.

Weights are drawn with NumPy into a skeleton built by `eqx.filter_eval_shape`: with
`jax.random`, every new weight shape is a new XLA program, and on a small CPU each
compile takes about a second, which made building a RevNet take longer than
measuring it.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import invertible as inv


def _rng(key) -> np.random.Generator:
    """A NumPy generator from an int seed or a `jax.random` key."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = np.asarray(jax.random.key_data(key)).ravel().tolist()
    return np.random.default_rng(key)


def lecun_normal(model, key=0):
    """Draw every `eqx.nn.Linear`/`Conv` weight from N(0, 1/fan_in), biases 0
    (norm layers: weight 1, bias 0).

    `model` may be a skeleton from `eqx.filter_eval_shape` (shapes only) and may
    hold stacked layers (leading axes from `eqx.filter_vmap`); `key` is an int seed
    or a `jax.random` key. Every inexact leaf must belong to such a layer.
    """
    rng = _rng(key)
    norms = eqx.nn.LayerNorm | eqx.nn.GroupNorm
    is_layer = lambda m: isinstance(m, eqx.nn.Linear | eqx.nn.Conv | norms)

    def draw(layer):
        if isinstance(layer, norms):  # the identity affine map, as initialised
            ones = lambda a: jnp.ones(a.shape, "float32")
            zeros = lambda a: jnp.zeros(a.shape, "float32")
            affine = (ones(layer.weight), zeros(layer.bias))
            return eqx.tree_at(lambda m: (m.weight, m.bias), layer, affine)
        # Trailing axes of the weight a single output unit reads: (in,) for a
        # Linear, (in, *kernel) for a Conv; leading axes beyond are stacking.
        linear = isinstance(layer, eqx.nn.Linear)
        reads = 1 if linear else 1 + layer.num_spatial_dims
        fan_in = math.prod(layer.weight.shape[-reads:])
        weight = rng.standard_normal(layer.weight.shape) / math.sqrt(fan_in)
        layer = eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight, "float32"))
        if layer.bias is not None:
            bias = jnp.zeros(layer.bias.shape, "float32")
            layer = eqx.tree_at(lambda m: m.bias, layer, bias)
        return layer

    model = jax.tree.map(
        lambda m: draw(m) if is_layer(m) else m, model, is_leaf=is_layer
    )
    left = [x for x in jax.tree.leaves(model) if isinstance(x, jax.ShapeDtypeStruct)]
    if left:
        raise ValueError(f"lecun_normal: {len(left)} arrays are not in Linear/Conv")
    return model


def _chain(make, depth: int, scanned: bool, key):
    """`depth` layers (or blocks) from `make(key)`, as a `ScannedSequential` or a
    `Sequential`, weights drawn by `lecun_normal`."""
    shape_key = jax.random.key(0)  # eval_shape reads only its shape
    if scanned:
        stack = lambda k: eqx.filter_vmap(make)(jax.random.split(k, depth))
        skeleton = eqx.filter_eval_shape(stack, shape_key)
        return inv.ScannedSequential(lecun_normal(skeleton, key))
    layers = [eqx.filter_eval_shape(make, shape_key) for _ in range(depth)]
    return lecun_normal(inv.Sequential(layers), key)


class PreNorm(eqx.Module):
    """`f(LayerNorm(x))`: a pre-LayerNorm residual on a vector, or on each token of
    a `(tokens, features)` sequence."""

    norm: eqx.nn.LayerNorm
    f: object

    def __call__(self, x, *, key=None):
        return self.f(jax.vmap(self.norm)(x) if x.ndim == 2 else self.norm(x))


class Tokenwise(eqx.Module):
    """A per-vector module applied to every token of a sequence."""

    f: object

    def __call__(self, x, *, key=None):
        return jax.vmap(self.f)(x)


class SelfAttention(eqx.Module):
    attention: eqx.nn.MultiheadAttention

    def __call__(self, x, *, key=None):
        return self.attention(x, x, x)


class GroupNormConv(eqx.Module):
    """GroupNorm -> conv 3x3 -> ReLU -> conv 3x3, on one half of an image."""

    norm: eqx.nn.GroupNorm
    first: eqx.nn.Conv2d
    second: eqx.nn.Conv2d

    def __init__(self, channels: int, hidden: int, key):
        k1, k2 = jax.random.split(key)
        self.norm = eqx.nn.GroupNorm(min(4, channels), channels)
        self.first = eqx.nn.Conv2d(channels, hidden, 3, padding=1, key=k1)
        self.second = eqx.nn.Conv2d(hidden, channels, 3, padding=1, key=k2)

    def __call__(self, x, *, key=None):
        return self.second(jax.nn.relu(self.first(self.norm(x))))


def mlp_couplings(
    depth: int,
    *,
    features: int = 256,
    width: int = 512,
    activation=jax.nn.relu,
    layer_norm: bool = False,
    scanned: bool = False,
    key=0,
):
    """Additive couplings `y = (x2 + MLP(x1), x1)`, MLP with one hidden layer
    (behind a LayerNorm with `layer_norm`)."""
    half = features // 2

    def coupling(key):
        mlp = eqx.nn.MLP(half, half, width, 1, activation=activation, key=key)
        residual = PreNorm(eqx.nn.LayerNorm(half), mlp) if layer_norm else mlp
        return inv.AdditiveCoupling(residual, swap=True)

    return _chain(coupling, depth, scanned, key)


def conv_couplings(
    depth: int, *, channels: int = 16, hidden: int = 32, scanned=False, key=0
):
    """Additive couplings on images with GroupNorm conv residuals."""

    def coupling(key):
        residual = GroupNormConv(channels // 2, hidden, key)
        return inv.AdditiveCoupling(residual, swap=True)

    return _chain(coupling, depth, scanned, key)


def transformer(
    blocks: int,
    *,
    features: int = 128,
    heads: int = 4,
    expansion: int = 4,
    scanned: bool = False,
    key=0,
):
    """A reversible transformer on `(tokens, features)`: two streams of
    `features / 2`, each block an attention coupling then an MLP coupling (GELU),
    each residual behind a LayerNorm. Scanned, a stack of such blocks."""
    half = features // 2

    def block(key):
        k1, k2 = jax.random.split(key)
        attention = eqx.nn.MultiheadAttention(heads, half, key=k1)
        mlp = eqx.nn.MLP(half, half, expansion * half, 1, jax.nn.gelu, key=k2)
        return inv.Sequential(
            [
                inv.AdditiveCoupling(
                    PreNorm(eqx.nn.LayerNorm(half), SelfAttention(attention)), axis=-1
                ),
                inv.AdditiveCoupling(
                    PreNorm(eqx.nn.LayerNorm(half), Tokenwise(mlp)), axis=-1, swap=True
                ),
            ]
        )

    if scanned:
        return _chain(block, blocks, True, key)
    chain = _chain(block, blocks, False, key)
    return inv.Sequential(chain.layers)


@dataclasses.dataclass(frozen=True)
class Residual:
    """A residual kind of the memory and time benchmarks: `build(layers, scanned,
    size)` is a chain of `layers` couplings (`Sequential` or `ScannedSequential`),
    `example(size)` one example's input shape."""

    label: str
    build: Callable[[int, bool, dict], Any]
    example: Callable[[dict], tuple[int, ...]]
    relu: bool  # has ReLU units, so that Mixed's "bits" strategy applies
    per_entry: int = 1  # couplings per entry of the stacked chain


def _mlp_kind(label: str, **options) -> Residual:
    def build(layers, scanned, size):
        sizes = dict(features=size["features"], width=size["width"])
        return mlp_couplings(layers, scanned=scanned, **sizes, **options)

    relu = options.get("activation", jax.nn.relu) is jax.nn.relu
    return Residual(label, build, lambda size: (size["features"],), relu)


def _conv_build(layers, scanned, size):
    sizes = dict(channels=size["channels"], hidden=size["hidden"])
    return conv_couplings(layers, scanned=scanned, **sizes)


def _transformer_build(layers, scanned, size):
    if layers % 2:
        raise ValueError(f"transformer: {layers} couplings is not a whole block count")
    sizes = dict(features=size["features"], heads=size["heads"])
    return transformer(layers // 2, scanned=scanned, **sizes)


# Each kind's `size` keys: MLPs `features`, `width`; conv `channels`, `image`,
# `hidden`; transformer `tokens`, `features`, `heads` (and `batch` for all).
RESIDUALS = {
    "relu": _mlp_kind("MLP couplings, ReLU"),
    "tanh": _mlp_kind("MLP couplings, tanh", activation=jnp.tanh),
    "gelu": _mlp_kind("MLP couplings, GELU", activation=jax.nn.gelu),
    "layernorm": _mlp_kind("pre-LayerNorm MLP couplings (ReLU)", layer_norm=True),
    "groupnorm conv": Residual(
        "GroupNorm conv couplings",
        _conv_build,
        lambda size: (size["channels"], size["image"], size["image"]),
        relu=True,
    ),
    "transformer": Residual(
        "reversible transformer (attention + GELU MLP couplings, pre-LayerNorm)",
        _transformer_build,
        lambda size: (size["tokens"], size["features"]),
        relu=False,
        per_entry=2,
    ),
}


class ConvResidual(eqx.Module):
    """conv 3x3 -> activation -> conv 3x3: the residual of the paper's RevNet."""

    first: eqx.nn.Conv2d
    second: eqx.nn.Conv2d
    activation: object = eqx.field(static=True)

    def __init__(self, channels: int, hidden: int, activation, key):
        k1, k2 = jax.random.split(key)
        self.first = eqx.nn.Conv2d(channels, hidden, 3, padding=1, key=k1)
        self.second = eqx.nn.Conv2d(hidden, channels, 3, padding=1, key=k2)
        self.activation = activation

    def __call__(self, x):
        return self.second(self.activation(self.first(x)))


class RevNet(eqx.Module):
    """The paper's RevNet (Section 6.1): channels zero-padded (the paper's
    preprocessing, here a stem outside the chains), then 3 blocks of additive
    couplings `y2 = x2 + conv(act(conv(x1)))`, an i-RevNet `Squeeze` (space to
    channels: 4x the channels, half the height and width) between blocks.

    Each block is an `invertible.ScannedSequential`, a chain of its own: compile
    time then does not grow with depth, which is what makes the paper's depths (and
    the search for the deepest network under a memory budget) affordable on a CPU.
    """

    pad: inv.ChannelPad
    blocks: tuple[inv.ScannedSequential, ...]
    squeeze: inv.Squeeze

    def __call__(self, x):
        x = self.pad(x)
        for i, block in enumerate(self.blocks):
            x = block(self.squeeze(x) if i else x)
        return x


def conv_revnet(
    layers_per_block: int,
    *,
    padded_channels: int = 8,
    hidden: int = 16,
    activation=jax.nn.relu,
    key=0,
) -> RevNet:
    """A `RevNet` with `hidden` channels inside each residual, weights drawn by
    `lecun_normal` (`key`: an int seed or a `jax.random` key)."""

    def block(channels: int):
        def coupling(key):
            residual = ConvResidual(channels // 2, hidden, activation, key)
            return inv.AdditiveCoupling(residual, swap=True)

        def stack(key):
            return eqx.filter_vmap(coupling)(jax.random.split(key, layers_per_block))

        return eqx.filter_eval_shape(stack, jax.random.key(0))

    # Shapes first, all weights drawn at once, then the chains (which need arrays).
    skeletons = [block(padded_channels * 4**i) for i in range(3)]
    blocks = tuple(map(inv.ScannedSequential, lecun_normal(skeletons, key)))
    return RevNet(inv.ChannelPad(padded_channels), blocks, inv.Squeeze())


class RevNetClassifier(eqx.Module):
    """A `RevNet`, global average pooling, a linear head."""

    features: RevNet
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(jnp.mean(self.features(x), axis=(1, 2)))


def revnet_classifier(
    layers_per_block: int, *, padded_channels: int, classes: int, key=0, **kwargs
) -> RevNetClassifier:
    """`conv_revnet` (`kwargs` go to it) with a linear head on its pooled output."""
    features = conv_revnet(
        layers_per_block, padded_channels=padded_channels, key=key, **kwargs
    )
    # After two squeezes the body has 16x the padded channels.
    head = eqx.filter_eval_shape(
        eqx.nn.Linear, 16 * padded_channels, classes, key=jax.random.key(0)
    )
    head_seed = int(_rng(key).integers(2**31)) + 1  # not the body's first draws
    return RevNetClassifier(features, lecun_normal(head, head_seed))


def squared_loss(model, x):
    return jnp.mean(jax.vmap(model)(x) ** 2)
