"""Misuse of the gradient transforms: every case is an error raised while tracing,
naming the transform and the layer (by index) and saying what to do; never a wrong
gradient.

Each case runs under `eqx.filter_eval_shape`: nothing is compiled or executed, so
the error is a trace-time one by construction.
"""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import invertible as inv
from helpers import cast
from invertible import grad as G

# The library's own checks, not jaxtyping's (on in the test run, off for users).
pytestmark = pytest.mark.usefixtures("own_checks")


TRANSFORMS = {
    "mixed_grad": G.mixed_grad,
    "mixed_value_and_grad": G.mixed_value_and_grad,
    "moonwalk_grad": G.moonwalk_grad,
    "moonwalk_value_and_grad": G.moonwalk_value_and_grad,
    "reversible_grad": G.reversible_grad,
    "checkpointed_grad": G.checkpointed_grad,
    "forward_grad": G.forward_grad,
    "projected_forward_grad": G.projected_forward_grad,
}
ALL = sorted(TRANSFORMS)
# The transforms that differentiate chains with a `custom_vjp` of their own.
CUSTOM_VJP = ["mixed_grad", "moonwalk_grad", "reversible_grad"]


def trace(name, fun, model, *args, **options):
    """Trace (never run) `TRANSFORMS[name](fun, **options)(model, *args)`."""
    grad_fn = TRANSFORMS[name](fun, **options)
    extra = {"tangent_key": jr.key(0)} if name == "projected_forward_grad" else {}
    return eqx.filter_eval_shape(lambda m, *a: grad_fn(m, *a, **extra), model, *args)


def coupling(features=4, key=None):
    half = features // 2
    key = jr.key(0) if key is None else key
    return inv.AdditiveCoupling(eqx.nn.MLP(half, half, 8, 1, jnp.tanh, key=key))


@ft.cache  # built once: eager construction compiles every small op
def chain():
    """A small invertible chain on 4-vectors (float64: the test run enables x64)."""
    return inv.Sequential(
        [coupling(), inv.LeakyReLU(0.1), inv.InvertibleLinear(4, key=jr.key(1))]
    )


def stack(make, depth=3):
    return inv.ScannedSequential(eqx.filter_vmap(make)(jr.split(jr.key(2), depth)))


@ft.cache
def scanned_surjective():
    return stack(lambda k: inv.SurjectiveLinear(4, 2, key=k))


X = jnp.linspace(-1.0, 1.0, 4)
loss = lambda model, x: jnp.sum(model(x) ** 2)


# --- shapes


@pytest.mark.parametrize("name", ALL)
def test_wrong_rank_names_the_layer(name):
    # An image into a chain of vector layers: the coupling's MLP would fail with
    # a bare broadcasting error; the chain check says which layer and what input.
    match = rf"{name}: layer 0 \(AdditiveCoupling\) of the Sequential rejects the "
    match += r"chain's input, of shape \(4, 2, 2\)"
    with pytest.raises(ValueError, match=match):
        trace(name, loss, chain(), jnp.ones((4, 2, 2)))


def test_a_batch_without_vmap():
    model = inv.Sequential([inv.InvertibleLinear(4, key=jr.key(0)), coupling()])
    with pytest.raises(ValueError, match=r"layer 0 \(InvertibleLinear\).*jax.vmap"):
        trace("mixed_grad", loss, model, jnp.ones((3, 4)))


@pytest.mark.parametrize("name", ["mixed_grad", "moonwalk_grad", "reversible_grad"])
def test_odd_channels(name):
    with pytest.raises(ValueError, match=r"layer 0 \(AdditiveCoupling\).*even size"):
        trace(name, loss, chain(), jnp.ones(5))


