"""The drift report and what the sweep does with drift (`on_drift`, `check_vijp`).

The chain: tanh couplings, ActNorms with log-scales spread over `[-s, s]` and
leaky ReLUs of slope `a`. The forward sweep multiplies round-off by inverse
Jacobians (up to `exp(s) / a` per layer, where backprop's transposed Jacobians
never amplify it): with `a = 0.7` it stays at round-off, with `a = 0.02` it
compounds past float32's precision within a few layers. One structure per slope
(the scales are array leaves): one compile per method and slope.
"""

import functools as ft

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings

import invertible as inv
from helpers import assert_close, cast
from invertible import grad as G

DEPTH, FEATURES, BATCH = 6, 8, 4


@ft.cache
def _chain(slope):
    keys = jr.split(jr.key(0), DEPTH)
    layers = []
    for i, k in enumerate(keys):
        mlp = eqx.nn.MLP(FEATURES // 2, FEATURES // 2, 16, 1, jnp.tanh, key=k)
        coupling = inv.AdditiveCoupling(mlp, swap=i % 2 == 1)
        layers += [coupling, inv.ActNorm(FEATURES), inv.LeakyReLU(slope)]
    return cast(inv.Sequential(layers), jnp.float64)


def _model(spread: float, seed: int, slope: float = 0.7):
    log_scales = spread * jr.uniform(jr.key(seed), (DEPTH, FEATURES), minval=-1)
    model = eqx.tree_at(
        lambda m: [a.log_scale for a in m.layers[1::3]],
        _chain(slope),
        list(log_scales.astype(jnp.float64)),
    )
    x = jr.normal(jr.key(seed + 1), (BATCH, FEATURES), jnp.float64)
    return model, x


def relative_error(grads, reference) -> float:
    """‖g - ref‖ / ‖ref‖ over all leaves together: with large scales some layers
    saturate and get (near-)zero gradients, whose relative error means nothing."""
    flat = lambda t: jnp.concatenate([a.astype(jnp.float64).ravel() for a in t])
    g, r = flat(jax.tree.leaves(grads)), flat(jax.tree.leaves(reference))
    return float(jnp.linalg.norm(g - r) / jnp.linalg.norm(r))


def _loss(model, x):
    return jnp.mean(jnp.sin(jax.vmap(model)(x)))


_backprop = eqx.filter_jit(eqx.filter_grad(_loss))


@ft.cache
def _reporting(method: str, **options):
    make = {"mixed": G.mixed_grad, "moonwalk": G.moonwalk_grad}[method]
    return eqx.filter_jit(make(_loss, report=True, **options))


def test_report_structure():
    model, x = _model(0.0, 0)
    grads, report = _reporting("mixed", anchor_every=4)(model, x)
    (chain,) = report.chains
    assert chain.method == "Mixed"
    assert chain.layers == ("AdditiveCoupling", "ActNorm", "LeakyReLU") * DEPTH
    segments = -(-3 * DEPTH // 4)
    assert chain.drift.shape == chain.repaired.shape == (segments,)
    assert chain.vijp_error is None
    assert_close(grads, _backprop(model, x))


@pytest.mark.parametrize("method", ["mixed", "moonwalk"])
def test_well_conditioned_chain_reports_round_off_and_repairs_nothing(method):
    model, x = _model(0.3, 3)
    grads, report = _reporting(method)(model, x)
    assert float(report.drift) < 1e-12
    assert int(report.repaired) == 0
    assert_close(grads, _backprop(model, x))


@settings(max_examples=6, deadline=None)
@given(spread=st.floats(1.5, 3.0), seed=st.integers(0, 2**16))
def test_repaired_float32_gradients_stay_within_backprops_error(spread, seed):
    model, x = _model(spread, seed)
    oracle = _backprop(model, x)
    model32, x32 = cast((model, x), jnp.float32)
    floor = relative_error(_backprop(model32, x32), oracle)
    eps = float(jnp.finfo(jnp.float32).eps)
    for method in ("mixed", "moonwalk"):
        grads, report = _reporting(method)(model32, x32)
        assert relative_error(grads, oracle) <= max(3 * floor, 8 * eps), method
        unrepaired, seen = _reporting(method, on_drift="ignore")(model32, x32)
        # The report sees the drift wherever it costs accuracy.
        if relative_error(unrepaired, oracle) > max(10 * floor, 8 * eps):
            assert float(seen.drift) > 16 * eps, method
            assert int(report.repaired) > 0, method


def test_ill_conditioned_chain_drifts_and_moonwalk_without_repair_is_wrong():
    model, x = cast(_model(0.5, 1, slope=0.02), jnp.float32)
    oracle = _backprop(*_model(0.5, 1, slope=0.02))
    unrepaired, report = _reporting("moonwalk", on_drift="ignore")(model, x)
    assert float(report.drift) > 1e-3 and int(report.repaired) == 0
    assert relative_error(unrepaired, oracle) > 1e-3  # what repair is for
    repaired, report = _reporting("moonwalk")(model, x)
    assert int(report.repaired) == 1  # Moonwalk: one segment, the whole chain
    assert relative_error(repaired, oracle) < 1e-5


def test_on_drift_nan_poisons_and_error_raises():
    model, x = cast(_model(0.5, 1, slope=0.02), jnp.float32)
    grads, report = _reporting("mixed", on_drift="nan", anchor_every=None)(model, x)
    assert int(report.repaired) > 0
    assert any(bool(jnp.any(jnp.isnan(g))) for g in jax.tree.leaves(grads))
    grad_fn = eqx.filter_jit(G.mixed_grad(_loss, on_drift="error", anchor_every=None))
    with pytest.raises(Exception, match="drift"):
        jax.block_until_ready(grad_fn(model, x))
    ok_model, ok_x = cast(_model(0.3, 3), jnp.float32)
    jax.block_until_ready(grad_fn(ok_model, ok_x))  # no false alarm


class _Doubled(inv.AbstractInvertible):
    """The identity, with a vijp wrong by a factor 2."""

    def __call__(self, x, *, key=None):
        return x

    def inverse(self, y):
        return y

    def inverse_jvp(self, x, ct_x):
        return x, 2 * ct_x


def test_check_vijp_finds_the_broken_layer():
    model, x = _model(0.3, 3)
    broken = inv.Sequential([*model.layers[:5], _Doubled(), *model.layers[5:]])
    method = G.Mixed(check_vijp=True, on_drift="ignore")
    grad_fn = G.filter_grad(_loss, method=method, report=True)
    _, report = eqx.filter_jit(grad_fn)(broken, x)
    chain, layer, name, error = report.worst_layer()
    assert (chain, layer, name) == (0, 5, "_Doubled")
    np.testing.assert_allclose(error, 1.0, rtol=1e-8)  # |2 ct - ct| / |ct|
    others = np.delete(np.asarray(report.chains[0].vijp_error), 5)
    assert others.max() < 1e-12
    # Repaired, the gradients are right even so.
    grads, report = eqx.filter_jit(G.mixed_grad(_loss, report=True))(broken, x)
    assert int(report.repaired) > 0
    assert_close(grads, _backprop(broken, x))


def test_report_in_a_scanned_training_loop_and_under_vmap():
    model, x = _model(0.3, 3)
    grad_fn = G.mixed_grad(_loss, report=True)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @eqx.filter_jit
    def train(params, xs):
        def step(params, x):
            grads, report = grad_fn(eqx.combine(params, static), x)
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
            return params, report.drift

        return jax.lax.scan(step, params, xs)

    _, drifts = train(params, jnp.stack([x, -x, 2 * x]))
    assert drifts.shape == (3,) and float(drifts.max()) < 1e-12

    per_example = eqx.filter_vmap(grad_fn, in_axes=(None, 0))(model, x[:, None])
    grads, report = per_example
    assert report.chains[0].drift.shape[0] == BATCH
    want = eqx.filter_vmap(eqx.filter_grad(_loss), in_axes=(None, 0))(model, x[:, None])
    assert_close(grads, want)


def _skewing_a_rebuilt_anchor(monkeypatch, position: int):
    """Phase 1's cotangent pulled back through the layer at `position` made
    inexact, as rebuilding with inverses can leave it where the segment's start
    matched: a rebuilt input's round-off can flip a ReLU's derivative (float32,
    stacked GroupNorm conv couplings: a segment drifted 4.6e-4)."""
    from invertible.grad import _rebuilt

    exact = _rebuilt.input_vjp

    def skewed(layer, carry, h, ct_log_det, *, index):
        h = exact(layer, carry, h, ct_log_det, index=index)
        return 1.001 * h if index.position == position else h

    monkeypatch.setattr(_rebuilt, "input_vjp", skewed)


@pytest.mark.parametrize("segment", [0, 2])
@pytest.mark.parametrize("on_drift", ["repair", "nan"])
def test_an_inexact_rebuilt_anchor_never_reaches_the_segments_before(
    monkeypatch, on_drift, segment
):
    # The anchor of one of three segments of six layers is skewed, and so every
    # anchor pulled back from it, the chain's input cotangent included. That
    # segment's sweep drifts; its repair gives the exact anchor, from which the
    # segments before are pulled back (with "nan": it is poisoned, and so is
    # everything before it). Before, they were swept from the skewed anchors,
    # ended on the skewed one without a drift and returned wrong gradients.
    _skewing_a_rebuilt_anchor(monkeypatch, position=6 * segment + 2)
    model, x = _model(0.3, 3)
    loss = lambda model_and_x: _loss(*model_and_x)
    method = G.Mixed(anchor_every=6, strategy="rebuild", on_drift=on_drift)
    grads, report = eqx.filter_jit(G.filter_grad(loss, method=method, report=True))(
        (model, x)
    )
    expected = eqx.filter_grad(loss)((model, x))
    if on_drift == "repair":
        assert report.chains[0].repaired.tolist() == [
            int(j == segment) for j in range(3)
        ]
        assert_close(grads, expected)
    else:
        assert report.chains[0].repaired.tolist() == [
            int(j <= segment) for j in range(3)
        ]
        (got, x_grad), (want, _) = grads, expected
        assert bool(jnp.all(jnp.isnan(x_grad)))
        for i, (g, w) in enumerate(zip(got.layers, want.layers, strict=True)):
            poisoned = i // 6 <= segment
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w), strict=True):
                assert (
                    bool(jnp.all(jnp.isnan(a)))
                    if poisoned
                    else jnp.allclose(a, b, rtol=1e-10, atol=1e-12)
                )
