"""Running a chain method on a whole batch when the chain is `vmap`-ed directly.

Layers are per-example and users `jax.vmap` the model inside the loss. Under
`vmap`, a `custom_vjp`'s backward pass is vmapped too, and JAX sums the parameter
cotangents over the batch *after* it: inside a `lax.scan` sweep that means a
`(batch, parameters)` array per layer (1 GB per layer in our benchmark). So when
the innermost transformation is `vmap`, the chain is routed through
`jax.custom_batching.custom_vmap` to the same method applied to layers that act on
the whole batch; their parameter vjps then contract over the batch directly.

In every other case (no `vmap`, `vmap` outside the gradient for per-example
gradients, a batch of models) the per-example method runs under JAX's own
batching: correct, just without that saving.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jax.custom_batching import custom_vmap
from jaxtyping import Array, PyTree

from .._abstract import AbstractInvertible, AbstractNonSubmersive, AbstractSubmersive


def directly_vmapped() -> bool:
    """Whether the innermost transformation being traced is `vmap`."""
    try:  # JAX exposes no public query for this; without it, use the general path.
        from jax._src.core import unsafe_get_current_trace
        from jax._src.interpreters.batching import BatchTrace
    except ImportError:  # pragma: no cover
        return False
    return isinstance(unsafe_get_current_trace(), BatchTrace)


class BatchedSubmersive(AbstractSubmersive):
    layer: AbstractSubmersive

    def __call__(self, x):
        return jax.vmap(self.layer)(x)

    def inverse_jvp(self, x, ct_x):
        return jax.vmap(self.layer.inverse_jvp)(x, ct_x)


class BatchedInvertible(AbstractInvertible):
    layer: AbstractInvertible

    def __call__(self, x):
        return jax.vmap(self.layer)(x)

    def inverse(self, y):
        return jax.vmap(self.layer.inverse)(y)

    def inverse_jvp(self, x, ct_x):
        return jax.vmap(self.layer.inverse_jvp)(x, ct_x)


class BatchedNonSubmersive(AbstractNonSubmersive):
    layer: AbstractNonSubmersive

    def __call__(self, x):
        return jax.vmap(self.layer)(x)

    def fragment(self, x, ct_y):
        return jax.vmap(self.layer.fragment)(x, ct_y)

    def inverse_jvp(self, x, ct_x, fragment):
        return jax.vmap(self.layer.inverse_jvp)(x, ct_x, fragment)


def batched(layer: Any) -> Any:
    """`layer` acting on a batch along axis 0 (its parameters stay shared)."""
    if isinstance(layer, tuple):
        return tuple(batched(each) for each in layer)
    if isinstance(layer, AbstractInvertible):
        return BatchedInvertible(layer)
    if isinstance(layer, AbstractSubmersive):
        return BatchedSubmersive(layer)
    if isinstance(layer, AbstractNonSubmersive):
        return BatchedNonSubmersive(layer)
    raise TypeError(f"cannot batch {type(layer).__name__}")  # pragma: no cover


def batch_aware(apply: Callable[[Any, Array, bool], Array]):
    """Wrap `apply(layers, x, is_batch) -> y` so that, directly under `vmap`, it
    runs once on the batch with `is_batch=True` and batched layers."""

    def run(layers: PyTree, x: Array) -> Array:
        if not directly_vmapped():
            return apply(layers, x, False)
        dynamic, static = eqx.partition(layers, eqx.is_array)

        @custom_vmap
        def per_example(dynamic, x):
            return apply(eqx.combine(dynamic, static), x, False)

        @per_example.def_vmap
        def on_batch(axis_size, in_batched, dynamic, x):
            dynamic_batched, x_batched = in_batched
            if x_batched and not any(jax.tree.leaves(dynamic_batched)):
                return apply(batched(eqx.combine(dynamic, static)), x, True), True
            # A batch of models, or an unbatched input: JAX's batching of the
            # per-example method.
            in_axes = (
                jax.tree.map(lambda b: 0 if b else None, dynamic_batched),
                0 if x_batched else None,
            )
            out = jax.vmap(
                lambda d, x: apply(eqx.combine(d, static), x, False), in_axes=in_axes
            )(dynamic, x)
            return out, True

        return per_example(dynamic, x)

    return run