def test_squeeze_needs_even_height_and_width_and_an_image():
    model = inv.Sequential([inv.Squeeze(), inv.LeakyReLU(0.5)])
    with pytest.raises(ValueError, match=r"layer 0 \(Squeeze\).*must be even"):
        trace("mixed_grad", loss, model, jnp.ones((1, 3, 4)))
    with pytest.raises(ValueError, match=r"layer 0 \(Squeeze\).*\(channels, height"):
        trace("moonwalk_grad", loss, model, jnp.ones(4))


def test_shapes_that_do_not_chain():
    model = inv.Sequential([coupling(4), inv.InvertibleLinear(6, key=jr.key(0))])
    match = r"mixed_grad: layer 1 \(InvertibleLinear\) of the Sequential rejects "
    match += r"the previous layer's output, of shape \(4,\).*shape \(6,\)"
    with pytest.raises(ValueError, match=match):
        trace("mixed_grad", loss, model, X)


@pytest.mark.parametrize("name", ["mixed_grad", "moonwalk_grad", "checkpointed_grad"])
def test_a_scanned_layer_must_keep_the_shape(name):
    model = scanned_surjective()
    match = r"layer 0 \(SurjectiveLinear\) of the ScannedSequential maps shape "
    match += r"\(4,\) to \(2,\).*invertible.Sequential"
    with pytest.raises(ValueError, match=match):
        trace(name, loss, model, X)


def test_a_conditioner_of_the_wrong_shape():
    model = inv.Sequential([inv.AffineCoupling(lambda x1: x1)])  # needs 2x channels
    with pytest.raises(ValueError, match=r"layer 0 \(AffineCoupling\).*conditioner"):
        trace("mixed_grad", loss, model, X)


# --- layers a method cannot take


@pytest.mark.parametrize("make", [inv.ReLU, lambda: inv.ChannelPad(6)])
@pytest.mark.parametrize("name", ["moonwalk_grad", "moonwalk_value_and_grad"])
def test_moonwalk_refuses_a_non_submersive_layer(name, make):
    model = inv.Sequential([inv.LeakyReLU(0.5), make()])
    match = rf"{name}: layer 1 \((ReLU|ChannelPad)\) is not submersive.*mixed"
    with pytest.raises(ValueError, match=match):
        trace(name, loss, model, X)


@pytest.mark.parametrize(
    "make",
    [
        inv.ReLU,
        lambda: inv.KeepChannels(2),
        lambda: inv.SurjectiveLinear(4, 2, key=jr.key(0)),
    ],
    ids=["ReLU", "KeepChannels", "SurjectiveLinear"],
)
def test_reversible_refuses_a_layer_without_inverse(make):
    model = inv.Sequential([inv.LeakyReLU(0.5), make()])
    with pytest.raises(TypeError, match=r"reversible_grad: layer 1 .* no `inverse`"):
        trace("reversible_grad", loss, model, X)


@pytest.mark.parametrize(
    "foreign",
    [jnp.tanh, eqx.nn.Linear(4, 4, key=jr.key(0))],
    ids=["function", "eqx.nn.Linear"],
)
@pytest.mark.parametrize("name", CUSTOM_VJP)
def test_unknown_module_in_a_chain(name, foreign):
    model = inv.Sequential([coupling(), foreign])
    # What to do with it, not another method that refuses it too.
    match = rf"{name}: layer 1 \((function tanh|Linear)\) is (neither|not an) "
    match += r".*SolvedInverseJVP"
    with pytest.raises(TypeError, match=match):
        trace(name, loss, model, X)
    # Backprop with checkpoints differentiates any callable.
    trace("checkpointed_grad", loss, model, X)


def test_rebuild_names_the_layer_it_cannot_rebuild():
    # A LeakyReLU of slope 0.1 is invertible, but its inverse divides by the slope.
    model = inv.Sequential([coupling(), inv.LeakyReLU(0.1)])
    assert not G.can_rebuild(model)
    assert G.can_rebuild(inv.Sequential([coupling(), inv.LeakyReLU(0.5)]))
    match = r"layer 1 \(LeakyReLU\) cannot be rebuilt.*'recompute'"
    with pytest.raises(ValueError, match=match):
        trace("mixed_grad", loss, model, X, strategy="rebuild")


