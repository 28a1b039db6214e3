"""What travels along a chain (`Carry`), and the one place where layers are called.

A chain maps a carry to a carry: the activation `x` and, when they are in use, the
accumulated log-determinant, the chain's random key, an Equinox `State` and a
condition (context) that every layer sees. Every method of `invertible.grad`, every
recomputation and the batched path call a layer only through the functions of this
module, so that keys, state, conditions and log-dets reach layers the same way
everywhere:

- the layer at position `index` of a chain gets `jax.random.fold_in(key, index)`:
  every recomputation sees the key the primal pass saw, with nothing stored;
- a stateful layer (Equinox's `StatefulLayer` protocol) reads the state as it was
  at the chain's call; only the primal pass threads its updates through;
- a condition is passed as the keyword `condition` to the layers that take one;
- with a log-det in the carry, layers are called through `forward_and_log_det`.

A carry may also hold a whole batch (`Carry.batch`): inside `jax.vmap`, the chain
methods run once on the batch, and every call here maps the per-example layer over
it with the axis name of the `vmap` (so that batch statistics still work), keeping
the layer's parameters outside the map so that their gradients contract over the
batch directly.
"""

import dataclasses
import functools as ft
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PyTree

from ._abstract import (
    AbstractChain,
    AbstractInvertible,
    AbstractNonSubmersive,
    AbstractSubmersive,
)
from ._signatures import takes


@dataclasses.dataclass(frozen=True)
class Batch:
    """How a carry holds a batch: along axis 0 of `x` and `log_det`, inside a `vmap`
    named `axis_name`; `key` and `condition` say whether those are per example."""

    axis_name: Any
    key: bool
    condition: bool


class Index(NamedTuple):
    """Where a layer is. `position`: its place in the chain (an int, or traced in a
    scan), from which its key is derived; `entry`: its place in the layout's
    storage (a tuple index, or a stack entry); `sub`: its place within a stacked
    block (static); `fold_key`: `False` for a lone layer, which gets the carry's
    key as it was given."""

    position: Any
    entry: Any
    sub: int = 0
    fold_key: bool = True


class Carry(eqx.Module):
    """The state that travels along a chain.

    - `x`: the activation.
    - `log_det`: the accumulated `log |det ∂x/∂x_0|` (one scalar per example), or
      `None` when no log-det is tracked.
    - `key`: the chain's random key, or `None`; layer `i` uses `fold_in(key, i)`.
    - `state`: an `equinox.nn.State` for stateful layers, or `None`.
    - `condition`: an array passed to every layer that takes a `condition`, or
      `None`.
    - `batch`: `None` for one example; see `Batch`.
    """

    x: Array
    log_det: Array | None = None
    key: Any = None
    state: Any = None
    condition: Array | None = None
    batch: Batch | None = eqx.field(default=None, static=True)


def replace(carry: Carry, **changes) -> Carry:
    """`carry` with some fields changed (no validation: fields may hold tracers)."""
    new = object.__new__(Carry)
    for field in dataclasses.fields(Carry):
        value = changes.get(field.name, getattr(carry, field.name))
        object.__setattr__(new, field.name, value)
    return new


# ----------------------------------------------------------------------- layer kinds


def is_chain(node: Any) -> bool:
    return isinstance(node, AbstractChain)


def is_stateful(layer: Any) -> bool:
    """Equinox's protocol: a `StatefulLayer` whose `is_stateful()` is true is called
    as `layer(x, state) -> (y, state)`."""
    return isinstance(layer, eqx.nn.StatefulLayer) and layer.is_stateful()


def is_submersive(layer: Any) -> bool:
    """Whether the layer's vijp needs no fragment."""
    if is_chain(layer):
        return all(map(is_submersive, layer.layout.layer_types()))
    return isinstance(layer, AbstractSubmersive)


def is_invertible(layer: Any) -> bool:
    if is_chain(layer):
        return all(map(is_invertible, layer.layout.layer_types()))
    return isinstance(layer, AbstractInvertible)


def needs_fragment(layer: Any) -> bool:
    if is_chain(layer):
        return any(map(needs_fragment, layer.layout.layer_types()))
    return isinstance(layer, AbstractNonSubmersive)


def is_known(layer: Any) -> bool:
    """Whether the layer has an `inverse_jvp` (with or without a fragment)."""
    return is_submersive(layer) or needs_fragment(layer)


# ----------------------------------------------------------------- per example, batch


def layer_key(carry: Carry, index: "Index | int") -> Any:
    """The key of the layer at `index` (an `Index`, or the position in the chain)."""
    if carry.key is None or (isinstance(index, Index) and not index.fold_key):
        return carry.key
    position = index.position if isinstance(index, Index) else index
    if carry.batch is not None and carry.batch.key:  # one key per example
        return jax.vmap(jr.fold_in, in_axes=(0, None))(carry.key, position)
    return jr.fold_in(carry.key, position)


