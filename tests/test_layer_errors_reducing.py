"""Bad inputs and arguments of the right-invertible and fragment layers (and of the
vijp helpers) raise errors that name the layer, at trace time."""

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import invertible as inv
from helpers import ones as _ones

pytestmark = pytest.mark.usefixtures("own_checks")


def _surjective(n=6, m=3):
    return inv.SurjectiveLinear(n, m, key=jr.key(0))


# SurjectiveLinear


@pytest.mark.parametrize("sizes", [(3, 4), (0, 0), (4, 0), (-2, 1), (4.0, 2)], ids=str)
def test_surjective_linear_needs_sizes_onto(sizes):
    with pytest.raises(ValueError, match="SurjectiveLinear"):
        inv.SurjectiveLinear(*sizes, key=jr.key(0))


@pytest.mark.parametrize("shape", [(5,), (7,), (6, 1), (2, 3), ()], ids=str)
def test_surjective_linear_needs_a_vector_of_its_size(shape):
    layer = _surjective()
    with pytest.raises(ValueError, match=r"SurjectiveLinear.*\(6,\)"):
        layer(_ones(*shape))
    with pytest.raises(ValueError, match="SurjectiveLinear"):
        layer.inverse_jvp(_ones(*shape), _ones(*shape))


def test_surjective_linear_rejects_integer_input_and_bad_cotangent():
    layer = _surjective()
    with pytest.raises(TypeError, match="SurjectiveLinear"):
        layer(jnp.ones(6, jnp.int32))
    with pytest.raises(TypeError, match="SurjectiveLinear"):
        layer.inverse_jvp(jnp.ones(6, jnp.int32), _ones(6))
    with pytest.raises(ValueError, match="SurjectiveLinear.*ct_x"):
        layer.inverse_jvp(_ones(6), _ones(3))


# AvgPool2d


@pytest.mark.parametrize("kernel", [0, -1, (2,), (2, 0), (2, 2, 2), "2", 1.5])
def test_avg_pool_needs_positive_kernel(kernel):
    with pytest.raises(ValueError, match="AvgPool2d"):
        inv.AvgPool2d(kernel)


@pytest.mark.parametrize(
    "kernel, shape",
    [(2, (1, 3, 4)), (2, (2, 4, 5)), (3, (1, 6, 4)), ((2, 3), (1, 4, 4))],
)
def test_avg_pool_needs_divisible_height_and_width(kernel, shape):
    layer = inv.AvgPool2d(kernel)
    with pytest.raises(ValueError, match="AvgPool2d.*multiples of the window"):
        layer(_ones(*shape))
    with pytest.raises(ValueError, match="AvgPool2d.*multiples of the window"):
        layer.inverse_jvp(_ones(*shape), _ones(*shape))


@pytest.mark.parametrize("shape", [(4, 4), (4,), (1, 1, 4, 4)], ids=str)
def test_avg_pool_needs_an_image(shape):
    with pytest.raises(ValueError, match=r"AvgPool2d.*\(channels, height, width\)"):
        inv.AvgPool2d(2)(_ones(*shape))


def test_avg_pool_rejects_integer_input_and_bad_cotangent():
    layer = inv.AvgPool2d(2)
    with pytest.raises(TypeError, match="AvgPool2d"):
        layer(jnp.ones((1, 2, 2), jnp.int32))
    with pytest.raises(ValueError, match="AvgPool2d.*ct_x"):
        layer.inverse_jvp(_ones(1, 2, 2), _ones(1, 1, 1))


# KeepChannels


@pytest.mark.parametrize("channels", [0, -1, 1.0, True])
def test_keep_channels_needs_positive_count(channels):
    with pytest.raises(ValueError, match="KeepChannels"):
        inv.KeepChannels(channels)


@pytest.mark.parametrize("shape", [(2,), (2, 3, 3), ()], ids=str)
def test_keep_channels_needs_enough_channels(shape):
    layer = inv.KeepChannels(3)
    with pytest.raises(ValueError, match="KeepChannels"):
        layer(_ones(*shape))
    with pytest.raises(ValueError, match="KeepChannels"):
        layer.inverse_jvp(_ones(*shape), _ones(*shape))


def test_keep_channels_rejects_integer_input_and_bad_cotangent():
    layer = inv.KeepChannels(1)
    with pytest.raises(TypeError, match="KeepChannels"):
        layer(jnp.ones((2, 2, 2), jnp.int32))
    with pytest.raises(ValueError, match="KeepChannels.*ct_x"):
        layer.inverse_jvp(_ones(2, 2, 2), _ones(1, 2, 2))