class ToFloat32(inv.AbstractInvertible):
    """Casts its input: breaks the one-dtype rule of chains."""

    def __call__(self, x):
        return x.astype(jnp.float32)

    def inverse(self, y):
        return y.astype(jnp.float64)

    def inverse_jvp(self, x, ct_x):
        return self(x), ct_x.astype(jnp.float32)


class Pair(inv.AbstractInvertible):
    def __call__(self, x):
        return x, x

    def inverse(self, y):
        return y

    def inverse_jvp(self, x, ct_x):
        return x, ct_x


def test_a_layer_that_changes_the_dtype():
    model = inv.Sequential([coupling(), ToFloat32()])
    match = r"layer 1 \(ToFloat32\).* float64 input into a float32 output"
    with pytest.raises(TypeError, match=match):
        trace("mixed_grad", loss, model, X)


def test_a_layer_that_returns_a_pair():
    model = inv.Sequential([Pair()])
    with pytest.raises(TypeError, match=r"layer 0 \(Pair\).*one array"):
        trace("mixed_grad", lambda m, x: jnp.sum(m(x)[0]), model, X)


# --- building chains


def test_empty_chains():
    with pytest.raises(ValueError, match="Sequential: `layers` is empty"):
        inv.Sequential([])
    with pytest.raises(ValueError, match="ScannedSequential: the stack is empty"):
        stack(lambda k: coupling(key=k), depth=0)


def test_non_callable_layers_and_classes():
    with pytest.raises(TypeError, match="Sequential: these layers are not callable"):
        inv.Sequential([coupling(), 3])
    with pytest.raises(TypeError, match="classes, not layers: 1: LeakyReLU"):
        inv.Sequential([coupling(), inv.LeakyReLU])
    with pytest.raises(TypeError, match="ScannedSequential: list is not callable"):
        inv.ScannedSequential([coupling(), coupling()])


def test_scanned_sequential_needs_a_stack():
    with pytest.raises(ValueError, match="same leading .*eqx.filter_vmap"):
        inv.ScannedSequential(coupling())  # one layer, not a stack
    with pytest.raises(ValueError, match="holds no arrays.*Sequential"):
        inv.ScannedSequential(inv.LeakyReLU(0.5))


# --- dtypes


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64], ids=str)
@pytest.mark.parametrize("name", ALL)
def test_non_float_input(name, dtype):
    with pytest.raises(TypeError, match="must be a floating-point array.*Cast"):
        trace(name, loss, chain(), jnp.ones(4, dtype))


@pytest.mark.parametrize(
    "params, data", [("float32", "float64"), ("float64", "float32")]
)
@pytest.mark.parametrize("name", ALL)
def test_parameters_and_input_of_different_dtypes(name, params, data):
    # One floating dtype per chain, for every method alike: a float32 model fed
    # float64 data (easy with x64 on) is refused, not promoted layer by layer.
    match = rf"{name}: layer 0 \(AdditiveCoupling\) of the Sequential holds {params} "
    match += rf"parameters but receives a {data} input.*astype"
    with pytest.raises(TypeError, match=match):
        trace(name, loss, cast(chain(), params), X.astype(data))


# --- the loss


@pytest.mark.parametrize("name", ALL)
def test_non_scalar_loss(name):
    with pytest.raises(ValueError, match=rf"{name}: .*scalar loss, got shape \(4,\)"):
        trace(name, lambda m, x: m(x), chain(), X)


@pytest.mark.parametrize("name", ["mixed_grad", "forward_grad"])
def test_integer_loss(name):
    with pytest.raises(TypeError, match=rf"{name}: the loss must be a floating"):
        trace(name, lambda m, x: jnp.sum(m(x)).astype(jnp.int32), chain(), X)


