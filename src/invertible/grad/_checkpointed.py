"""Backprop with per-layer `jax.checkpoint`: keeps layer inputs, not internals."""

import functools as ft

import equinox as eqx
import jax
from jaxtyping import Array

from ..layers._sequential import Sequential
from ._chain import Chain, check_chain_input, fenced, split_stack, stacked_layer


@eqx.filter_checkpoint
def _apply_layer(layer, x):
    return layer(x)


def checkpointed_rule():
    def rule(chain: Chain, x: Array) -> Array:
        check_chain_input(chain, x)
        if isinstance(chain, Sequential):
            # Fenced, or XLA hoists every recomputation into the forward pass of
            # straight-line code and keeps backprop's memory (measured).
            for layer in chain.layers:
                x = fenced(ft.partial(_apply_layer, layer), x)
            return x
        stack = chain.layers

        def step(x, params):
            return _apply_layer(stacked_layer(stack, params), x), None

        return jax.lax.scan(step, x, split_stack(stack))[0]

    return rule
