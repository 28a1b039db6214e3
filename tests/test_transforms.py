"""The gradient transforms under JAX's transformations: `jit` (with donated
buffers), `vmap` over examples and over a batch of models, `lax.scan` training
loops, forward-over-reverse, and no recompilation when only values change.

Every result is compared with `eqx.filter_grad` on the same model, in float64.
"""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest

import invertible as inv
from helpers import assert_close
from invertible import grad as G

FEATURES = 4


def _coupling(key, swap=False):
    half = FEATURES // 2
    return inv.AdditiveCoupling(
        eqx.nn.MLP(half, half, 8, 1, jnp.tanh, key=key), swap=swap
    )


class Model(eqx.Module):
    """A linear stem, a chain, a linear head."""

    stem: eqx.nn.Linear
    chain: inv.Sequential | inv.ScannedSequential
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(self.chain(self.stem(x)))


def _make(key, scanned=False):
    """A small float64 model (the test run enables x64)."""
    k_stem, k_chain, k_second, k_head = jr.split(key, 4)
    if scanned:
        stack = eqx.filter_vmap(ft.partial(_coupling, swap=True))(jr.split(k_chain, 3))
        chain = inv.ScannedSequential(stack)
    else:
        chain = inv.Sequential(
            [
                _coupling(k_chain),
                inv.LeakyReLU(0.2),
                _coupling(k_second, swap=True),
            ]
        )
    return Model(
        eqx.nn.Linear(FEATURES, FEATURES, key=k_stem),
        chain,
        eqx.nn.Linear(FEATURES, 2, key=k_head),
    )


@ft.cache
def model(scanned=False):
    return _make(jr.key(0), scanned)


@ft.cache
def stacked_models():
    """Three models in one, their arrays stacked along a leading axis."""
    return eqx.filter_vmap(_make)(jr.split(jr.key(3), 3))


X = jr.normal(jr.key(1), (5, FEATURES))
Y = jr.normal(jr.key(2), (5, 2))


def batch_loss(model, x, y):
    """The usual loss: the model `vmap`-ed over the batch inside."""
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def example_loss(model, x, y):
    """A loss of one example, for per-example gradients."""
    return jnp.sum(jnp.sin(model(x) - y))


METHODS = {
    "mixed": G.mixed_grad,
    "moonwalk": G.moonwalk_grad(chunk_size=3),
    "reversible": G.reversible_grad,
    "checkpointed": G.checkpointed_grad,
}


# References, compiled once and shared by the tests.
_backprop = eqx.filter_jit(eqx.filter_grad(batch_loss))


def _per_example(grad):
    return eqx.filter_jit(eqx.filter_vmap(grad(example_loss), in_axes=(None, 0, 0)))


def _per_model(grad):
    in_axes = (eqx.if_array(0), None, None)
    return eqx.filter_jit(eqx.filter_vmap(grad(batch_loss), in_axes=in_axes))


_per_example_backprop = _per_example(eqx.filter_grad)
_per_model_backprop = _per_model(eqx.filter_grad)


def _copy(tree):
    return jax.tree.map(lambda a: jnp.array(a) if eqx.is_array(a) else a, tree)


@pytest.mark.parametrize(
    "method, scanned",
    [(method, False) for method in sorted(METHODS)] + [("mixed", True)],
)
def test_filter_jit_with_donated_buffers(method, scanned):
    m = model(scanned)
    want = _backprop(m, X, Y)
    # Donation invalidates the arguments (on accelerators): give it copies.
    grad_fn = eqx.filter_jit(METHODS[method](batch_loss), donate="all")
    got = grad_fn(_copy(m), _copy(X), _copy(Y))
    assert_close(got, want)


@pytest.mark.parametrize("method", ["mixed", "moonwalk"])
def test_per_example_gradients(method):
    # `vmap` outside the gradient: one gradient per example.
    m = model()
    got = _per_example(METHODS[method])(m, X, Y)
    assert_close(got, _per_example_backprop(m, X, Y))
    assert jax.tree.leaves(got)[0].shape[0] == X.shape[0]


@pytest.mark.parametrize("method", ["mixed", "moonwalk", "reversible"])
def test_a_batch_of_models(method):
    # A stack of models built with `filter_vmap`, their gradients by `filter_vmap`
    # of the transform: each model's gradient is its own `eqx.filter_grad`.
    models = stacked_models()
    got = _per_model(METHODS[method])(models, X, Y)
    assert_close(got, _per_model_backprop(models, X, Y))
    # ...and, for one model taken out of the stack, plain `filter_grad`.
    dynamic, static = eqx.partition(models, eqx.is_array)
    one = lambda tree: jax.tree.map(lambda a: a[1], tree)
    single = eqx.combine(one(dynamic), static)
    assert_close(one(eqx.filter(got, eqx.is_array)), _backprop(single, X, Y))


