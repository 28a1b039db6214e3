"""Bad inputs and arguments raise errors that name the layer, at trace time."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import invertible as inv
from helpers import ones as _ones


def _assert_all_methods_raise(layer, x, error, match):
    """`__call__`, `inverse` and `inverse_jvp` all reject `x`."""
    with pytest.raises(error, match=match):
        layer(x)
    with pytest.raises(error, match=match):
        layer.inverse(x)
    with pytest.raises(error, match=match):
        layer.inverse_jvp(x, x)


def _affine(half_channels, spatial=()):
    # A conditioner that ignores its input: the checks only look at shapes.
    def conditioner(x1):
        return jnp.zeros((2 * half_channels, *spatial), x1.dtype)

    return inv.AffineCoupling(conditioner)


# AffineCoupling


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("shape", [(3,), (5, 2, 2), ()], ids=str)
def test_affine_coupling_needs_even_channels(shape):
    _assert_all_methods_raise(_affine(1), _ones(*shape), ValueError, "AffineCoupling")


@pytest.mark.usefixtures("own_checks")
def test_affine_coupling_rejects_integer_input():
    layer = _affine(2)
    _assert_all_methods_raise(layer, _ones(4, dtype=jnp.int32), TypeError, "Affine")


@pytest.mark.usefixtures("own_checks")
def test_affine_coupling_checks_conditioner_output():
    same_channels = inv.AffineCoupling(lambda x1: x1)  # needs twice the channels
    with pytest.raises(ValueError, match="AffineCoupling.*conditioner"):
        same_channels(_ones(4))
    with pytest.raises(ValueError, match="AffineCoupling.*conditioner"):
        same_channels.inverse(_ones(4))
    with pytest.raises(ValueError, match="AffineCoupling.*conditioner"):
        same_channels.inverse_jvp(_ones(4), _ones(4))
    wrong_spatial = _affine(1, spatial=(3, 3))
    with pytest.raises(ValueError, match="AffineCoupling.*conditioner"):
        wrong_spatial(_ones(2, 2, 2))


@pytest.mark.usefixtures("own_checks")
def test_affine_coupling_checks_cotangent_shape():
    with pytest.raises(ValueError, match="AffineCoupling.*ct_x"):
        _affine(2).inverse_jvp(_ones(4), _ones(6))


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_affine_coupling_needs_positive_scale_bound(bound):
    with pytest.raises(ValueError, match="AffineCoupling.*max_log_scale"):
        inv.AffineCoupling(lambda x1: x1, max_log_scale=bound)


# Squeeze


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("shape", [(4,), (4, 4), (1, 4, 4, 4)], ids=str)
def test_squeeze_needs_an_image(shape):
    _assert_all_methods_raise(inv.Squeeze(), _ones(*shape), ValueError, "Squeeze")


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("shape", [(1, 3, 4), (1, 4, 3), (1, 3, 3)], ids=str)
def test_squeeze_needs_even_height_and_width(shape):
    layer = inv.Squeeze()
    with pytest.raises(ValueError, match="Squeeze.*even"):
        layer(_ones(*shape))
    with pytest.raises(ValueError, match="Squeeze.*even"):
        layer.inverse_jvp(_ones(*shape), _ones(*shape))


@pytest.mark.usefixtures("own_checks")
def test_squeeze_inverse_needs_channels_multiple_of_4():
    with pytest.raises(ValueError, match="Squeeze.*multiple of 4"):
        inv.Squeeze().inverse(_ones(6, 2, 2))


@pytest.mark.usefixtures("own_checks")
def test_squeeze_rejects_integer_input_and_bad_cotangent():
    _assert_all_methods_raise(
        inv.Squeeze(), _ones(4, 2, 2, dtype=jnp.int32), TypeError, "Squeeze"
    )
    with pytest.raises(ValueError, match="Squeeze.*ct_x"):
        inv.Squeeze().inverse_jvp(_ones(1, 2, 2), _ones(1, 2, 4))


# Permute


@pytest.mark.parametrize(
    "permutation",
    [[0, 0, 1], [0, 3, 1], [-1, 0, 1], [[0, 1], [1, 0]], [], [0.0, 1.0], [True]],
    ids=str,
)
@pytest.mark.usefixtures("own_checks")
def test_permute_rejects_a_non_permutation(permutation):
    with pytest.raises(ValueError, match="Permute.*permutation"):
        inv.Permute(permutation)


@pytest.mark.usefixtures("own_checks")
def test_permute_checks_a_traced_permutation_at_run_time():
    build = jax.jit(lambda p: inv.Permute(p).permutation)
    assert build(jnp.array([2, 0, 1])).tolist() == [2, 0, 1]
    with pytest.raises(Exception, match="Permute.*not a permutation"):
        jax.block_until_ready(build(jnp.array([0, 0, 1])))


@pytest.mark.usefixtures("own_checks")
def test_permute_constructors_check_their_size():
    with pytest.raises(ValueError, match="swap_halves.*even"):
        inv.Permute.swap_halves(5)
    with pytest.raises(ValueError, match="Permute.*channels"):
        inv.Permute.reverse(0)
    with pytest.raises(ValueError, match="Permute.*channels"):
        inv.Permute.random(0, key=jr.key(0))


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("shape", [(4,), (2, 2, 2), ()], ids=str)
def test_permute_checks_channel_count(shape):
    layer = inv.Permute.reverse(3)
    _assert_all_methods_raise(layer, _ones(*shape), ValueError, "Permute.*3")


@pytest.mark.usefixtures("own_checks")
def test_permute_rejects_integer_input_and_bad_cotangent():
    layer = inv.Permute.reverse(3)
    _assert_all_methods_raise(layer, _ones(3, dtype=jnp.int32), TypeError, "Permute")
    with pytest.raises(ValueError, match="Permute.*ct_x"):
        layer.inverse_jvp(_ones(3), _ones(3, 2))


# Asinh


@pytest.mark.usefixtures("own_checks")
def test_asinh_rejects_integer_input_and_bad_cotangent():
    layer = inv.Asinh()
    _assert_all_methods_raise(layer, _ones(3, dtype=jnp.int32), TypeError, "Asinh")
    with pytest.raises(ValueError, match="Asinh.*ct_x"):
        layer.inverse_jvp(_ones(3), _ones(4))


# InvertibleLinear and Invertible1x1Conv


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("size", [0, -2, 2.0, True])
def test_lu_layers_need_a_positive_size(size):
    with pytest.raises(ValueError, match="InvertibleLinear.*features"):
        inv.InvertibleLinear(size, key=jr.key(0))
    with pytest.raises(ValueError, match="Invertible1x1Conv.*channels"):
        inv.Invertible1x1Conv(size, key=jr.key(0))


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("shape", [(4,), (3, 1), (), (3, 2, 2)], ids=str)
def test_invertible_linear_needs_a_vector_of_its_size(shape):
    layer = inv.InvertibleLinear(3, key=jr.key(0))
    _assert_all_methods_raise(layer, _ones(*shape), ValueError, r"InvertibleLinear.*3")


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("shape", [(4, 2, 2), (3,), (3, 2), (1, 3, 2, 2)], ids=str)
def test_invertible_1x1_conv_needs_an_image_with_its_channels(shape):
    layer = inv.Invertible1x1Conv(3, key=jr.key(0))
    _assert_all_methods_raise(layer, _ones(*shape), ValueError, "Invertible1x1Conv")


@pytest.mark.usefixtures("own_checks")
def test_lu_layers_reject_integer_input_and_bad_cotangent():
    linear = inv.InvertibleLinear(3, key=jr.key(0))
    conv = inv.Invertible1x1Conv(3, key=jr.key(0))
    _assert_all_methods_raise(
        linear, _ones(3, dtype=jnp.int32), TypeError, "InvertibleLinear"
    )
    _assert_all_methods_raise(
        conv, _ones(3, 2, 2, dtype=jnp.int32), TypeError, "Invertible1x1Conv"
    )
    with pytest.raises(ValueError, match="InvertibleLinear.*cotangent"):
        linear.inverse_jvp(_ones(3), _ones(4))
    with pytest.raises(ValueError, match="Invertible1x1Conv.*cotangent"):
        conv.inverse_jvp(_ones(3, 2, 2), _ones(2, 2, 2))


# ActNorm


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("channels", [0, 2.0, None])
def test_actnorm_needs_a_positive_channel_count(channels):
    with pytest.raises(ValueError, match="ActNorm.*channels"):
        inv.ActNorm(channels)


@pytest.mark.usefixtures("own_checks")
@pytest.mark.parametrize("shape", [(4,), (2, 3, 3), ()], ids=str)
def test_actnorm_checks_channel_count(shape):
    _assert_all_methods_raise(inv.ActNorm(3), _ones(*shape), ValueError, "ActNorm.*3")


@pytest.mark.usefixtures("own_checks")
def test_actnorm_rejects_integer_input_and_bad_cotangent():
    layer = inv.ActNorm(3)
    _assert_all_methods_raise(layer, _ones(3, dtype=jnp.int32), TypeError, "ActNorm")
    with pytest.raises(ValueError, match="ActNorm.*ct_x"):
        layer.inverse_jvp(_ones(3, 2), _ones(3, 4))


@pytest.mark.usefixtures("own_checks")
def test_actnorm_from_data_needs_a_float_batch():
    with pytest.raises(ValueError, match="ActNorm.from_data.*batch"):
        inv.ActNorm.from_data(_ones(3))
    with pytest.raises(TypeError, match="ActNorm.from_data"):
        inv.ActNorm.from_data(np.ones((2, 3), np.int32))
