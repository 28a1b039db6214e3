"""`vijp`, the matrix-free solved vijp, `SolvedInverseJVP` and `check_layer`."""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import pytest
from hypothesis import given, settings
from jaxtyping import Array

import invertible as inv
from helpers import REGISTRY, assert_close, build, random_like, to_float64

SUBMERSIVE = [e for e in REGISTRY if e.kind in ("invertible", "right-invertible")]
FRAGMENT = [e for e in REGISTRY if e.kind == "fragment"]

seeds = st.integers(0, 2**31 - 1)


def _relative(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# ------------------------------------------------- the solved vijp vs the analytic one


@eqx.filter_jit
def _solved_and_analytic(layer, x, key):
    y, vjp = jax.vjp(layer, x)
    (ct_x,) = vjp(random_like(key, y))
    # A lambda is a plain callable: `vijp` has to solve for it with lineax.
    y_solved, solved = inv.vijp(lambda z: layer(z), x, ct_x)
    y_analytic, analytic = layer.inverse_jvp(x, ct_x)
    return y, y_solved, solved, y_analytic, analytic


# Each (layer, shape) compiles a Krylov solve (seconds): few examples.
@pytest.mark.parametrize("entry", SUBMERSIVE, ids=repr)
@settings(max_examples=2, deadline=None)
@given(data=st.data(), seed=seeds)
def test_solved_vijp_matches_analytic(entry, data, seed):
    # Measured over the registry: normwise relative error <= 7e-16, elementwise
    # <= 3e-14 (GMRES for square Jacobians, LSMR for wide ones, float64).
    layer, x = build(entry, seed, data.draw(entry.shapes))
    y, y_solved, solved, y_analytic, analytic = _solved_and_analytic(
        layer, x, jr.key(seed)
    )
    assert_close(y_solved, y)
    assert_close(y_analytic, y)
    assert _relative(solved, analytic) < 1e-12
    assert_close(solved, analytic, rtol=1e-10, atol=1e-12)


def test_vijp_uses_analytic_inverse_jvp():
    layer = inv.LeakyReLU(0.25)
    x = jr.normal(jr.key(0), (2, 2, 2))
    ct_x = jr.normal(jr.key(1), x.shape)
    y, ct_y = inv.vijp(layer, x, ct_x)
    assert_close(y, layer(x))
    assert_close(ct_y, layer.inverse_jvp(x, ct_x)[1], rtol=0, atol=0)


def test_vijp_of_a_chain_mixes_analytic_and_solved_layers():
    key1, key2, key3 = jr.split(jr.key(0), 3)
    mlp = eqx.nn.MLP(4, 4, 8, 1, activation=jnp.tanh, key=key1)
    dense = eqx.nn.Linear(4, 4, key=key2)  # a plain callable: solved
    chain = inv.Sequential(
        [inv.AdditiveCoupling(lambda h: mlp(jnp.tile(h, 2))[:2]), dense]
    )
    chain = to_float64(chain)
    x = jr.normal(key3, (4,))
    y, vjp = jax.vjp(chain, x)
    ct_y = jr.normal(jr.key(4), y.shape)
    y_out, ct_y_out = inv.vijp(chain, x, vjp(ct_y)[0])
    assert_close(y_out, y)
    assert_close(ct_y_out, ct_y, rtol=1e-10, atol=1e-12)


def test_solve_vijp_pytrees_and_shapes():
    # Input a pytree, output of another shape, same total size.
    def f(tree):
        a, b = tree["a"], tree["b"]
        return jnp.concatenate([a * jnp.exp(b[:2]), b + jnp.sin(a).sum()]).reshape(2, 3)

    x = {"a": jnp.array([0.3, -1.2]), "b": jnp.array([0.5, 0.1, -0.7, 2.0])}
    y, vjp = jax.vjp(f, x)
    ct_y = jr.normal(jr.key(0), y.shape)
    y_out, ct_y_out = inv.solve_vijp(f, x, vjp(ct_y)[0])
    assert_close(y_out, y)
    assert_close(ct_y_out, ct_y, rtol=1e-10, atol=1e-12)


def test_solve_vijp_scale_invariant_and_zero():
    layer = inv.SurjectiveLinear(6, 3, key=jr.key(0), dtype=jnp.float64)
    x = jr.normal(jr.key(1), (6,))
    ct_y = jr.normal(jr.key(2), (3,))
    ct_x = jax.vjp(layer, x)[1](ct_y)[0]
    solve = eqx.filter_jit(inv.solve_vijp)  # one compile for every scale
    for scale in (1e-100, 1.0, 1e100):
        _, ct_y_out = solve(layer, x, scale * ct_x)
        assert _relative(ct_y_out, scale * ct_y) < 1e-12
    _, zero = solve(layer, x, jnp.zeros_like(ct_x))
    assert_close(zero, jnp.zeros(3), rtol=0, atol=0)


def _dense_float32(key):
    weight = jnp.eye(6) + 0.5 * jr.normal(key, (6, 6))
    return lambda x: jnp.tanh(weight.astype(jnp.float32) @ x)


@pytest.mark.parametrize(
    "make, shape",
    [
        # Square: GMRES. A plain function, so that `make` builds no float64 leaves.
        (lambda key: _dense_float32(key), (6,)),
        # Wide: CG on the normal equations.
        (lambda key: inv.SurjectiveLinear(6, 3, key=key, dtype=jnp.float32), (6,)),
    ],
)
def test_solve_vijp_float32(make, shape):
    layer = make(jr.key(0))
    x = jr.normal(jr.key(1), shape, jnp.float32)
    y, vjp = jax.vjp(layer, x)
    ct_y = jr.normal(jr.key(2), y.shape, jnp.float32)
    _, ct_y_out = eqx.filter_jit(inv.solve_vijp)(layer, x, vjp(ct_y)[0])
    assert ct_y_out.dtype == jnp.float32
    assert _relative(ct_y_out, ct_y) < 1e-4


def test_solve_vijp_custom_solver():
    layer = inv.LeakyReLU(0.5)
    x = jr.normal(jr.key(0), (6,))
    ct_x = jr.normal(jr.key(1), (6,))
    solver = lx.LSMR(rtol=1e-13, atol=1e-13)
    _, ct_y = eqx.filter_jit(inv.solve_vijp)(layer, x, ct_x, solver=solver)
    assert_close(ct_y, layer.inverse_jvp(x, ct_x)[1], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------ non-submersive layers


@pytest.mark.parametrize("entry", FRAGMENT, ids=repr)
def test_vijp_of_non_submersive_layer_raises(entry):
    layer, x = build(entry, 0, (4,))
    with pytest.raises(ValueError, match=f"{type(layer).__name__}.*fragment"):
        inv.vijp(layer, x, x)
    chain = inv.Sequential([inv.LeakyReLU(), layer])
    with pytest.raises(ValueError, match="fragment"):
        inv.vijp(chain, x, x)


def test_solve_vijp_refuses_a_larger_output():
    with pytest.raises(ValueError, match="not onto"):
        inv.solve_vijp(lambda x: jnp.concatenate([x, x]), jnp.ones(3), jnp.ones(3))


# ------------------------------------------------------------ user modules, wrapped


class UserCoupling(eqx.Module):
    """A user's invertible module: `__call__` and `inverse`, no `inverse_jvp`."""

    weight: Array
    shift: Array

    def __init__(self, n: int, key):
        k1, k2 = jr.split(key)
        self.weight = jr.normal(k1, (n, n)) / n
        self.shift = jr.normal(k2, (n,))

    def __call__(self, x):
        x1, x2 = jnp.split(x, 2)
        y2 = x2 * jnp.exp(jnp.tanh(self.weight @ x1)) + jnp.sin(x1) + self.shift
        return jnp.concatenate([x1, y2])[::-1]

    def inverse(self, y):
        y1, y2 = jnp.split(y[::-1], 2)
        x2 = (y2 - jnp.sin(y1) - self.shift) * jnp.exp(-jnp.tanh(self.weight @ y1))
        return jnp.concatenate([y1, x2])


class UserPool(eqx.Module):
    """A user's right-invertible module: `(6,) -> (3,)`, no `inverse`."""

    weight: Array

    def __init__(self, key):
        self.weight = jnp.eye(3, 6) + 0.3 * jr.normal(key, (3, 6))

    def __call__(self, x):
        return jnp.tanh(self.weight @ x)


def test_solved_inverse_jvp_passes_check_layer():
    layer = inv.SolvedInverseJVP(UserCoupling(3, jr.key(0)))
    assert isinstance(layer, inv.AbstractInvertible)
    x = jr.normal(jr.key(1), (6,))
    report = inv.check_layer(layer, x)
    assert max(report.values()) < 1e-12, report
    assert "inverse(layer(x)) == x" in report
    # In a chain, next to analytic layers, with `inverse` and `inverse_jvp`.
    chain = inv.Sequential([layer, inv.LeakyReLU(0.2), layer])
    assert chain.is_invertible
    inv.check_layer(chain, x, key=jr.key(2))


def test_solved_right_inverse_jvp_passes_check_layer():
    layer = inv.SolvedRightInverseJVP(UserPool(jr.key(0)))
    assert isinstance(layer, inv.AbstractSubmersive)
    assert not isinstance(layer, inv.AbstractInvertible)
    x = jr.normal(jr.key(1), (6,))
    # At the given input, as accurate as LSMR's tolerance; the default check
    # (inputs scaled by up to 3, where tanh saturates) passes at its tolerances.
    report = inv.check_layer(layer, x, scales=(1.0,), random_inputs=False)
    assert max(report.values()) < 1e-12, report
    inv.check_layer(layer, x)


def test_solved_inverse_jvp_needs_an_inverse():
    with pytest.raises(TypeError, match="UserPool.*SolvedRightInverseJVP"):
        inv.SolvedInverseJVP(UserPool(jr.key(0)))
    with pytest.raises(TypeError, match="ReLU"):
        inv.SolvedRightInverseJVP(inv.ReLU())


# ---------------------------------------------------------------- check_layer itself


class BrokenLeakyReLU(inv.AbstractInvertible):
    """Multiplies by the slope where it should divide."""

    slope: float = 0.3

    def __call__(self, x):
        return jnp.where(x >= 0, x, self.slope * x)

    def inverse(self, y):
        return jnp.where(y >= 0, y, y / self.slope)

    def inverse_jvp(self, x, ct_x):
        return self(x), ct_x * jnp.where(x >= 0, 1.0, self.slope)


class BrokenInverse(inv.AbstractInvertible):
    """A right `inverse_jvp` but a wrong `inverse`."""

    def __call__(self, x):
        return 2.0 * x

    def inverse(self, y):
        return y / 2.0 + 1e-3

    def inverse_jvp(self, x, ct_x):
        return self(x), ct_x / 2.0


class BrokenOutput(inv.AbstractSubmersive):
    """A right cotangent but a wrong `y`."""

    def __call__(self, x):
        return x[:2] + 1.0

    def inverse_jvp(self, x, ct_x):
        return x[:2], ct_x[:2]


class BrokenFragmentReLU(inv.AbstractNonSubmersive):
    """Keeps the cotangent where the unit is *on*: the wrong half."""

    def __call__(self, x):
        return jnp.where(x > 0, x, 0.0)

    def fragment(self, x, ct_y):
        return jnp.where(x > 0, ct_y, 0.0)

    def inverse_jvp(self, x, ct_x, fragment):
        return self(x), jnp.where(x > 0, ct_x, fragment)


class NonlinearFragmentPad(inv.AbstractNonSubmersive):
    """Rebuilds `ct_y` correctly, but its fragment is not linear in `ct_y`."""

    def __call__(self, x):
        return jnp.concatenate([x, jnp.zeros_like(x)])

    def fragment(self, x, ct_y):
        return ct_y[x.shape[0] :] ** 3

    def inverse_jvp(self, x, ct_x, fragment):
        return self(x), jnp.concatenate([ct_x, jnp.cbrt(fragment)])


class WrongShape(inv.AbstractSubmersive):
    def __call__(self, x):
        return x[:2]

    def inverse_jvp(self, x, ct_x):
        return self(x), ct_x


@pytest.mark.parametrize(
    "layer, match",
    [
        (BrokenLeakyReLU(), "(?s)BrokenLeakyReLU.*cotangent ct_y"),
        (BrokenInverse(), r"(?s)BrokenInverse.*inverse\(layer\(x\)\)"),
        (BrokenOutput(), "(?s)BrokenOutput.*output y"),
        (BrokenFragmentReLU(), "(?s)BrokenFragmentReLU.*cotangent ct_y"),
        (NonlinearFragmentPad(), "(?s)NonlinearFragmentPad.*linear"),
        (WrongShape(), r"(?s)WrongShape.*shape/dtype \(4,\)"),
    ],
    ids=lambda p: type(p).__name__ if isinstance(p, eqx.Module) else "",
)
def test_check_layer_catches_broken_layers(layer, match):
    x = jr.normal(jr.key(0), (4,))
    with pytest.raises(AssertionError, match=match):
        inv.check_layer(layer, x)


def test_check_layer_float32_tolerances():
    layer = inv.LeakyReLU(0.1)
    report = inv.check_layer(layer, jr.normal(jr.key(0), (4,), jnp.float32))
    assert max(report.values()) < 1e-6
    with pytest.raises(AssertionError, match="BrokenLeakyReLU"):
        inv.check_layer(BrokenLeakyReLU(), jr.normal(jr.key(0), (4,), jnp.float32))


def test_check_layer_needs_a_layer():
    with pytest.raises(TypeError, match="Linear.*SolvedInverseJVP"):
        inv.check_layer(eqx.nn.Linear(3, 3, key=jr.key(0)), jnp.ones(3))
