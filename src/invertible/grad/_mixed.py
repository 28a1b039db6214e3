"""Mixed mode: `h_0` by an input-only reverse pass, then the forward sweep.

Phase 1 shares the primal forward pass: the chain is linearised with respect to its
input alone (parameters held constant), so reverse mode keeps only what the
*input* path needs (a ReLU mask, never a layer input). Identity taps record the
anchors (at every segment start) and the fragments during that reverse pass.
Phase 2 is the forward sweep.
"""

import dataclasses
from typing import ClassVar

import equinox as eqx
import jax

from .._carry import Carry, forward, fragment, is_known, needs_fragment, replace
from .._checks import positive_int
from .._layout import AbstractLayout
from ._rule import AbstractRuleMethod, Cotangents
from ._sweep import sweep
from ._taps import identity, tap
from ._validate import require_known


def _saveable(primitive, *_, **__) -> bool:
    # Phase 1 keeps whatever the input path needs, except broadcasts: `jax.nn.relu`'s
    # JVP rule broadcasts a zero to the layer's width, and keeping it would cost four
    # times the mask it sits beside. It is recomputed instead.
    return primitive is not jax.lax.broadcast_in_dim_p


def _fragment_shape(layer, carry: Carry):
    if not needs_fragment(layer):
        return None
    y = forward(layer, carry, 0).x
    return fragment(layer, carry, y, index=0)


@dataclasses.dataclass(frozen=True)
class Mixed(AbstractRuleMethod):
    """Mixed mode (the method of `invertible.grad.mixed_grad`).

    **Arguments:**

    - `anchor_every`: record the exact cotangent every this many layers and reset
      the sweep to it. The vijp recursion multiplies round-off by inverse
      Jacobians; anchors bound that growth at the cost of one cotangent per
      `anchor_every` layers. `None` turns anchors off.
    """

    anchor_every: int | None = 8
    transform: ClassVar[str] = "mixed_grad"

    def __post_init__(self):
        positive_int("Mixed", "anchor_every", self.anchor_every, optional=True)

    def handles(self, layer) -> bool:
        return is_known(layer)

    def check(self, layout, carry, name):
        super().check(layout, carry, name)
        require_known(layout, name)

    def _segments(self, layout: AbstractLayout):
        return layout.segments(self.anchor_every or len(layout))

    def forward(self, layout, carry):
        segments = self._segments(layout)
        anchors = segments.zeros(lambda c: c.x, carry)
        fragments = layout.zeros(_fragment_shape, carry)

        def phase1(x, log_det, anchors, fragments):
            def layer_step(c, layer, index):
                def apply(c):
                    out = forward(layer, c, index)
                    return out.x, out.log_det, out.state

                x, log_det, state = layout.isolate(apply, c)
                if needs_fragment(layer):
                    frozen = replace(c, x=jax.lax.stop_gradient(c.x))
                    capture = eqx.Partial(_capture_fragment, layer, frozen, index)
                    x = tap((x, layout.read(fragments, index)), capture)
                return replace(c, x=x, log_det=log_det, state=state)

            def segment_step(c, segment, j):
                c = replace(c, x=tap((c.x, segments.read(anchors, j)), identity))
                return segment.scan(layer_step, c)

            out = segments.scan(segment_step, replace(carry, x=x, log_det=log_det))
            return (out.x, out.log_det), out.state

        linearised = jax.checkpoint(phase1, policy=_saveable)
        (y, log_det), pullback, state = jax.vjp(
            linearised, carry.x, carry.log_det, anchors, fragments, has_aux=True
        )
        return replace(carry, x=y, log_det=log_det, state=state), pullback

    def backward(self, pullback, ct, layout, carry):
        h0, ct_log_det, anchors, fragments = pullback(ct)
        segments = self._segments(layout)
        grads, ct_condition = sweep(layout, segments, carry, anchors, ct[1], fragments)
        return Cotangents(grads, h0, ct_log_det, ct_condition)


def _capture_fragment(layer, carry: Carry, index, ct_y):
    return fragment(layer, carry, ct_y, index=index)
