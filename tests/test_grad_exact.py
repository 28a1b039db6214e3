"""Every exact method equals `eqx.filter_grad` in float64, on generated models."""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings

import invertible as inv
from architectures import architectures
from helpers import assert_close
from invertible import grad as G

RTOL = 1e-10


def _rebuildable(model) -> bool:
    """Whether Mixed may rebuild every layer of the model's chains."""
    kinds = (inv.AbstractSubmersive, inv.AbstractNonSubmersive)
    is_layer = lambda n: isinstance(n, kinds)
    layers = jax.tree.leaves(model, is_leaf=is_layer)
    return all(G.can_rebuild(layer) for layer in layers if is_layer(layer))


def exact_methods(kinds, rebuildable: bool = False):
    """The methods that apply to a chain holding layers of these kinds (and, with
    `rebuildable`, layers that Mixed may rebuild: `can_rebuild`)."""
    methods = {
        "mixed": G.mixed_grad,
        "mixed(anchor_every=1)": G.mixed_grad(anchor_every=1),
        "mixed(no anchors)": G.mixed_grad(anchor_every=None),
        "checkpointed": G.checkpointed_grad,
        "forward": G.forward_grad,
    }
    # Every phase-1 strategy, forced (the default picks one per chain).
    strategies = ["residuals", "bits", "inputs", "recompute"]
    if "fragment" not in kinds:
        methods["moonwalk"] = G.moonwalk_grad(chunk_size=3)
    if kinds == {"invertible"}:
        methods["reversible"] = G.reversible_grad
    if kinds == {"invertible"} and rebuildable:
        strategies.append("rebuild")
    for s in strategies:
        methods[f"mixed(strategy={s!r})"] = G.filter_grad(method=G.Mixed(strategy=s))
    methods["checkpointed(segment_length=2)"] = G.checkpointed_grad(segment_length=2)
    return methods


def _check(arch, data):
    # One method per example (compiling is the cost); hypothesis spreads them.
    methods = exact_methods(arch.kinds, _rebuildable(arch.model))
    name = data.draw(st.sampled_from(sorted(methods)), label="method")
    reference = eqx.filter_jit(eqx.filter_grad(arch.loss, has_aux=arch.has_aux))
    expected = reference(arch.model, arch.x)
    method = methods[name](arch.loss, has_aux=arch.has_aux)
    got = eqx.filter_jit(method)(arch.model, arch.x)
    assert_close(got, expected, rtol=RTOL, atol=1e-12)


slow_ok = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=20, **slow_ok)
@given(arch=architectures(scanned=False), data=st.data())
def test_sequential_models(arch, data):
    _check(arch, data)


@settings(max_examples=10, **slow_ok)
@given(arch=architectures(scanned=True), data=st.data())
def test_scanned_models(arch, data):
    _check(arch, data)


@settings(max_examples=3, **slow_ok)
@given(arch=architectures(scanned=False), data=st.data())
def test_value_and_grad(arch, data):
    method = data.draw(
        st.sampled_from([G.mixed_value_and_grad, G.moonwalk_value_and_grad])
    )
    if method is G.moonwalk_value_and_grad and "fragment" in arch.kinds:
        method = G.mixed_value_and_grad
    got = eqx.filter_jit(method(arch.loss, has_aux=arch.has_aux))(arch.model, arch.x)
    expected = eqx.filter_value_and_grad(arch.loss, has_aux=arch.has_aux)(
        arch.model, arch.x
    )
    assert_close(got, expected, rtol=RTOL)


def test_non_array_leaves_get_none():
    import jax.random as jr

    import invertible as inv

    class WithFlags(eqx.Module):
        body: inv.Sequential
        scale: float
        name: str

        def __call__(self, x):
            return self.scale * self.body(x)

    layer = inv.LeakyReLU(0.2)
    model = WithFlags(inv.Sequential([layer, inv.ActNorm(4)]), 2.0, "m")
    x = jr.normal(jr.key(0), (4,), jnp.float64)
    loss = lambda m, x: jnp.sum(m(x) ** 2)
    got = G.mixed_grad(loss)(model, x)
    assert got.scale is None and got.name is None
    assert_close(got, eqx.filter_grad(loss)(model, x))


@pytest.mark.parametrize(
    "transform", [G.mixed_grad, G.moonwalk_grad, G.reversible_grad, G.checkpointed_grad]
)
def test_decorator_forms_and_methods(transform):
    import jax.random as jr

    import invertible as inv

    class Trainer(eqx.Module):
        body: inv.Sequential

        @transform
        def grad_plain(self, x):
            return jnp.sum(self.body(x) ** 2)

        @transform(has_aux=True)
        def grad_aux(self, x):
            return jnp.sum(self.body(x) ** 2), "aux"

    body = inv.Sequential([inv.LeakyReLU(0.2), inv.Asinh(), inv.LeakyReLU(3.0)])
    trainer = Trainer(body)
    x = jr.normal(jr.key(0), (4,), jnp.float64)
    expected = eqx.filter_grad(lambda t, x: jnp.sum(t.body(x) ** 2))(trainer, x)
    assert_close(trainer.grad_plain(x), expected)
    grads, aux = trainer.grad_aux(x)
    assert aux == "aux"
    assert_close(grads, expected)
