"""Real residuals: keys (dropout), state (batch norm), a coupling axis, blocks of
several layers in a stack, layers outside chains and chains rebuilt in the loss.

Every case: the methods' gradients equal `eqx.filter_grad`'s with the same key and
state, float64, rtol 1e-10.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import invertible as inv
from helpers import assert_close, to_float64
from invertible import grad as G

F, HALF, BATCH = 6, 3, 5
KEYED = {
    "mixed": G.mixed_grad,
    "mixed(recompute)": G.filter_grad(method=G.Mixed(strategy="recompute")),
    "mixed(inputs)": G.filter_grad(method=G.Mixed(strategy="inputs")),
    "moonwalk": G.moonwalk_grad(chunk_size=3),
    "reversible": G.reversible_grad,
    "checkpointed": G.checkpointed_grad,
}


def _dropout_mlp(key):
    k1, k2 = jr.split(key)
    return eqx.nn.Sequential(
        [
            eqx.nn.Linear(HALF, 8, key=k1),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Dropout(0.3),
            eqx.nn.Linear(8, HALF, key=k2),
        ]
    )


def _dropout_chain(depth=4):
    keys = jr.split(jr.key(0), depth)
    return to_float64(
        inv.Sequential(
            [
                inv.AdditiveCoupling(_dropout_mlp(k), swap=i % 2 == 1)
                for i, k in enumerate(keys)
            ]
        )
    )


X = jr.normal(jr.key(1), (BATCH, F), jnp.float64)


def _keyed_loss(model, x, key):
    keys = jr.split(key, x.shape[0])  # per-example keys under vmap
    return jnp.mean(jnp.sin(jax.vmap(lambda x, k: model(x, key=k))(x, keys)))


@pytest.mark.parametrize("method", sorted(KEYED))
def test_dropout_residuals_replay_the_same_randomness(method):
    model, key = _dropout_chain(), jr.key(7)
    want = eqx.filter_jit(eqx.filter_grad(_keyed_loss))(model, X, key)
    got = eqx.filter_jit(KEYED[method](_keyed_loss))(model, X, key)
    assert_close(got, want)
    # The key matters: another key gives other gradients.
    other = eqx.filter_jit(eqx.filter_grad(_keyed_loss))(model, X, jr.key(8))
    first = lambda g: g.layers[0].residual.layers[0].weight
    assert not jnp.allclose(first(other), first(want))


def test_dropout_in_a_scanned_chain():
    stack = eqx.filter_vmap(
        lambda k: to_float64(inv.AdditiveCoupling(_dropout_mlp(k)))
    )(jr.split(jr.key(2), 4))
    model, key = inv.ScannedSequential(stack), jr.key(3)
    want = eqx.filter_jit(eqx.filter_grad(_keyed_loss))(model, X, key)
    for method in ("mixed", "moonwalk", "reversible"):
        got = eqx.filter_jit(KEYED[method](_keyed_loss))(model, X, key)
        assert_close(got, want)


# ------------------------------------------------------------------------ state


def _batch_norm_chain(depth=3, inference=False):
    def coupling(key):
        k1, k2 = jr.split(key)
        return inv.AdditiveCoupling(
            eqx.nn.Sequential(
                [
                    eqx.nn.Linear(HALF, 8, key=k1),
                    eqx.nn.BatchNorm(8, axis_name="batch", inference=inference),
                    eqx.nn.Lambda(jnp.tanh),
                    eqx.nn.Linear(8, HALF, key=k2),
                ]
            ),
            swap=True,
        )

    keys = jr.split(jr.key(4), depth)
    model, state = eqx.nn.make_with_state(inv.Sequential)([coupling(k) for k in keys])
    return to_float64(model), to_float64(state)


def _stateful_loss(model, state, x):
    y, state = jax.vmap(
        model, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
    )(x, state)
    return jnp.mean(jnp.sin(y)), state


@pytest.mark.parametrize("inference", [False, True], ids=["training", "inference"])
@pytest.mark.parametrize(
    "method", ["mixed", "mixed(recompute)", "moonwalk", "reversible", "checkpointed"]
)
def test_batch_norm_state_under_every_method(method, inference):
    model, state = _batch_norm_chain(inference=inference)
    want, want_state = eqx.filter_jit(eqx.filter_grad(_stateful_loss, has_aux=True))(
        model, state, X
    )
    grad_fn = KEYED[method](_stateful_loss, has_aux=True)
    got, got_state = eqx.filter_jit(grad_fn)(model, state, X)
    assert_close(got, want)
    # Updated exactly once per step: the same running statistics as backprop's.
    assert_close(got_state, want_state)


# ------------------------------------------------------- axis, blocks, transformer


class _Attention(eqx.Module):
    attention: eqx.nn.MultiheadAttention
    norm: eqx.nn.LayerNorm

    def __call__(self, x):  # (tokens, features)
        h = jax.vmap(self.norm)(x)
        return self.attention(h, h, h)


class _TokenMLP(eqx.Module):
    mlp: eqx.nn.MLP
    norm: eqx.nn.LayerNorm

    def __call__(self, x):
        return jax.vmap(lambda t: self.mlp(self.norm(t)))(x)


def _block(key, features=4):
    k1, k2 = jr.split(key)
    half = features // 2
    attention = _Attention(
        eqx.nn.MultiheadAttention(2, half, key=k1), eqx.nn.LayerNorm(half)
    )
    mlp = _TokenMLP(
        eqx.nn.MLP(half, half, 8, 1, jax.nn.gelu, key=k2), eqx.nn.LayerNorm(half)
    )
    return inv.Sequential(
        [
            inv.AdditiveCoupling(attention, axis=-1),
            inv.AdditiveCoupling(mlp, axis=-1, swap=True),
        ]
    )


def _token_loss(model, x):
    return jnp.mean(jnp.sin(jax.vmap(model)(x)))


TOKENS = jr.normal(jr.key(5), (2, 3, 4), jnp.float64)  # (batch, tokens, features)
EXACT = {
    "mixed": G.mixed_grad,
    **{
        f"mixed({s})": G.filter_grad(method=G.Mixed(strategy=s))
        for s in ("residuals", "bits", "inputs", "recompute", "rebuild")
    },
    "moonwalk": G.moonwalk_grad(chunk_size=6),
    "reversible": G.reversible_grad,
    "checkpointed(segment_length=2)": G.checkpointed_grad(segment_length=2),
}


@pytest.mark.parametrize("method", sorted(EXACT))
def test_transformer_blocks_stacked_along_the_feature_axis(method):
    stack = eqx.filter_vmap(lambda k: to_float64(_block(k)))(jr.split(jr.key(6), 3))
    model = inv.ScannedSequential(stack)
    want = eqx.filter_jit(eqx.filter_grad(_token_loss))(model, TOKENS)
    got = eqx.filter_jit(EXACT[method](_token_loss))(model, TOKENS)
    assert_close(got, want)


# ------------------------------------------- layers outside chains, rebuilt chains


class _Doubled(inv.AbstractInvertible):
    """The identity with a vijp wrong by 2: shows whether a method's sweep ran."""

    def __call__(self, x, *, key=None):
        return x

    def inverse(self, y):
        return y

    def inverse_jvp(self, x, ct_x):
        return x, 2 * ct_x


