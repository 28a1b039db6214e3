"""Non-finite values and low-precision dtypes.

- NaN or inf in the input or in a parameter shows in the gradient: wherever a
  method's gradient is finite, it equals backprop's; a method never turns a NaN
  into a finite number. (Mixed and Moonwalk may spread a NaN to *more* entries
  than backprop does, since the forward sweep carries every cotangent through the
  later layers' vijps; that is visible, never wrong.)
- Dtypes. Each chain computes in one floating dtype, that of its input and
  parameters (mixing them is a trace-time `TypeError`, see `test_misuse.py`).
  float32 and float64 are exact up to round-off. float16 and bfloat16 are
  supported with no internal up-casting: the methods compute in that dtype, and
  their relative error against a float64 oracle is bounded by a small multiple of
  backprop's in the same dtype (the bounds are stated below). Reversible backprop
  has no such bound (its reconstruction error grows with depth; measured 0.37 in
  float16 at depth 10) and is not covered.
"""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import invertible as inv
from helpers import cast, relative_error
from invertible import grad as G


def _mlp(key, half, out=None):
    return eqx.nn.MLP(half, out or half, 8, 1, jnp.tanh, key=key)


@ft.cache
def _model(features: int = 4):
    """A float64 chain of several invertible layer kinds (all methods apply)."""
    k = iter(jr.split(jr.key(0), 8))
    half = features // 2
    actnorm = eqx.tree_at(
        lambda a: (a.bias, a.log_scale),
        inv.ActNorm(features),
        (0.3 * jr.normal(next(k), (features,)), 0.2 * jr.normal(next(k), (features,))),
    )
    return inv.Sequential(
        [
            inv.AdditiveCoupling(_mlp(next(k), half)),
            inv.LeakyReLU(0.1),
            inv.InvertibleLinear(features, key=next(k)),
            inv.AffineCoupling(_mlp(next(k), half, features), swap=True),
            actnorm,
        ]
    )


def _loss(model, x):
    return jnp.mean(jnp.sin(3 * jax.vmap(model)(x)))


METHODS = {
    "mixed": G.mixed_grad(_loss),
    "mixed(anchor_every=1)": G.mixed_grad(_loss, anchor_every=1),
    "moonwalk": G.moonwalk_grad(_loss),
    "reversible": G.reversible_grad(_loss),
    "checkpointed": G.checkpointed_grad(_loss),
}
_backprop = eqx.filter_jit(eqx.filter_grad(_loss))


def _corrupt(case, model, x):
    """Put one NaN or inf into the input or into a parameter."""
    if case == "nan in x":
        return model, x.at[1, 2].set(jnp.nan)
    if case == "inf in x":
        return model, x.at[0, 0].set(-jnp.inf)
    if case == "nan in first layer":
        where = lambda m: m.layers[0].residual.layers[0].weight
        return eqx.tree_at(
            where, model, replace_fn=lambda w: w.at[0, 1].set(jnp.nan)
        ), x
    if case == "inf in middle layer":
        where = lambda m: m.layers[2].weight.log_scale
        return eqx.tree_at(where, model, replace_fn=lambda w: w.at[1].set(jnp.inf)), x
    if case == "nan in last layer":
        where = lambda m: m.layers[-1].bias
        return eqx.tree_at(where, model, replace_fn=lambda w: w.at[0].set(jnp.nan)), x
    raise AssertionError(case)


CASES = [
    "nan in x",
    "inf in x",
    "nan in first layer",
    "inf in middle layer",
    "nan in last layer",
]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_non_finite_values_stay_visible(method):
    grad_fn = eqx.filter_jit(METHODS[method])  # one compile, all the cases
    clean_model, clean_x = _model(), jr.normal(jr.key(1), (3, 4))
    for case in CASES:
        model, x = _corrupt(case, clean_model, clean_x)
        got = jax.tree.leaves(grad_fn(model, x))
        want = jax.tree.leaves(_backprop(model, x))
        assert any(not jnp.all(jnp.isfinite(w)) for w in want), case  # a real test
        for g, w in zip(got, want, strict=True):
            finite = jnp.isfinite(g)
            # Wherever the method is finite, backprop is finite and equal: no
            # finite garbage. (So every non-finite entry of backprop's is one of
            # the method's too.)
            assert jnp.all(jnp.isfinite(w) | ~finite), case
            # And wherever backprop is finite, so is the method: a drifted segment
            # is repaired, not left as NaN (an all-NaN answer would pass the rest).
            assert jnp.all(finite | ~jnp.isfinite(w)), case
            assert jnp.allclose(
                jnp.where(finite, g, 0), jnp.where(finite, w, 0), rtol=1e-8, atol=1e-10
            ), case


@ft.cache
def _oracle():
    # The model and input shapes of the tests above: `_backprop` is compiled once.
    model, x = _model(), jr.normal(jr.key(2), (3, 4))
    return model, x, _backprop(model, x)


# Stated accuracy, relative error against the float64 oracle (worst leaf), for this
# 5-layer chain: backprop's own error in the dtype bounds the methods' within
# `factor`; `ceiling` bounds everything (float16 has an 11-bit significand,
# bfloat16 an 8-bit one). Measured here: float16 backprop 4.0e-3, Mixed 4.3e-3,
# Moonwalk 5.3e-3; bfloat16 backprop 2.0e-2, Mixed 2.6e-2, Moonwalk 3.2e-2.
# (float32 at depth is tested in `test_grad_methods.py`.)
ACCURACY = {
    "float16": dict(factor=3.0, ceiling=2e-2),
    "bfloat16": dict(factor=3.0, ceiling=1.5e-1),
}


@pytest.mark.parametrize("dtype", sorted(ACCURACY))
def test_low_precision_tracks_backprop(dtype):
    model64, x64, oracle = _oracle()
    model, x = cast(model64, dtype), x64.astype(dtype)
    bound = ACCURACY[dtype]
    backprop = relative_error(_backprop(model, x), oracle)
    assert backprop <= bound["ceiling"], backprop
    for method in ["mixed", "moonwalk"]:
        grads = eqx.filter_jit(METHODS[method])(model, x)
        assert all(g.dtype == jnp.dtype(dtype) for g in jax.tree.leaves(grads))
        error = relative_error(grads, oracle)
        limit = max(bound["factor"] * backprop, jnp.finfo(dtype).eps)
        assert error <= min(limit, bound["ceiling"]), (method, error, backprop)
