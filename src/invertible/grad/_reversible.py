"""Reversible backprop: rebuild each layer's input from its output with `inverse`."""

import equinox as eqx
import jax
from jaxtyping import Array

from ..layers._sequential import Sequential
from ._batching import batch_aware
from ._chain import (
    Chain,
    barrier,
    check_chain_input,
    example_layers,
    keep_perturbed,
    require_invertible,
    split_stack,
    stacked_layer,
)
from ._moonwalk import _apply


def reversible_rule():
    def rule(chain: Chain, x: Array) -> Array:
        require_invertible(example_layers(chain), "reversible_grad")
        check_chain_input(chain, x)
        length = None if isinstance(chain, Sequential) else chain.length
        apply = lambda layers, x, _: _reversible((layers, x), length)
        return batch_aware(apply)(chain.layers, x)

    return rule


def _backward_step(layer, y, ct_y):
    x = layer.inverse(y)
    _, vjp = eqx.filter_vjp(lambda layer, x: layer(x), layer, x)
    grads, ct_x = vjp(ct_y)
    return barrier((x, ct_x, grads))


@eqx.filter_custom_vjp
def _reversible(vjp_arg, length):
    layers, x = vjp_arg
    return _apply(layers, length, x)


@_reversible.def_fwd
def _reversible_fwd(perturbed, vjp_arg, length):
    del perturbed
    layers, x = vjp_arg
    y = _apply(layers, length, x)
    return y, y  # only the output is kept


@_reversible.def_bwd
def _reversible_bwd(y, ct_y, perturbed, vjp_arg, length):
    layers, _ = vjp_arg
    if length is None:
        grads = [None] * len(layers)
        for i in reversed(range(len(layers))):
            y, ct_y, grads[i] = _backward_step(layers[i], y, ct_y)
        grads = tuple(grads)
    else:

        def step(carry, params):
            y, ct_y, g = _backward_step(stacked_layer(layers, params), *carry)
            return (y, ct_y), g

        carry = (y, ct_y)
        (y, ct_y), grads = jax.lax.scan(step, carry, split_stack(layers), reverse=True)
    return keep_perturbed((grads, ct_y), perturbed)
