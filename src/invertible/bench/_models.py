"""The benchmark networks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import invertible as inv


def lecun_normal(model: eqx.Module, key) -> eqx.Module:
    """Re-draw every `eqx.nn.Linear`/`Conv` weight from N(0, 1/fan_in), biases 0."""
    is_layer = lambda m: isinstance(m, eqx.nn.Linear | eqx.nn.Conv)
    layers = [m for m in jax.tree.leaves(model, is_leaf=is_layer) if is_layer(m)]
    keys = iter(jr.split(key, max(len(layers), 1)))

    def redraw(layer):
        fan_in = layer.weight[0].size
        weight = jr.normal(next(keys), layer.weight.shape) / jnp.sqrt(fan_in)
        layer = eqx.tree_at(lambda m: m.weight, layer, weight)
        if layer.bias is not None:
            layer = eqx.tree_at(lambda m: m.bias, layer, jnp.zeros_like(layer.bias))
        return layer

    return jax.tree.map(
        lambda m: redraw(m) if is_layer(m) else m, model, is_leaf=is_layer
    )


def mlp_couplings(
    depth: int,
    *,
    features: int = 256,
    width: int = 512,
    activation=jax.nn.relu,
    scanned: bool = False,
    key=None,
):
    """Additive couplings `y = (x2 + MLP(x1), x1)`, MLP with one hidden layer."""
    key = jr.key(0) if key is None else key

    def coupling(key):
        k_mlp, k_init = jr.split(key)
        half = features // 2
        mlp = eqx.nn.MLP(half, half, width, 1, activation=activation, key=k_mlp)
        return inv.AdditiveCoupling(lecun_normal(mlp, k_init), swap=True)

    keys = jr.split(key, depth)
    if scanned:
        return inv.ScannedSequential(eqx.filter_vmap(coupling)(keys))
    return inv.Sequential([coupling(k) for k in keys])


class ConvResidual(eqx.Module):
    """conv 3x3 -> activation -> conv 3x3: the residual of the paper's RevNet."""

    first: eqx.nn.Conv2d
    second: eqx.nn.Conv2d
    activation: object = eqx.field(static=True)

    def __init__(self, channels: int, hidden: int, activation, key):
        k1, k2 = jr.split(key)
        self.first = eqx.nn.Conv2d(channels, hidden, 3, padding=1, key=k1)
        self.second = eqx.nn.Conv2d(hidden, channels, 3, padding=1, key=k2)
        self.activation = activation

    def __call__(self, x):
        return self.second(self.activation(self.first(x)))


class PaddedRevNet(eqx.Module):
    pad: inv.ChannelPad
    body: inv.Sequential

    def __call__(self, x):
        return self.body(self.pad(x))


def conv_revnet(
    layers_per_block: int,
    *,
    in_channels: int = 3,
    padded_channels: int = 8,
    hidden: int = 16,
    activation=jax.nn.relu,
    key=None,
):
    """The paper's RevNet: zero-pad the channels (the paper's preprocessing, here a
    stem outside the chain so that every method runs on the same chain), then 3
    blocks of additive couplings with conv residuals, a `Squeeze` (i-RevNet ψ)
    between blocks."""
    key = jr.key(0) if key is None else key
    layers = []
    channels = padded_channels
    keys = iter(jr.split(key, 3 * layers_per_block))
    for block in range(3):
        if block:
            layers.append(inv.Squeeze())
            channels *= 4
        for _ in range(layers_per_block):
            k_res, k_init = jr.split(next(keys))
            res = ConvResidual(channels // 2, hidden, activation, k_res)
            layers.append(inv.AdditiveCoupling(lecun_normal(res, k_init), swap=True))
    return PaddedRevNet(inv.ChannelPad(padded_channels), inv.Sequential(layers))


def squared_loss(model, x):
    return jnp.mean(jax.vmap(model)(x) ** 2)