# ChannelPad


@pytest.mark.parametrize("out_channels", [0, -3, 2.5])
def test_channel_pad_needs_positive_count(out_channels):
    with pytest.raises(ValueError, match="ChannelPad"):
        inv.ChannelPad(out_channels)


@pytest.mark.parametrize("shape", [(5,), (4, 2, 2)], ids=str)
def test_channel_pad_cannot_pad_to_fewer_channels(shape):
    layer = inv.ChannelPad(3)
    x = _ones(*shape)
    with pytest.raises(ValueError, match="ChannelPad.*fewer channels"):
        layer(x)
    with pytest.raises(ValueError, match="ChannelPad.*fewer channels"):
        layer.fragment(x, _ones(3, *shape[1:]))
    with pytest.raises(ValueError, match="ChannelPad.*fewer channels"):
        layer.inverse_jvp(x, x, _ones(1, *shape[1:]))


def test_channel_pad_checks_cotangent_and_fragment_shapes():
    layer = inv.ChannelPad(5)
    x = _ones(2, 3, 3)
    with pytest.raises(ValueError, match="ChannelPad.*ct_y.*(5, 3, 3)"):
        layer.fragment(x, _ones(4, 3, 3))
    with pytest.raises(ValueError, match="ChannelPad.*fragment.*(3, 3, 3)"):
        layer.inverse_jvp(x, x, _ones(2, 3, 3))
    with pytest.raises(ValueError, match="ChannelPad.*ct_x"):
        layer.inverse_jvp(x, _ones(2, 3), _ones(3, 3, 3))


def test_channel_pad_rejects_integer_and_scalar_input():
    layer = inv.ChannelPad(4)
    with pytest.raises(TypeError, match="ChannelPad"):
        layer(jnp.ones((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="ChannelPad.*scalar"):
        layer(_ones())


# ReLU


def test_relu_rejects_integer_input_and_bad_shapes():
    layer = inv.ReLU()
    with pytest.raises(TypeError, match="ReLU"):
        layer(jnp.ones(3, jnp.int32))
    with pytest.raises(TypeError, match="ReLU"):
        layer.fragment(jnp.ones(3, jnp.int32), _ones(3))
    with pytest.raises(ValueError, match="ReLU.*ct_y"):
        layer.fragment(_ones(3), _ones(4))
    with pytest.raises(ValueError, match="ReLU.*fragment"):
        layer.inverse_jvp(_ones(3), _ones(3), _ones(2))
    with pytest.raises(ValueError, match="ReLU.*ct_x"):
        layer.inverse_jvp(_ones(3), _ones(2, 2), _ones(3))


def test_relu_derivative_at_zero_is_off():
    # The fragment's convention (off at x <= 0) must match the vjp's at 0.
    layer = inv.ReLU()
    x = jnp.array([-1.0, 0.0, 1.0])
    ct_y = jnp.array([2.0, 3.0, 5.0])
    (ct_x,) = jax.vjp(layer, x)[1](ct_y)
    assert ct_x.tolist() == [0.0, 0.0, 5.0]
    assert layer.fragment(x, ct_y).tolist() == [2.0, 3.0, 0.0]
    assert layer.inverse_jvp(x, ct_x, layer.fragment(x, ct_y))[1].tolist() == [
        2.0,
        3.0,
        5.0,
    ]


# The vijp helpers


def test_vijp_helpers_reject_misuse():
    with pytest.raises(ValueError, match="ChannelPad.*fragment"):
        inv.vijp(inv.ChannelPad(4), _ones(2), _ones(2))
    with pytest.raises(ValueError, match="solve_vijp.*not onto"):
        inv.solve_vijp(inv.ChannelPad(4), _ones(2), _ones(2))
    with pytest.raises(ValueError, match="solve_vijp.*ct_x"):
        inv.solve_vijp(jnp.sin, _ones(3), _ones(4))
    with pytest.raises(TypeError, match="SolvedInverseJVP.*inverse"):
        inv.SolvedInverseJVP(jnp.sin)
    with pytest.raises(TypeError, match="SolvedRightInverseJVP.*not callable"):
        inv.SolvedRightInverseJVP(3)
    with pytest.raises(TypeError, match="check_layer.*neither"):
        inv.check_layer(jnp.sin, _ones(3))
    with pytest.raises(TypeError, match="ReLU"):
        inv.check_layer(inv.ReLU(), jnp.ones(3, jnp.int32))
