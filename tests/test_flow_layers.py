"""What the registry's generic properties cannot see: each flow layer computes the
map its docstring promises (layouts, parametrisations, initialisations)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import invertible as inv
from helpers import assert_close


def test_squeeze_layout():
    c, h, w = 3, 4, 6
    x = jnp.arange(c * h * w, dtype=jnp.float64).reshape(c, h, w)
    y = inv.Squeeze()(x)
    assert y.shape == (4 * c, h // 2, w // 2)
    expected = np.empty(y.shape)
    for i in range(2):
        for j in range(2):
            for k in range(c):
                expected[(2 * i + j) * c + k] = x[k, i::2, j::2]
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(inv.Squeeze().inverse(y), x)


def test_permute_constructors():
    x = jnp.arange(6.0)
    assert inv.Permute.reverse(6)(x).tolist() == [5, 4, 3, 2, 1, 0]
    assert inv.Permute.swap_halves(6)(x).tolist() == [3, 4, 5, 0, 1, 2]
    layer = inv.Permute([2, 0, 1])
    assert layer(jnp.arange(3.0)).tolist() == [2, 0, 1]
    assert layer.inverse(layer(jnp.arange(3.0))).tolist() == [0, 1, 2]
    random = inv.Permute.random(6, key=jr.key(0))
    assert sorted(random.permutation.tolist()) == list(range(6))


def test_affine_coupling_scale_is_soft_clamped():
    x = jnp.array([1.0, 2.0, 3.0, 4.0])

    def conditioner(raw):
        return lambda x1: jnp.concatenate((jnp.full_like(x1, raw), jnp.ones_like(x1)))

    # Zero raw log-scale: y2 = x2 + shift.
    assert_close(inv.AffineCoupling(conditioner(0.0))(x), jnp.array([1, 2, 4, 5.0]))
    # Near zero the scale is exp(raw); far away it saturates at exp(±max_log_scale).
    small = inv.AffineCoupling(conditioner(1e-3))(x)
    assert_close(small[2:], x[2:] * jnp.exp(1e-3) + 1, rtol=1e-8)
    for raw, bound in ((1e3, 1.5), (-1e3, 1.5)):
        layer = inv.AffineCoupling(conditioner(raw), max_log_scale=bound)
        scale = jnp.exp(jnp.sign(raw) * bound)
        assert_close(layer(x)[2:], x[2:] * scale + 1)
        assert_close(layer.inverse(layer(x)), x)


def test_affine_coupling_swap():
    def conditioner(x1):
        return jnp.concatenate((jnp.zeros_like(x1), x1))

    x = jnp.array([1.0, 2.0, 3.0, 4.0])
    assert_close(
        inv.AffineCoupling(conditioner, swap=True)(x), jnp.array([4, 6, 1, 2.0])
    )


@eqx.filter_jit
def _lu_layers():
    linear = inv.InvertibleLinear(5, key=jr.key(1))
    orthogonal = linear.weight.matrix()
    log_abs_det = linear.weight.log_abs_det()
    # A non-orthogonal W, as after training: the vijp is still c_x W⁻¹.
    linear = eqx.tree_at(
        lambda a: (a.weight.log_scale, a.weight.upper),
        linear,
        (jr.normal(jr.key(2), (5,)), jr.normal(jr.key(3), (5, 5))),
    )
    w = linear.weight.matrix()
    x, ct_x = jr.normal(jr.key(4), (5,)), jr.normal(jr.key(5), (5,))
    conv = inv.Invertible1x1Conv(3, key=jr.key(6))
    image = jr.normal(jr.key(7), (3, 2, 4))
    return dict(
        orthogonal=orthogonal,
        log_abs_det=log_abs_det,
        w=w,
        y=linear(x),
        y_ref=w @ x + linear.bias,
        ct_y=linear.inverse_jvp(x, ct_x)[1],
        ct_y_ref=jnp.linalg.solve(w.T, ct_x),  # ct_y W = ct_x
        log_abs_det_after=linear.weight.log_abs_det(),
        slogdet=jnp.linalg.slogdet(w)[1],
        conv_bias=conv.bias,
        conv=conv(image),
        conv_ref=jnp.einsum("ij,jhw->ihw", conv.weight.matrix(), image),
    )


def test_lu_layers_start_orthogonal_and_solve_with_their_factors():
    out = _lu_layers()
    assert_close(out["orthogonal"] @ out["orthogonal"].T, jnp.eye(5))
    assert abs(float(out["log_abs_det"])) < 1e-10
    assert_close(out["y"], out["y_ref"])
    assert_close(out["ct_y"], out["ct_y_ref"], rtol=1e-9)
    assert_close(out["log_abs_det_after"], out["slogdet"])
    assert out["conv_bias"] is None
    assert_close(out["conv"], out["conv_ref"])


@jax.jit
def _actnorm_from_data(xs):
    layer = inv.ActNorm.from_data(xs)
    return jax.vmap(layer)(xs), inv.ActNorm(3)(xs[0])


def test_actnorm_from_data_normalises():
    xs = 3.0 + 2.0 * jr.normal(jr.key(0), (64, 3, 4, 4))
    ys, identity = _actnorm_from_data(xs)
    assert_close(ys.mean(axis=(0, 2, 3)), jnp.zeros(3), atol=1e-10)
    assert_close(ys.std(axis=(0, 2, 3)), jnp.ones(3), rtol=1e-5)
    assert_close(identity, xs[0])  # the default is the identity


@eqx.filter_jit
def _stacked_and_looped(make, keys, x):
    chain = inv.ScannedSequential(eqx.filter_vmap(make)(keys))
    expected = x
    for key in keys:
        expected = make(key)(expected)
    return chain(x), expected, chain.inverse(chain(x))


def test_layers_with_random_permutations_stack():
    # Integer arrays, not static fields: layers with different permutations stack.
    keys = jr.split(jr.key(0), 3)
    x = jr.normal(jr.key(1), (4,))
    for make in (
        lambda k: inv.Permute.random(4, key=k),
        lambda k: inv.InvertibleLinear(4, key=k),
    ):
        y, expected, x_again = _stacked_and_looped(make, keys, x)
        assert_close(y, expected)
        assert_close(x_again, x)


def test_factor_out_samples_only_its_default_density():
    y = jnp.zeros((2, 3))
    z = inv.FactorOut(2).sample_factored(y, 5, key=jr.key(0))
    assert z.shape == (3, 3)
    # A given density cannot be sampled from: an error, not standard normal draws.
    shifted = inv.FactorOut(2, lambda z: -0.5 * jnp.sum((z - 5.0) ** 2))
    with pytest.raises(ValueError, match="FactorOut.*cannot be sampled"):
        shifted.sample_factored(y, 5, key=jr.key(0))