def _train(grad_transform, m, steps=4):
    """`steps` of Adam in one `lax.scan`, all under `filter_jit`."""
    optimiser = optax.adam(1e-2)
    params, static = eqx.partition(m, eqx.is_inexact_array)
    grad_fn = grad_transform(batch_loss)

    @eqx.filter_jit
    def run(params, opt_state, xs, ys):
        def step(carry, batch):
            params, opt_state = carry
            grads = grad_fn(eqx.combine(params, static), *batch)
            updates, opt_state = optimiser.update(grads, opt_state, params)
            return (eqx.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, (params, opt_state), (xs, ys))[0]

    xs = jr.normal(jr.key(4), (steps, *X.shape))
    ys = jr.normal(jr.key(5), (steps, *Y.shape))
    return run(params, optimiser.init(params), xs, ys)


def test_training_loop_in_lax_scan():
    want = _train(eqx.filter_grad, model(scanned=True))
    got = _train(G.mixed_grad, model(scanned=True))
    assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_no_recompilation_when_only_values_change():
    traces = []

    def counted_loss(model, x, y):
        traces.append(None)  # a Python side effect: runs once per trace
        return batch_loss(model, x, y)

    grad_fn = eqx.filter_jit(G.mixed_grad(counted_loss))
    m = model()
    for i in range(3):
        shift = lambda a, i=i: a + 0.01 * i if eqx.is_inexact_array(a) else a
        shifted = jax.tree.map(shift, m)
        grad_fn(shifted, X + i, Y - i)
    assert len(traces) == 1
    # A new transform object each step (as in a loop that rebuilds it) and a jitted
    # step function: still one trace.
    traces.clear()
    step = eqx.filter_jit(lambda m, x, y: G.mixed_grad(counted_loss)(m, x, y))
    for i in range(3):
        step(m, X * (1 + i), Y)
    assert len(traces) == 1


def _hvp(grad):
    """The Hessian-vector product `(params, tangent) -> H tangent` of `batch_loss` at
    `model()`, by `jax.jvp` of the gradient function `grad(batch_loss)`."""
    static = eqx.filter(model(), eqx.is_inexact_array, inverse=True)

    def gradient(params):
        return grad(batch_loss)(eqx.combine(params, static), X, Y)

    return eqx.filter_jit(lambda p, t: jax.jvp(gradient, (p,), (t,))[1])


_hvp_backprop = _hvp(eqx.filter_grad)


@pytest.mark.parametrize("method", ["mixed", "reversible"])
def test_forward_over_reverse(method):
    # Hessian-vector products. The chain's custom_vjp backward pass is ordinary
    # JAX code, so forward mode over it works (forward mode *inside* the loss does
    # not: see test_misuse.py).
    params = eqx.filter(model(), eqx.is_inexact_array)
    tangent = jax.tree.map(jnp.ones_like, params)
    want = _hvp_backprop(params, tangent)
    assert_close(_hvp(METHODS[method])(params, tangent), want)


def _keyed_loss(net, x, y):
    keys = jr.split(jr.key(4), len(x))
    return jnp.mean((jax.vmap(lambda x, k: net(x, key=k))(x, keys) - y) ** 2)


@pytest.mark.parametrize("method", ["mixed", "moonwalk"])
def test_chain_inside_eqx_nn_sequential(method):
    # `eqx.nn.Sequential` passes a `key` to every layer, the chain included.
    m = model()
    nested = eqx.nn.Sequential([m.stem, m.chain, m.head])
    want = eqx.filter_jit(eqx.filter_grad(_keyed_loss))(nested, X, Y)
    got = eqx.filter_jit(METHODS[method](_keyed_loss))(nested, X, Y)
    assert_close(got, want)


class _DoubledVijp(inv.AbstractInvertible):
    """The identity, with a vijp wrong by a factor 2: shows whether it was used."""

    def __call__(self, x, *, key=None):
        return x

    def inverse(self, y):
        return y

    def inverse_jvp(self, x, ct_x):
        return x, 2 * ct_x


# Without repair: a repaired sweep would hide the wrong vijp (see test_report.py).
@pytest.mark.parametrize(
    "method",
    [
        G.moonwalk_grad(on_drift="ignore"),
        G.mixed_grad(anchor_every=None, on_drift="ignore"),
    ],
    ids=["moonwalk", "mixed"],
)
def test_chain_inside_eqx_nn_sequential_uses_the_method(method):
    m = model()
    chain = inv.Sequential([*m.chain.layers[:2], _DoubledVijp(), m.chain.layers[2]])
    nested = eqx.nn.Sequential([m.stem, chain, m.head])
    want = eqx.filter_jit(eqx.filter_grad(_keyed_loss))(nested, X, Y)
    got = eqx.filter_jit(method(_keyed_loss))(nested, X, Y)
    last = lambda g: g.layers[1].layers[3].residual.layers[0].weight
    assert not jnp.allclose(last(got), last(want))  # the forward sweep ran