def _plain_loss(model, x):
    return jnp.mean(jnp.sin(jax.vmap(model)(x)))


def test_a_chain_rebuilt_inside_the_loss_keeps_its_method():
    chain = _dropout_chain()
    chain = inv.Sequential([*chain.layers[:2], _Doubled(), *chain.layers[2:]])

    def rebuilt_loss(model, x):
        again = inv.Sequential(list(model.layers))
        return _plain_loss(lambda x: again(x, key=jr.key(0)), x)

    grad_fn = G.mixed_grad(rebuilt_loss, anchor_every=None, on_drift="ignore")
    got = eqx.filter_jit(grad_fn)(chain, X)
    want = eqx.filter_jit(eqx.filter_grad(rebuilt_loss))(chain, X)
    # The forward sweep ran: past the wrong vijp the cotangent is doubled.
    last = lambda g: g.layers[-1].residual.layers[0].weight
    assert not jnp.allclose(last(got), last(want))
    # Sliced and indexed chains keep a chain's own method too.
    marked = inv.Sequential(chain.layers, method=G.Moonwalk())
    assert marked[:2].method == G.Moonwalk() and marked[1:].method == G.Moonwalk()


def test_methods_are_hashable_values():
    assert G.Mixed(anchor_every=8) == G.Mixed(anchor_every=8)
    assert hash(G.Mixed(anchor_every=8)) == hash(G.Mixed(anchor_every=8))
    assert G.Mixed(anchor_every=8) != G.Mixed(anchor_every=4)
    chain = _dropout_chain()
    marked = inv.Sequential(chain.layers, method=G.Mixed(anchor_every=2))
    # The method is a leaf that is not an array: partition and combine of frozen
    # parameters keep it, and gradients have the model's structure (None there).
    params, static = eqx.partition(marked, eqx.is_inexact_array)
    assert eqx.combine(params, static).method == G.Mixed(anchor_every=2)
    grads = eqx.filter_jit(G.mixed_grad(_keyed_loss))(marked, X, jr.key(0))
    assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_couplings_in_an_eqx_nn_sequential_are_differentiated_by_the_method():
    model = eqx.nn.Sequential(list(_dropout_chain().layers))

    def loss(model, x):
        return _plain_loss(lambda x: model(x, key=jr.key(0)), x)

    want = eqx.filter_jit(eqx.filter_grad(loss))(model, X)
    for method in (G.mixed_grad, G.moonwalk_grad):
        got, report = eqx.filter_jit(method(loss, report=True))(model, X)
        assert_close(got, want)
        # Each lone coupling went through the method (it reports), not backprop.
        assert [c.layers for c in report.chains] == [("AdditiveCoupling",)] * 4
