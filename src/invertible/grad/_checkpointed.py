"""Plain reverse mode over chains: as is, or with gradient checkpointing."""

import dataclasses

import equinox as eqx

from .._carry import forward, replace
from .._checks import positive_int
from .._method import AbstractMethod, transform_name
from ._validate import check_chain


@dataclasses.dataclass(frozen=True)
class Backprop(AbstractMethod):
    """Ordinary reverse mode, after the trace-time checks the other methods make on
    a chain's input. Mark a chain with it to keep backprop for that chain under
    another transform."""

    def __call__(self, layout, carry):
        check_chain(layout, carry, transform_name("Backprop"))
        return layout.apply(carry)


@eqx.filter_checkpoint
def _forward_checkpointed(layer, carry, index):
    out = forward(layer, carry, index)
    return out.x, out.log_det, out.state


@dataclasses.dataclass(frozen=True)
class Checkpointed(AbstractMethod):
    """Backprop with gradient checkpointing (`jax.checkpoint`), the method of
    `invertible.grad.checkpointed_grad`. A comparison method; the layers may be
    any callables.

    **Arguments:**

    - `segment_length`: `None` (or 1) checkpoints every layer: each layer's input
      is kept and the layer recomputed in the reverse pass. `k > 1` checkpoints
      segments of `k` layers (√L checkpointing with `k ≈ √L`): each segment's
      input is kept, and the reverse pass recomputes the segment and keeps all of
      its activations while it goes back through it.
    """

    segment_length: int | None = None

    def __post_init__(self):
        positive_int(
            "Checkpointed", "segment_length", self.segment_length, optional=True
        )

    def __call__(self, layout, carry):
        check_chain(layout, carry, transform_name("checkpointed_grad"))
        k = self.segment_length or 1
        if k == 1:

            def step(c, layer, index):
                # Isolated, or XLA hoists every recomputation into the forward pass
                # of straight-line code and keeps backprop's memory (measured).
                x, log_det, state = layout.isolate(
                    _forward_checkpointed, layer, c, index
                )
                return replace(c, x=x, log_det=log_det, state=state)

            return layout.scan(step, carry)

        @eqx.filter_checkpoint
        def segment_apply(segment, c):
            out = segment.apply(c)
            return out.x, out.log_det, out.state

        def segment_step(c, segment, j):
            x, log_det, state = layout.isolate(segment_apply, segment, c)
            return replace(c, x=x, log_det=log_det, state=state)

        return layout.segments(k).scan(segment_step, carry)
