"""Reversible backprop: rebuild each layer's input from its output with `inverse`."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from .._carry import (
    factored,
    factors,
    forward,
    inverse,
    is_invertible,
    replace,
    vjp_and_grads,
)
from ._rule import AbstractRuleMethod, Cotangents
from ._sweep import parameter_zeros
from ._taps import barrier
from ._validate import require_invertible, require_known


@dataclasses.dataclass(frozen=True)
class Reversible(AbstractRuleMethod):
    """Reversible backprop, RevBackprop (the method of
    `invertible.grad.reversible_grad`): keeps only the chain's output (and the
    parts that `invertible.FactorOut` layers send to the base density)."""

    transform: ClassVar[str] = "reversible_grad"

    def handles(self, layer) -> bool:
        return is_invertible(layer) or factors(layer)

    def check(self, layout, carry, name):
        super().check(layout, carry, name)
        # A layer that no method handles gets the advice that fits it, not the
        # advice to use a method that refuses it too.
        require_known(layout, name)
        require_invertible(layout, name)

    def forward(self, layout, carry):
        shape = lambda layer, c: factored(layer, c) if factors(layer) else None
        kept = layout.zeros(shape, carry)

        def step(state, layer, index):
            c, kept = state
            if factors(layer):
                kept = layout.write(kept, index, factored(layer, c))
            return forward(layer, c, index), kept

        out, kept = layout.scan(step, (carry, kept))
        return out, (out.x, kept)  # the output, and any factored parts

    def backward(self, residuals, ct, layout, carry):
        y, kept = residuals
        ct_x, ct_log_det = ct

        def step(state, layer, index):
            c, ct_x, ct_condition, grads = state

            def one(c, ct_x):
                z = layout.read(kept, index) if factors(layer) else None
                below = inverse(layer, replace(c, log_det=None), index, z)
                below = replace(below, log_det=c.log_det)
                ct_below, g, g_condition = vjp_and_grads(
                    layer, below, ct_x, ct_log_det, index=index
                )
                return barrier((below.x, ct_below, g, g_condition))

            x, ct_x, g, g_condition = layout.isolate(one, c, ct_x)
            grads = layout.write(grads, index, g)
            if ct_condition is not None:
                ct_condition = jax.tree.map(jnp.add, ct_condition, g_condition)
            return replace(c, x=x), ct_x, ct_condition, grads

        init = (
            replace(carry, x=y),
            ct_x,
            jax.tree.map(jnp.zeros_like, carry.condition),
            parameter_zeros(layout, carry),
        )
        _, ct_x, ct_condition, grads = layout.scan(step, init, reverse=True)
        return Cotangents(grads, ct_x, ct_log_det, ct_condition)