@pytest.mark.parametrize("name", ALL)
def test_has_aux_without_a_pair(name):
    match = rf"{name}\(has_aux=True\): .*pair `\(loss, aux\)`, got an array"
    with pytest.raises(TypeError, match=match):
        trace(name, loss, chain(), X, has_aux=True)


@pytest.mark.parametrize("name", ALL)
def test_a_pair_without_has_aux(name):
    with pytest.raises(TypeError, match=rf"{name}: .*pass `has_aux=True`"):
        trace(name, lambda m, x: (loss(m, x), "aux"), chain(), X)


# --- forward mode through a chain


def _jvp_loss(model, x):
    return jnp.sum(jax.jvp(model, (x,), (jnp.ones_like(x),))[1] ** 2)


def _jacfwd_loss(model, x):
    return jnp.linalg.slogdet(jax.jacfwd(model)(x))[1]


@pytest.mark.parametrize("fun", [_jvp_loss, _jacfwd_loss], ids=["jvp", "jacfwd"])
@pytest.mark.parametrize("name", CUSTOM_VJP)
def test_forward_mode_inside_the_loss(name, fun):
    # A `custom_vjp` cannot be differentiated in forward mode: JAX says so in terms
    # of its internals ('custom_lin'); the chain rule says what to use instead.
    match = rf"{name}: a chain .* forward mode .*reverse mode"
    with pytest.raises(TypeError, match=match):
        trace(name, fun, chain(), X)
    # Methods without a custom_vjp take it.
    for other in ["checkpointed_grad", "forward_grad"]:
        trace(other, fun, chain(), X)


# --- arguments of the transforms


@pytest.mark.parametrize("value", [0, -1, 2.5, "8"])
def test_bad_anchor_every(value):
    for transform in [G.mixed_grad, G.mixed_value_and_grad]:
        with pytest.raises(ValueError, match="Mixed: `anchor_every` must be"):
            transform(loss, anchor_every=value)


@pytest.mark.parametrize("value", [0, -3, 1.5])
def test_bad_chunk_size_and_num_tangents(value):
    with pytest.raises(ValueError, match="Moonwalk: `chunk_size` must be"):
        G.moonwalk_grad(loss, chunk_size=value)
    with pytest.raises(ValueError, match="forward_grad: `chunk_size` must be"):
        G.forward_grad(loss, chunk_size=value)
    with pytest.raises(
        ValueError, match="projected_forward_grad: `num_tangents` must be"
    ):
        G.projected_forward_grad(loss, num_tangents=value)


def test_projected_forward_grad_needs_its_key():
    with pytest.raises(TypeError, match="projected_forward_grad: .*`tangent_key`"):
        G.projected_forward_grad(loss)(chain(), X)


@pytest.mark.parametrize(
    "make",
    [inv.ReLU, lambda: eqx.nn.Linear(4, 4, key=jr.key(0))],
    ids=["ReLU", "Linear"],
)
def test_log_det_and_inverse_of_a_chain_name_the_layer_without_one(make):
    model = inv.Sequential([inv.ActNorm(4), make()])
    match = r"Sequential.forward_and_log_det: .* log-determinant .*1: (ReLU|Linear)"
    with pytest.raises(TypeError, match=match):
        model.forward_and_log_det(X)
    match = r"Sequential.inverse: these layers have no `inverse`: 1: (ReLU|Linear)"
    with pytest.raises(TypeError, match=match):
        model.inverse(X)


def test_a_conditional_coupling_called_without_its_condition():
    # The residual reads the half with a 3-vector condition appended: 2 + 3 inputs.
    residual = eqx.nn.MLP(5, 2, 8, 1, key=jr.key(0))
    layer = inv.AdditiveCoupling(residual)
    assert layer(X, condition=jnp.ones(3)).shape == X.shape
    with pytest.raises(TypeError, match=r"AdditiveCoupling: .* \(no condition; "):
        layer(X)
