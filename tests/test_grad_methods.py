"""Method-specific properties: the forward gradient's statistics, errors, float32."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import invertible as inv
from helpers import (
    assert_close,
    cast,
    mlp_couplings,
    relative_error,
    squared_loss,
    to_float64,
)
from invertible import grad as G


def _small_model():
    model = mlp_couplings(3, features=4, width=8, key=jr.key(0))
    return to_float64(model)


def test_projected_forward_gradient_is_unbiased():
    # Each estimate (g·v)v, v ~ N(0, I), has mean g and per-coordinate variance
    # |g|^2 + g_i^2 <= 2|g|^2. The mean of K estimates is within 5 standard
    # deviations, 5 sqrt(2/K)|g|, of g in every coordinate (a miss has probability
    # below 1e-5 per coordinate; the keys are fixed, so the test is deterministic).
    model, x = _small_model(), jr.normal(jr.key(1), (3, 4), jnp.float64)
    exact = eqx.filter_jit(eqx.filter_grad(squared_loss))(model, x)
    k = 4000
    estimate = G.projected_forward_grad(squared_loss, num_tangents=k)(
        model, x, tangent_key=jr.key(2)
    )
    flat_exact = jnp.concatenate([a.ravel() for a in jax.tree.leaves(exact)])
    flat_est = jnp.concatenate([a.ravel() for a in jax.tree.leaves(estimate)])
    bound = 5 * jnp.sqrt(2 / k) * jnp.linalg.norm(flat_exact)
    assert jnp.max(jnp.abs(flat_est - flat_exact)) < bound
    # ...and one tangent is an unbiased but noisy estimate, not the gradient.
    one = G.projected_forward_grad(squared_loss)(model, x, tangent_key=jr.key(3))
    flat_one = jnp.concatenate([a.ravel() for a in jax.tree.leaves(one)])
    assert not jnp.allclose(flat_one, flat_exact, rtol=1e-3)


def test_moonwalk_refuses_non_submersive_layers():
    model = inv.Sequential([inv.LeakyReLU(0.5), inv.ReLU()])
    with pytest.raises(ValueError, match="ReLU.*mixed_grad"):
        G.moonwalk_grad(lambda m, x: jnp.sum(m(x)))(model, jnp.ones(4))


def test_reversible_refuses_non_invertible_layers():
    model = inv.Sequential([inv.LeakyReLU(0.5), inv.ChannelPad(6)])
    with pytest.raises(TypeError, match="ChannelPad.*inverse"):
        G.reversible_grad(lambda m, x: jnp.sum(m(x)))(model, jnp.ones(4))


# One segment; and one per layer, the first changing the shape (a segment's repair
# then starts at another shape than the chain's).
@pytest.mark.parametrize("anchor_every", ["auto", 1])
def test_mixed_handles_fragments_inside_chains(anchor_every):
    model = inv.Sequential([inv.ChannelPad(6), inv.ReLU(), inv.LeakyReLU(0.3)])
    x = jr.normal(jr.key(0), (5, 4), jnp.float64)
    loss = lambda m, x: jnp.sum(jnp.sin(jax.vmap(m)(x)))
    grads, report = eqx.filter_jit(
        G.mixed_grad(loss, anchor_every=anchor_every, report=True)
    )(model, x)
    assert len(report.chains[0].drift) == (1 if anchor_every == "auto" else 3)
    assert_close(
        grads,
        eqx.filter_jit(eqx.filter_grad(loss))(model, x),
    )


def test_float32_mixed_tracks_backprop_at_depth():
    # The vijp recursion multiplies round-off by inverse Jacobians; with its default
    # anchors, Mixed's float32 error must stay within 3x backprop's at depth 32.
    depth = 32
    model64 = to_float64(mlp_couplings(depth, features=16, width=32, key=jr.key(4)))
    x64 = jr.normal(jr.key(5), (8, 16), jnp.float64)
    oracle = eqx.filter_jit(eqx.filter_grad(squared_loss))(model64, x64)
    model32 = cast(model64, jnp.float32)
    x32 = x64.astype(jnp.float32)
    backprop = relative_error(
        eqx.filter_jit(eqx.filter_grad(squared_loss))(model32, x32), oracle
    )
    mixed = relative_error(
        eqx.filter_jit(G.mixed_grad(squared_loss))(model32, x32), oracle
    )
    assert backprop < 1e-4
    assert mixed <= 3 * backprop, (mixed, backprop)


# The transforms that differentiate invertible chains by their own rule.
CHAIN_TRANSFORMS = [
    G.mixed_grad,
    G.moonwalk_grad,
    G.reversible_grad,
    G.checkpointed_grad,
]


class _TwoChains(eqx.Module):
    first: inv.Sequential
    inner: inv.Sequential  # a chain inside a coupling's residual, inside `second`
    second: inv.ScannedSequential
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.inner = inv.Sequential([inv.ActNorm(2), inv.Asinh()])
        residual = inv.Sequential([inv.ActNorm(2), inv.Asinh()])
        self.first = inv.Sequential(
            [
                inv.AdditiveCoupling(residual, swap=True),
                inv.LeakyReLU(0.3),
                inv.AffineCoupling(eqx.nn.MLP(2, 4, 8, 1, key=k1)),
            ]
        )
        make = lambda k: inv.AdditiveCoupling(eqx.nn.MLP(2, 2, 8, 1, key=k), swap=True)
        self.second = inv.ScannedSequential(eqx.filter_vmap(make)(jr.split(k2, 3)))
        self.head = eqx.nn.Linear(4, 2, key=k3)
        del k4

    def __call__(self, x):
        stem = jnp.tanh(x) + self.inner(x[:2]).sum()  # the inner chain, called alone
        y = self.second(self.first(stem))
        # A chain parameter used outside the chain too: gradients must add up.
        shared = self.first.layers[0].residual.layers[0].log_scale
        return self.head(y) * jnp.exp(shared).sum()


@pytest.mark.parametrize("transform", CHAIN_TRANSFORMS, ids=lambda t: t.__name__)
def test_several_nested_and_shared_chains(transform):
    model = to_float64(_TwoChains(jr.key(0)))
    # Non-trivial ActNorm parameters, so the shared one matters.
    model = eqx.tree_at(
        lambda m: m.first.layers[0].residual.layers[0].log_scale,
        model,
        jnp.array([0.3, -0.2]),
    )
    x = jr.normal(jr.key(1), (5, 4), jnp.float64)
    loss = lambda m, x: jnp.mean(jnp.sin(jax.vmap(m)(x)))
    expected = eqx.filter_jit(eqx.filter_grad(loss))(model, x)
    assert_close(eqx.filter_jit(transform(loss))(model, x), expected)


def test_optax_training_loop_matches_backprop():
    import optax

    model = to_float64(_TwoChains(jr.key(2)))
    x = jr.normal(jr.key(3), (6, 4), jnp.float64)
    target = jr.normal(jr.key(4), (6, 2), jnp.float64)
    loss = lambda m, x, t: jnp.mean((jax.vmap(m)(x) - t) ** 2)
    optimiser = optax.adam(1e-2)

    def train(grad_transform):
        @eqx.filter_jit
        def step(model, state):
            grads = grad_transform(loss)(model, x, target)
            params = eqx.filter(model, eqx.is_inexact_array)
            updates, state = optimiser.update(grads, state, params)
            return eqx.apply_updates(model, updates), state

        m, state = model, optimiser.init(eqx.filter(model, eqx.is_inexact_array))
        for _ in range(5):
            m, state = step(m, state)
        return m

    arrays = lambda m: eqx.filter(m, eqx.is_inexact_array)
    assert_close(arrays(train(G.mixed_grad)), arrays(train(eqx.filter_grad)), rtol=1e-9)


class _ScaledReLU(inv.AbstractNonSubmersive):
    """A non-submersive layer with a parameter, so that it can be stacked."""

    log_scale: jax.Array

    def __call__(self, x):
        return jnp.where(x > 0, x, 0.0) * jnp.exp(self.log_scale)

    def fragment(self, x, ct_y):
        return jnp.where(x > 0, 0.0, ct_y)

    def inverse_jvp(self, x, ct_x, fragment):
        scale = jnp.exp(self.log_scale)
        return self(x), jnp.where(x > 0, ct_x / scale, fragment)


@pytest.mark.parametrize("anchor_every", [None, 2, 3])
def test_stacked_fragments_with_segments_and_tail(anchor_every):
    # 5 layers in segments of 2 or 3 leave a tail: every path of the nested scans.
    stack = _ScaledReLU(jnp.linspace(-0.3, 0.4, 5))
    model = inv.ScannedSequential(stack)
    x = jr.normal(jr.key(0), (4, 3), jnp.float64) + 0.5
    loss = lambda m, x: jnp.sum(jnp.cos(jax.vmap(m)(x)))
    got = eqx.filter_jit(G.mixed_grad(loss, anchor_every=anchor_every))(model, x)
    assert_close(got, eqx.filter_jit(eqx.filter_grad(loss))(model, x))


@pytest.mark.parametrize("transform", CHAIN_TRANSFORMS, ids=lambda t: t.__name__)
def test_frozen_parameters_by_partition(transform):
    # Equinox's idiom: differentiate one half of the model, pass the other as a
    # second argument, `eqx.combine` them inside the loss.
    model = to_float64(_TwoChains(jr.key(5)))
    frozen_spec = jax.tree.map(eqx.is_inexact_array, model)
    frozen_spec = eqx.tree_at(lambda m: m.head, frozen_spec, replace_fn=lambda h: False)
    trainable, frozen = eqx.partition(model, frozen_spec)
    x = jr.normal(jr.key(6), (3, 4), jnp.float64)

    def loss(trainable, frozen, x):
        return jnp.mean(jnp.sin(jax.vmap(eqx.combine(trainable, frozen))(x)))

    expected = eqx.filter_jit(eqx.filter_grad(loss))(trainable, frozen, x)
    assert_close(transform(loss)(trainable, frozen, x), expected)


@pytest.mark.parametrize("transform", CHAIN_TRANSFORMS, ids=lambda t: t.__name__)
def test_scanned_chain_nested_in_a_sequential(transform):
    make = lambda k: inv.AdditiveCoupling(eqx.nn.MLP(2, 2, 8, 1, key=k), swap=True)
    stack = inv.ScannedSequential(eqx.filter_vmap(make)(jr.split(jr.key(7), 3)))
    model = to_float64(inv.Sequential([inv.LeakyReLU(0.5), stack, inv.Asinh(), stack]))
    x = jr.normal(jr.key(8), (3, 4), jnp.float64)
    loss = lambda m, x: jnp.sum(jnp.sin(jax.vmap(m)(x)))
    assert_close(
        eqx.filter_jit(transform(loss))(model, x),
        eqx.filter_jit(eqx.filter_grad(loss))(model, x),
    )
