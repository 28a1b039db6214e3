"""Normalizing flows: every gradient transform gives backprop's gradients of the
negative log-likelihood `-(log p_base(z) + log_det)`, log-dets, factored-out
densities and conditions included, and the chains invert with their log-dets.

One compile per flow: the flow's gradients by every method and its round trips
come from one compiled function (at LLVM level 0, see flow_helpers), checked by
one test."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import invertible as inv
from flow_helpers import compiled, randomised
from helpers import assert_close, to_float64
from invertible import grad as G

log_normal = inv.layers.standard_normal_log_density

STRATEGIES = ("residuals", "recompute", "inputs")
TRANSFORMS = {
    "mixed": G.mixed_grad,
    **{f"mixed({s})": G.mixed_grad(strategy=s) for s in STRATEGIES},
    "moonwalk": G.moonwalk_grad,
    "reversible": G.reversible_grad,
    "checkpointed": G.checkpointed_grad,
}


def _conv(key, c_in, c_out, hidden=4):
    """A small conv conditioner: one half (and a condition) to a log-scale and a
    shift."""
    k1, k2 = jr.split(key)
    return eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(c_in, hidden, 3, padding=1, key=k1),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Conv2d(hidden, c_out, 3, padding=1, key=k2),
        ]
    )


def _step(key, channels, *, condition=0, swap=False):
    """One Glow step: ActNorm, an invertible 1x1 convolution, an affine coupling."""
    k_conv, k_net = jr.split(key)
    half = channels // 2
    return [
        inv.ActNorm(channels),
        inv.Invertible1x1Conv(channels, key=k_conv),
        inv.AffineCoupling(_conv(k_net, half + condition, channels), swap=swap),
    ]


def _steps(key, channels, depth, **kwargs):
    keys = jr.split(key, depth)
    return [
        layer
        for i, k in enumerate(keys)
        for layer in _step(k, channels, swap=bool(i % 2), **kwargs)
    ]


class Conditional(eqx.Module):
    """A class-conditional flow: the embedding of the label is every coupling's
    condition, so the embedding is trained through the chain."""

    embedding: eqx.nn.Embedding
    chain: inv.Sequential


EMBEDDING = 2
CLASSES = 3


def single_scale(key):
    """4x4x4 images, two steps."""
    return inv.Sequential(_steps(key, 4, 2))


def multi_scale(key):
    """2x4x4 images: squeeze to 8x2x2, a step, factor half out, a coupling on
    4x2x2."""
    k1, k2 = jr.split(key)
    return inv.Sequential(
        [
            inv.Squeeze(),
            *_step(k1, 8),
            inv.FactorOut(4),
            inv.AffineCoupling(_conv(k2, 2, 4), swap=True),
        ]
    )


def conditional(key):
    """4x2x2 images: a step and a second coupling, conditioned on a class
    embedding."""
    k_embed, k_step, k_coupling = jr.split(key, 3)
    embedding = eqx.nn.Embedding(CLASSES, EMBEDDING, key=k_embed)
    coupling = inv.AffineCoupling(_conv(k_coupling, 2 + EMBEDDING, 4), swap=True)
    chain = inv.Sequential([*_step(k_step, 4, condition=EMBEDDING), coupling])
    return Conditional(embedding, chain)


def scanned_vectors(key, features=6, depth=3):
    """A ScannedSequential of blocks (ActNorm, InvertibleLinear, AffineCoupling)."""
    half = features // 2

    def block(k):
        k_lin, k_mlp = jr.split(k)
        mlp = eqx.nn.MLP(half, features, 8, 1, activation=jnp.tanh, key=k_mlp)
        return inv.Sequential(
            [
                inv.ActNorm(features),
                inv.InvertibleLinear(features, key=k_lin),
                inv.AffineCoupling(mlp, swap=True),
            ]
        )

    return inv.ScannedSequential(eqx.filter_vmap(block)(jr.split(key, depth)))


def _log_prob(model, x, label):
    if isinstance(model, Conditional):
        z, log_det = model.chain.forward_and_log_det(
            x, condition=model.embedding(label)
        )
    else:
        z, log_det = model.forward_and_log_det(x)
    return log_normal(z) + log_det


def nll(model, x, labels):
    """The mean negative log-likelihood of a batch, in nats."""
    return -jnp.mean(jax.vmap(_log_prob, in_axes=(None, 0, 0))(model, x, labels))


def _chain(model):
    return model.chain if isinstance(model, Conditional) else model


def _round_trip(chain, x, condition):
    """For one example: `(x again, forward + inverse log-dets, the chain's log-det
    - its layers' log-dets - the factored parts' densities)`; the last two are 0.

    FactorOut's `inverse` needs the part it dropped: a multi-scale chain is
    inverted segment by segment, with the factored parts of the forward pass put
    back (as a sampler puts back draws from the base density)."""
    options = {} if condition is None else {"condition": condition}
    y, chain_log_det = chain.forward_and_log_det(x, **options)
    layers = list(chain)
    cuts = [i for i, layer in enumerate(layers) if isinstance(layer, inv.FactorOut)]
    if not cuts:
        back, inverse_log_det = chain.inverse_and_log_det(y, **options)
        return back, chain_log_det + inverse_log_det, jnp.zeros_like(chain_log_det)
    bounds = [0, *[c for cut in cuts for c in (cut, cut + 1)], len(layers)]
    segments = [chain[a:b] for a, b in zip(bounds[::2], bounds[1::2], strict=True)]
    forward, inverse, densities, factored, h = 0.0, 0.0, 0.0, [], x
    for i, segment in enumerate(segments):
        h, log_det = segment.forward_and_log_det(h)
        forward += log_det
        if i < len(cuts):
            factored.append(layers[cuts[i]].factored(h))
            densities += log_normal(factored[-1])
            h = layers[cuts[i]](h)
    for i in reversed(range(len(segments))):
        h, log_det = segments[i].inverse_and_log_det(h)
        inverse += log_det
        if i > 0:
            h = layers[cuts[i - 1]].inverse(h, z=factored[i - 1])
    return h, forward + inverse, chain_log_det - forward - densities


def _results(model, x, labels):
    chain = _chain(model)
    conditions = (
        jax.vmap(model.embedding)(labels) if isinstance(model, Conditional) else None
    )
    back, log_dets, accumulated = jax.vmap(_round_trip, in_axes=(None, 0, 0))(
        chain, x, conditions
    )
    return dict(
        backprop=eqx.filter_grad(nll)(model, x, labels),
        grads={name: t(nll)(model, x, labels) for name, t in TRANSFORMS.items()},
        back=back,
        log_dets=log_dets,
        accumulated=accumulated,
    )


FLOWS = {
    "single-scale": (single_scale, (4, 4, 4)),
    "multi-scale": (multi_scale, (2, 4, 4)),
    "conditional": (conditional, (4, 2, 2)),
    "scanned-vectors": (scanned_vectors, (6,)),
}
BATCH = 3


def _check_all(out) -> list[str]:
    """The methods whose gradients are not backprop's."""
    wrong = []
    for method, grads in out["grads"].items():
        try:
            assert_close(grads, out["backprop"])
        except AssertionError as error:
            wrong.append(f"{method}: {error}")
    return wrong


# One test per flow, checking everything from one compile: under pytest-xdist the
# tests of one flow could otherwise land on both workers and compile it twice.
@pytest.mark.parametrize("flow", list(FLOWS))
def test_flow(flow):
    make, shape = FLOWS[flow]
    build = lambda k: to_float64(randomised(make(k), jr.fold_in(k, 1)))
    model = compiled(build, jr.key(0))
    x = jr.normal(jr.key(2), (BATCH, *shape))
    labels = jnp.arange(BATCH) % CLASSES
    out = compiled(_results, model, x, labels)

    # Every method's gradients of the NLL are backprop's.
    wrong = _check_all(out)
    assert not wrong, wrong
    # The chain inverts, its log-dets cancel, and it adds each factored part's
    # density once.
    assert_close(out["back"], x)
    assert_close(out["log_dets"], jnp.zeros(BATCH))
    assert_close(out["accumulated"], jnp.zeros(BATCH))
    if flow == "conditional":
        # The embedding is trained through the condition: every class is drawn,
        # every entry moves.
        assert float(jnp.min(jnp.abs(out["backprop"].embedding.weight))) > 0
