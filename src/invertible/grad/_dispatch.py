"""What Mixed's phase 1 may keep for each kind of layer: the one extensible point.

Phase 1 needs, for every layer, the reverse pass of its *input path*. Three
single-dispatch functions, keyed on the layer's type (as `lineax` dispatches its
operators' properties), say how each kind of layer can provide it; register your
own layer types with them:

- `can_rebuild(layer)`: whether its input may be rebuilt from its output with
  `inverse` during phase 1 (the "rebuild" strategy), i.e. whether it is invertible
  and its inverse well enough conditioned that rebuilding through a few of them
  keeps float32 round-off small. A rebuilt segment is still checked against the
  exact input kept at its start, and recomputed if it drifted.
- `keep_inputs(layer)`: the layer arranged to keep only the input of its
  expensive part and to relinearise it in the reverse pass (the "inputs"
  strategy); by default the whole layer under `jax.checkpoint`, for couplings
  their network.
- `pack_bits(layer)`: the layer arranged so that its piecewise-linear activations
  keep one bit per unit (the "bits" strategy); by default its computation with
  every `jax.nn.relu` and `jax.nn.leaky_relu` keeping packed bits.

The layers these return are used only inside phase 1, through the call site.
"""

import functools as ft
from typing import Any

import equinox as eqx
import jax

from .._carry import is_chain, is_invertible, is_stateful
from .._signatures import takes
from ..layers import AdditiveCoupling, AffineCoupling, LeakyReLU
from ._bits import packed_bits


class _Arranged(eqx.nn.StatefulLayer):
    """`inner`, its `__call__` and `forward_and_log_det` run through
    `arrange(fn)`; keyword arguments reach it only if it takes them."""

    inner: Any
    how: str = eqx.field(static=True)

    def is_stateful(self) -> bool:
        return is_stateful(self.inner)

    def _run(self, method: str, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if takes(self.inner, k, method)}
        fn = getattr(self.inner, method)
        if self.how == "bits":
            return packed_bits(fn)(*args, **kwargs)
        policy = jax.checkpoint_policies.nothing_saveable
        return jax.checkpoint(lambda *a: fn(*a, **kwargs), policy=policy)(*args)

    def __call__(self, *args, **kwargs):
        return self._run("__call__", *args, **kwargs)

    def forward_and_log_det(self, *args, **kwargs):
        return self._run("forward_and_log_det", *args, **kwargs)


@ft.singledispatch
def can_rebuild(layer: Any) -> bool:
    """Whether Mixed may rebuild `layer`'s input with its `inverse` in phase 1.

    **Arguments:**

    - `layer`: a layer of a chain, or a chain.

    **Returns:**

    By default, whether the layer is invertible; for a chain, whether every layer
    in it can be rebuilt. A `LeakyReLU` with a slope below 0.5 is invertible but
    cannot be rebuilt: its inverse divides by the slope, and the round-off of a
    segment's rebuilt inputs grows with every such layer.
    """
    if is_chain(layer):
        return all(map(can_rebuild, layer.layout.layer_types()))
    return is_invertible(layer)


@can_rebuild.register
def _(layer: LeakyReLU) -> bool:
    # The inverse divides negative units by the slope: through the four such
    # layers of a segment of eight, round-off grows by (1 / slope)^4.
    return layer.negative_slope >= 0.5


@ft.singledispatch
def keep_inputs(layer: Any) -> Any:
    """`layer`, arranged for phase 1 to keep only its inputs and relinearise.

    **Arguments:**

    - `layer`: a layer of a chain.

    **Returns:**

    A layer computing the same function; by default `layer` under
    `jax.checkpoint`.
    """
    return _Arranged(layer, "inputs")


@keep_inputs.register
def _(layer: AdditiveCoupling) -> Any:
    return eqx.tree_at(lambda c: c.residual, layer, _Arranged(layer.residual, "inputs"))


@keep_inputs.register
def _(layer: AffineCoupling) -> Any:
    network = _Arranged(layer.conditioner, "inputs")
    return eqx.tree_at(lambda c: c.conditioner, layer, network)


@ft.singledispatch
def pack_bits(layer: Any) -> Any:
    """`layer`, arranged for phase 1 to keep one bit per unit of its ReLU and
    leaky-ReLU activations.

    **Arguments:**

    - `layer`: a layer of a chain.

    **Returns:**

    A layer computing the same function.
    """
    return _Arranged(layer, "bits")