def per_example(fn: Callable, carry: Carry, *args, out_axes=0):
    """`fn(example_carry, *args)`, mapped over the batch when `carry` holds one.

    `args` are per-example arrays (batched along axis 0 with the carry) or `None`.
    The state and whatever `fn` closes over (the layer) stay outside the map.
    """
    if carry.batch is None:
        return fn(carry, *args)
    batch = carry.batch
    state = carry.state

    def one(x, log_det, key, condition, *args):
        example = Carry(x, log_det, key, state, condition)
        return fn(example, *args)

    in_axes = (
        0,
        None if carry.log_det is None else 0,
        0 if batch.key and carry.key is not None else None,
        0 if batch.condition and carry.condition is not None else None,
        *[None if a is None else 0 for a in args],
    )
    mapped = jax.vmap(
        one, in_axes=in_axes, out_axes=out_axes, axis_name=batch.axis_name
    )
    return mapped(carry.x, carry.log_det, carry.key, carry.condition, *args)


def _fresh(state):
    """A copy of an `eqx.nn.State` for a layer to use: `state.set` invalidates the
    object it is called on, and the methods call each layer more than once."""
    leaves, treedef = jax.tree.flatten(state)
    return jax.tree.unflatten(treedef, leaves)


def _options(layer: Any, carry: Carry, index, method: str) -> dict:
    """Keyword arguments for one of `layer`'s methods: the per-layer key, the
    condition and (for methods other than `__call__` of stateful layers) the state,
    each when there is one and the method takes it. A layer whose methods take no
    `key` or `condition` does not depend on them."""
    options = {}
    key = layer_key(carry, index)
    if key is not None and takes(layer, "key", method):
        options["key"] = key
    if carry.condition is not None and takes(layer, "condition", method):
        options["condition"] = carry.condition
    if method != "__call__" and is_stateful(layer) and takes(layer, "state", method):
        options["state"] = _fresh(carry.state)
    return options


# ------------------------------------------------------------------------- the calls

# The index a layer sees inside a call traced once: its key is folded beforehand.
_FOLDED = Index(0, 0, 0, fold_key=False)


def traced_once(call: Callable) -> Callable:
    """`call(layer, carry, *args, index=...)`, traced once per distinct layer
    structure (and argument shapes) rather than once per layer: a nested `jit`,
    which XLA inlines, hit in its cache by every layer alike. The per-layer key is
    folded outside, so that layers differ only in their arrays. A chain's methods
    call each layer several times (phase 1, the sweep, the repairs): traced per
    layer, they multiplied compile time."""
    jitted = eqx.filter_jit(
        lambda layer, carry, *args: call(layer, carry, *args, index=_FOLDED)
    )

    @ft.wraps(call)
    def run(layer, carry, *args, index):
        folded = replace(carry, key=layer_key(carry, index))
        out = jitted(layer, folded, *args)
        # The carry that comes out travels on with the chain's key, not this layer's.
        is_carry = lambda o: isinstance(o, Carry)
        restore = lambda o: replace(o, key=carry.key) if is_carry(o) else o
        return jax.tree.map(restore, out, is_leaf=is_carry)

    return run


def _forward_one(layer: Any, carry: Carry, index) -> tuple:
    """`(y, log_det of this layer or None, new state or None)` for one example."""
    method = "__call__" if carry.log_det is None else "forward_and_log_det"
    options = _options(layer, carry, index, method)
    if carry.log_det is not None:
        y, log_det = layer.forward_and_log_det(carry.x, **options)
        return y, log_det, None
    if is_stateful(layer):
        y, state = layer(carry.x, _fresh(carry.state), **options)
        return y, None, state
    return layer(carry.x, **options), None, None


def forward(layer: Any, carry: Carry, index) -> Carry:
    """Apply one layer: the only place a layer's `__call__` (or
    `forward_and_log_det`) is called."""
    return _forward(layer, carry, index=index)


@traced_once
def _forward(layer: Any, carry: Carry, *, index) -> Carry:
    y, log_det, state = per_example(
        lambda c: _forward_one(layer, c, index), carry, out_axes=(0, 0, None)
    )
    return replace(
        carry,
        x=y,
        log_det=None if log_det is None else carry.log_det + log_det,
        state=carry.state if state is None else state,
    )


def factors(layer: Any) -> bool:
    """Whether the layer drops part of its input that its `inverse` needs back
    (`invertible.FactorOut`: the factored channels)."""
    return callable(getattr(layer, "factored", None))


def factored(layer: Any, carry: Carry) -> Array:
    """The part of the input a factoring layer drops."""
    return per_example(lambda c: layer.factored(c.x), carry)


def inverse(layer: Any, carry: Carry, index, z: Array | None = None) -> Carry:
    """`carry` with `x` replaced by the input of the layer whose output it is (and,
    with a log-det, the inverse's log-det added). `z`: the dropped part, for a
    factoring layer."""
    return _inverse(layer, carry, z, index=index)


