"""The flowjax adapter: an invertible chain in `flowjax.distributions.Transformed`
evaluates log-densities with its `forward_and_log_det`, samples with its inverse,
and the gradient transforms differentiate it there by their method."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import invertible as inv
from flow_helpers import compiled, randomised
from helpers import assert_close, mlp_or_conv, to_float64
from invertible import grad as G
from subprocesses import run_python

pytest.importorskip("flowjax")

from flowjax.distributions import StandardNormal, Transformed  # noqa: E402

from invertible.flowjax import Bijection  # noqa: E402

SHAPE = (2, 4, 4)  # a Squeeze makes it (8, 2, 2): the latent is reshaped back
COND = 3


def _image_flow(key):
    keys = jr.split(key, 4)
    layers = [inv.Squeeze()]
    for k, swap in zip(keys[:2], (False, True), strict=True):
        k_conv, k_net = jr.split(k)
        layers += [
            inv.ActNorm(8),
            inv.Invertible1x1Conv(8, key=k_conv),
            inv.AffineCoupling(mlp_or_conv(k_net, (4, 2, 2), 8), swap=swap),
        ]
    return inv.Sequential(layers)


def _vector_flow(key, features=4, condition=COND):
    """Couplings whose MLPs see the condition appended to their half."""
    keys = jr.split(key, 2)
    half = features // 2
    layers = []
    for k in keys:
        k_lin, k_mlp = jr.split(k)
        layers += [
            inv.ActNorm(features),
            inv.InvertibleLinear(features, key=k_lin),
            inv.AffineCoupling(
                eqx.nn.MLP(half + condition, 2 * half, 8, 1, jnp.tanh, key=k_mlp),
                swap=True,
            ),
        ]
    return inv.Sequential(layers)


def _nll(dist, x):
    return -jnp.mean(dist.log_prob(x))


def _conditional_nll(dist, x, condition):
    return -jnp.mean(dist.log_prob(x, condition))


@dataclasses.dataclass(frozen=True)
class _Spy(G.AbstractMethod):
    """Mixed, noting each chain it differentiates (at trace time)."""

    seen: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def __call__(self, layout, carry):
        self.seen.append((type(layout).__name__, carry.log_det is not None))
        return G.Mixed()(layout, carry)


def _image_results(dist, x, key):
    bijection = dist.bijection
    z, log_det = jax.vmap(bijection.chain.forward_and_log_det)(x)
    samples, sample_log_prob = dist.sample_and_log_prob(key, (3,))
    draws = jr.normal(key, (3, *SHAPE))
    data, to_data = jax.vmap(bijection.transform_and_log_det)(draws)
    back, to_latent = jax.vmap(bijection.inverse_and_log_det)(data)
    return dict(
        log_prob=dist.log_prob(x),
        expected=jax.vmap(inv.layers.standard_normal_log_density)(z) + log_det,
        samples=samples,
        sample_log_prob=sample_log_prob,
        log_prob_of_samples=dist.log_prob(samples),
        draws=draws,
        back=back,
        log_dets=to_data + to_latent,
        grads={
            "backprop": eqx.filter_jit(eqx.filter_grad(_nll))(dist, x),
            "mixed": eqx.filter_jit(G.mixed_grad(_nll))(dist, x),
            "moonwalk": eqx.filter_jit(G.moonwalk_grad(_nll))(dist, x),
            "reversible": eqx.filter_jit(G.reversible_grad(_nll))(dist, x),
        },
    )


# One test per flow, checking everything from one compile: under pytest-xdist
# tests sharing a fixture could land on both workers and compile it twice.
def test_image_flow():
    build = lambda k: to_float64(randomised(_image_flow(k), jr.fold_in(k, 1)))
    chain = compiled(build, jr.key(0))
    dist = Transformed(StandardNormal(SHAPE), Bijection(chain, SHAPE))
    assert dist.bijection.latent_shape == (8, 2, 2)
    x = jr.normal(jr.key(2), (5, *SHAPE))
    out = compiled(_image_results, dist, x, jr.key(3))

    # log_prob is the base density of the latent plus the chain's log-det.
    assert_close(out["log_prob"], out["expected"])
    # Sampling runs the chain's inverse: the data maps back to the base draws,
    # and the log-dets of the two directions cancel.
    assert out["samples"].shape == (3, *SHAPE)
    assert_close(out["sample_log_prob"], out["log_prob_of_samples"], rtol=1e-9)
    assert_close(out["back"], out["draws"])
    assert_close(out["log_dets"], jnp.zeros(3))
    # The gradients of the mean NLL are backprop's.
    grads = dict(out["grads"])
    reference = grads.pop("backprop")
    for g in grads.values():
        assert_close(g, reference)

    # The chain is differentiated by the method, once, with the log-det in the
    # carry: log_prob reached its forward_and_log_det, as one chain.
    spy = _Spy()
    eqx.filter_eval_shape(G.filter_grad(_nll, method=spy), dist, x)  # no compile
    assert spy.seen == [("Unrolled", True)]


def _conditional(dist, x, condition):
    chain = dist.bijection.chain
    z, log_det = jax.vmap(lambda x, c: chain.forward_and_log_det(x, condition=c))(
        x, condition
    )
    samples = dist.sample(jr.key(0), condition=condition)
    return dict(
        log_prob=dist.log_prob(x, condition),
        expected=jax.vmap(inv.layers.standard_normal_log_density)(z) + log_det,
        other=dist.log_prob(x, condition + 1.0),
        samples=samples,
        back=jax.vmap(dist.bijection.inverse)(samples, condition),
        # flowjax splits the key over the condition's batch: one draw per example.
        draws=jax.vmap(lambda k: jr.normal(k, (4,)))(jr.split(jr.key(0), len(x))),
        grads={
            "backprop": eqx.filter_jit(eqx.filter_grad(_conditional_nll))(
                dist, x, condition
            ),
            "mixed": eqx.filter_jit(G.mixed_grad(_conditional_nll))(dist, x, condition),
            "moonwalk": eqx.filter_jit(G.moonwalk_grad(_conditional_nll))(
                dist, x, condition
            ),
            "reversible": eqx.filter_jit(G.reversible_grad(_conditional_nll))(
                dist, x, condition
            ),
        },
    )


def test_conditional_flow():
    build = lambda k: to_float64(randomised(_vector_flow(k), jr.fold_in(k, 1)))
    chain = compiled(build, jr.key(4))
    dist = Transformed(StandardNormal((4,)), Bijection(chain, (4,), (COND,)))
    assert dist.cond_shape == (COND,)
    x = jr.normal(jr.key(6), (6, 4))
    condition = jr.normal(jr.key(7), (6, COND))
    out = compiled(_conditional, dist, x, condition)
    assert_close(out["log_prob"], out["expected"])
    # The condition matters: another one gives another density.
    assert float(jnp.max(jnp.abs(out["other"] - out["log_prob"]))) > 1e-3
    assert out["samples"].shape == (6, 4)
    assert_close(out["back"], out["draws"])
    grads = out["grads"]
    reference = grads.pop("backprop")
    for g in grads.values():
        assert_close(g, reference)


def test_rejects_a_chain_that_is_not_a_bijection():
    # The error names the first layer that is not invertible.
    multiscale = inv.Sequential([inv.ActNorm(4), inv.FactorOut(2)])
    with pytest.raises(TypeError, match=r"layer 1 \(FactorOut\)"):
        Bijection(multiscale, (4,))
    with_relu = inv.Sequential([inv.ActNorm(4), inv.ReLU(), inv.ActNorm(4)])
    with pytest.raises(TypeError, match=r"not invertible: layer 1 \(ReLU\)"):
        Bijection(with_relu, (4,))


def test_invertible_imports_without_flowjax():
    # `None` in sys.modules makes `import flowjax` fail, as if it were not
    # installed.
    code = (
        "import sys; sys.modules['flowjax'] = None\n"
        "import invertible\n"
        "try:\n"
        "    import invertible.flowjax\n"
        "except ImportError as e:\n"
        "    assert 'invertible[flows]' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('imported without flowjax')\n"
    )
    run_python("-c", code)
