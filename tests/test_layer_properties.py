"""Every layer of the registry, through `invertible.check_layer`, in float64.

`check_layer` is the one per-layer property test (its own failures on broken
layers are in `test_vijp.py`): the vijp inverts the vjp, `inverse` inverts the
layer, fragments rebuild the lost cotangent and are linear, log-dets equal the
dense Jacobian's `slogdet` and the augmented vijp inverts the vjp of
`(y, log_det)`, each at the drawn input and at random ones, at several scales.
"""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from hypothesis import given, settings

import invertible as inv
from helpers import REGISTRY, assert_close, build

seeds = st.integers(0, 2**31 - 1)

# The properties `check_layer` must have checked, by kind: a layer for which one of
# them is missing (say, its inverse is never compared) fails.
VIJP = {
    "inverse_jvp output y == layer(x)",
    "inverse_jvp cotangent ct_y (from ct_x = vjp(ct_y))",
    "vjp(inverse_jvp ct_y) == ct_x",
}
LOG_DET = {
    "forward_and_log_det output y == layer(x)",
    "inverse_jvp_and_log_det log_det",
    "inverse_jvp_and_log_det ct_y (augmented vijp)",
    "inverse_and_log_det == (x, -log_det)",
    "log_det == slogdet(dense Jacobian)",
}
EXPECTED = {
    "invertible": VIJP | LOG_DET | {"inverse(layer(x)) == x"},
    "right-invertible": VIJP,
    "fragment": VIJP | {"fragment is linear in ct_y"},
}


@pytest.mark.parametrize("entry", REGISTRY, ids=repr)
@settings(max_examples=5, deadline=None)
@given(data=st.data(), seed=seeds)
def test_check_layer(entry, data, seed):
    layer, x = build(entry, seed, data.draw(entry.shapes))
    report = inv.check_layer(layer, x, key=jr.key(seed), rtol=1e-10, atol=1e-12)
    assert EXPECTED[entry.kind] <= set(report), set(report)


@pytest.mark.parametrize("entry", REGISTRY, ids=repr)
@settings(max_examples=3, deadline=None)
@given(data=st.data(), seed=seeds)
def test_kind_matches_class(entry, data, seed):
    layer, x = build(entry, seed, data.draw(entry.shapes))
    expected = {
        "invertible": inv.AbstractInvertible,
        "right-invertible": inv.AbstractSubmersive,
        "fragment": inv.AbstractNonSubmersive,
    }[entry.kind]
    assert isinstance(layer, expected)
    y = eqx.filter_eval_shape(layer, x)
    assert y.dtype == x.dtype
    # A keyword-only `key`, as every Equinox layer takes (`eqx.nn.Sequential`
    # passes one).
    with_key = eqx.filter_eval_shape(lambda x: layer(x, key=jr.key(0)), x)
    assert (with_key.shape, with_key.dtype) == (y.shape, y.dtype)
    if entry.kind == "right-invertible":
        assert not isinstance(layer, inv.AbstractInvertible)
        assert y.size <= x.size


@pytest.mark.parametrize("entry", REGISTRY, ids=repr)
@settings(max_examples=2, deadline=None)
@given(data=st.data(), seed=seeds)
def test_jit_and_vmap(entry, data, seed):
    layer, x = build(entry, seed, data.draw(entry.shapes))
    ys = jax.jit(jax.vmap(layer))(jnp.stack([x, 2 * x]))
    assert_close(ys[0], layer(x))
    assert_close(ys[1], layer(2 * x))
