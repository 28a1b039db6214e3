"""Every property, over every layer of the registry, in float64."""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest
from hypothesis import given, settings

import invertible as inv
from helpers import REGISTRY, assert_close, build, random_like

SUBMERSIVE = [e for e in REGISTRY if e.kind in ("invertible", "right-invertible")]
INVERTIBLE = [e for e in REGISTRY if e.kind == "invertible"]
FRAGMENT = [e for e in REGISTRY if e.kind == "fragment"]

seeds = st.integers(0, 2**31 - 1)
examples = settings(max_examples=15, deadline=None)


@pytest.mark.parametrize("entry", REGISTRY, ids=repr)
@examples
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


@eqx.filter_jit
def _round_trip(layer, x):
    return layer.inverse(layer(x))


@pytest.mark.parametrize("entry", INVERTIBLE, ids=repr)
@examples
@given(data=st.data(), seed=seeds)
def test_inverse_round_trip(entry, data, seed):
    layer, x = build(entry, seed, data.draw(entry.shapes))
    assert_close(_round_trip(layer, x), x)


@eqx.filter_jit
def _vjp_of_inverse_jvp(layer, x, key):
    ct_x = jr.normal(key, x.shape, x.dtype)
    y, ct_y = layer.inverse_jvp(x, ct_x)
    y_ref, vjp = jax.vjp(layer, x)
    return ct_x, y, ct_y, y_ref, vjp(ct_y)[0]


@pytest.mark.parametrize("entry", INVERTIBLE, ids=repr)
@examples
@given(data=st.data(), seed=seeds)
def test_inverse_jvp_inverts_vjp(entry, data, seed):
    # An arbitrary ct_x has a preimage under vjp only when J is square; for a
    # right-invertible layer the next test starts from ct_x = vjp(ct_y) instead.
    layer, x = build(entry, seed, data.draw(entry.shapes))
    ct_x, y, ct_y, y_ref, ct_x_again = _vjp_of_inverse_jvp(layer, x, jr.key(seed))
    assert ct_y.shape == y.shape and ct_y.dtype == y.dtype
    assert_close(y, y_ref)
    assert_close(ct_x_again, ct_x)


@eqx.filter_jit
def _inverse_jvp_of_vjp(layer, x, key):
    y, vjp = jax.vjp(layer, x)
    ct_y = random_like(key, y)
    (ct_x,) = vjp(ct_y)
    return y, ct_y, layer.inverse_jvp(x, ct_x)


@pytest.mark.parametrize("entry", SUBMERSIVE, ids=repr)
@examples
@given(data=st.data(), seed=seeds)
def test_inverse_jvp_recovers_output_cotangent(entry, data, seed):
    layer, x = build(entry, seed, data.draw(entry.shapes))
    y, ct_y, (y_out, ct_y_out) = _inverse_jvp_of_vjp(layer, x, jr.key(seed))
    assert_close(y_out, y)
    assert_close(ct_y_out, ct_y)


@eqx.filter_jit
def _fragment_round_trip(layer, x, key):
    y, vjp = jax.vjp(layer, x)
    ct_y = random_like(key, y)
    (ct_x,) = vjp(ct_y)
    fragment = layer.fragment(x, ct_y)
    doubled = layer.fragment(x, 2.0 * ct_y)
    return y, ct_y, fragment, doubled, layer.inverse_jvp(x, ct_x, fragment)


@pytest.mark.parametrize("entry", FRAGMENT, ids=repr)
@examples
@given(data=st.data(), seed=seeds)
def test_fragment_restores_lost_cotangent(entry, data, seed):
    layer, x = build(entry, seed, data.draw(entry.shapes))
    y, ct_y, fragment, doubled, (y_out, ct_y_out) = _fragment_round_trip(
        layer, x, jr.key(seed)
    )
    assert_close(y_out, y)
    assert_close(ct_y_out, ct_y)
    assert_close(doubled, jax.tree.map(lambda f: 2.0 * f, fragment))  # linear in ct_y


@pytest.mark.parametrize("entry", REGISTRY, ids=repr)
@settings(max_examples=3, deadline=None)
@given(data=st.data(), seed=seeds)
def test_jit_and_vmap(entry, data, seed):
    layer, x = build(entry, seed, data.draw(entry.shapes))
    ys = jax.jit(jax.vmap(layer))(jnp.stack([x, 2 * x]))
    assert_close(ys[0], layer(x))
    assert_close(ys[1], layer(2 * x))