@traced_once
def _inverse(layer: Any, carry: Carry, z: Array | None = None, *, index) -> Carry:

    def one(c, z):
        method = "inverse" if c.log_det is None else "inverse_and_log_det"
        options = _options(layer, c, index, method)
        if z is not None:
            options["z"] = z
        if c.log_det is None:
            return layer.inverse(c.x, **options), None
        return layer.inverse_and_log_det(c.x, **options)

    x, log_det = per_example(one, carry, z)
    return replace(
        carry, x=x, log_det=None if log_det is None else carry.log_det + log_det
    )


def _inverse_jvp_one(layer, carry, ct_x, ct_log_det, fragment, index):
    """`(y, log_det of this layer or None, ct_y)` for one example."""
    if needs_fragment(layer):
        options = _options(layer, carry, index, "inverse_jvp")
        y, ct_y = layer.inverse_jvp(carry.x, ct_x, fragment, **options)
        log_det = None
    elif carry.log_det is not None:
        options = _options(layer, carry, index, "inverse_jvp_and_log_det")
        y, log_det, ct_y = layer.inverse_jvp_and_log_det(
            carry.x, ct_x, ct_log_det, **options
        )
    else:
        options = _options(layer, carry, index, "inverse_jvp")
        y, ct_y = layer.inverse_jvp(carry.x, ct_x, **options)
        log_det = None
    return y, log_det, ct_y


@traced_once
def inverse_jvp(layer, carry: Carry, ct_x, ct_log_det=None, fragment=None, *, index):
    """The vijp: `(carry at the layer's output, ct_y)`. With a log-det in the carry,
    the vijp of the augmented map `(x, a) -> (f(x), a + log|det f'(x)|)`, whose
    log-det cotangent `ct_log_det` passes through unchanged."""
    y, log_det, ct_y = per_example(
        lambda c, ct, cl, fr: _inverse_jvp_one(layer, c, ct, cl, fr, index),
        carry,
        ct_x,
        ct_log_det,
        fragment,
    )
    out = replace(
        carry, x=y, log_det=None if log_det is None else carry.log_det + log_det
    )
    return out, ct_y


@traced_once
def fragment(layer: Any, carry: Carry, ct_y, *, index) -> PyTree:
    """The part of `ct_y` that the layer's vjp loses (non-submersive layers)."""

    def one(c, ct):
        return layer.fragment(c.x, ct, **_options(layer, c, index, "fragment"))

    return per_example(one, carry, ct_y)


@traced_once
def inverse_jvp_and_grads(
    layer, carry: Carry, ct_x, ct_log_det=None, fragment=None, *, index
):
    """One step of the forward sweep: the vijp and the parameter gradient together.

    Returns `(carry at the output, ct_y, grads, ct_condition)`: `grads` is
    `ct_y ∂y/∂θ (+ ct_log_det ∂log_det/∂θ)`, with the structure of `layer`
    (`None` for non-differentiable leaves), and `ct_condition` the same for the
    condition (`None` without one). The vjp is taken of the vijp's own primal
    output, with `ct_y` as an auxiliary output, so the layer's forward computation
    is shared between the two.
    """

    def primal(layer, condition):
        c = replace(carry, condition=condition)
        out, ct_y = inverse_jvp(layer, c, ct_x, ct_log_det, fragment, index=index)
        return (out.x, out.log_det), (out, ct_y)

    diff, vjp, (out, ct_y) = eqx.filter_vjp(
        primal, layer, carry.condition, has_aux=True
    )
    ct_out = (ct_y, None if diff[1] is None else ct_log_det)
    grads, ct_condition = vjp(ct_out)
    return out, ct_y, grads, ct_condition


@traced_once
def input_vjp(layer, carry: Carry, ct_y, ct_log_det=None, *, index):
    """Reverse mode through one layer with respect to its input alone (parameters
    and condition held constant): `ct_x` for the output cotangents `ct_y` (and
    `ct_log_det`)."""

    def primal(x):
        out = forward(layer, replace(carry, x=x), index)
        return out.x, out.log_det

    (_, log_det), vjp = jax.vjp(primal, carry.x)
    (ct_x,) = vjp((ct_y, None if log_det is None else ct_log_det))
    return ct_x


@traced_once
def vjp_and_grads(layer, carry: Carry, ct_y, ct_log_det=None, *, index):
    """Reverse mode through one layer at its input `carry`: `(ct_x, grads,
    ct_condition)` for the output cotangents `ct_y` (and `ct_log_det`)."""

    def primal(layer, x, condition):
        out = forward(layer, replace(carry, x=x, condition=condition), index)
        return out.x, out.log_det

    (_, log_det), vjp = eqx.filter_vjp(primal, layer, carry.x, carry.condition)
    grads, ct_x, ct_condition = vjp((ct_y, None if log_det is None else ct_log_det))
    return ct_x, grads, ct_condition


def zeros_like_tree(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)
