"""The public gradient transforms."""

import functools as ft
from collections.abc import Callable

from ._checkpointed import checkpointed_rule
from ._mixed import mixed_rule
from ._moonwalk import moonwalk_rule
from ._reversible import reversible_rule
from ._transform import chain_transform, sentinel

_CONVENTION = """
    Same calling convention as `eqx.filter_grad`: use it as `{name}(fun, ...)`, as a
    decorator with or without keyword arguments, or on a method. Gradients are taken
    with respect to the floating-point arrays of the first positional argument;
    other leaves get `None`.
"""


def mixed_grad(
    fun: Callable = sentinel, *, has_aux: bool = False, anchor_every: int | None = 8
):
    """Exact gradients by Mixed mode: drop-in for `eqx.filter_grad`.

    Every `invertible.Sequential` and `invertible.ScannedSequential` reached from the
    first argument is differentiated in two phases. Phase 1 runs with the forward
    pass and keeps only what the *input* path of the reverse pass needs (e.g. ReLU
    masks, never layer inputs) to get the chain's input cotangent `h_0`; it also
    records fragments of non-submersive layers and *anchors*. Phase 2 sweeps
    forwards with each layer's `inverse_jvp`, taking parameter gradients on the way
    with only the current activation alive. Everything outside the chains (a stem,
    a head, the loss) is differentiated by ordinary reverse mode.

    **Arguments:**

    - `fun`: a scalar function whose first argument is the model.
    - `has_aux`: whether `fun` returns `(value, aux)`.
    - `anchor_every`: record the exact cotangent every this many layers and reset
      the sweep to it. The vijp recursion multiplies round-off by inverse
      Jacobians; anchors bound that growth at the cost of one cotangent per
      `anchor_every` layers. `None` turns anchors off.

    **Returns:**

    A function with the signature of `fun` returning the gradients (and `aux`).

    **Raises:**

    - `ValueError` when `fun` is wrapped, if `anchor_every` is not a positive int
      or `None`.
    - When the returned function is traced: `TypeError` if a layer of a chain is
      neither an `invertible.AbstractSubmersive` nor an
      `invertible.AbstractNonSubmersive`, or if its parameters' dtype differs from
      the chain's input's; `TypeError` or `ValueError`, naming the layer, if a layer
      rejects its input's shape; `TypeError`/`ValueError` if `fun` does not return
      a floating-point scalar (a pair `(scalar, aux)` with `has_aux=True`);
      `TypeError` if `fun` differentiates a chain in forward mode (`jax.jvp`,
      `jax.jacfwd`): chains are `jax.custom_vjp`s. (Forward-over-reverse, `jax.jvp`
      of the returned function, works.)

    Chains compute in their input's dtype, float16 and bfloat16 included, with
    about the accuracy of backprop in that dtype.
    """
    if fun is sentinel:
        return ft.partial(mixed_grad, has_aux=has_aux, anchor_every=anchor_every)
    rule = mixed_rule(anchor_every)
    return chain_transform(fun, rule, has_aux=has_aux, value=False, name="mixed_grad")


def mixed_value_and_grad(
    fun: Callable = sentinel, *, has_aux: bool = False, anchor_every: int | None = 8
):
    """As [`invertible.grad.mixed_grad`][], returning `(value, grads)` like
    `eqx.filter_value_and_grad`."""
    if fun is sentinel:
        return ft.partial(
            mixed_value_and_grad, has_aux=has_aux, anchor_every=anchor_every
        )
    rule = mixed_rule(anchor_every)
    return chain_transform(
        fun, rule, has_aux=has_aux, value=True, name="mixed_value_and_grad"
    )


def moonwalk_grad(
    fun: Callable = sentinel, *, has_aux: bool = False, chunk_size: int | None = 16
):
    """Exact gradients by pure Moonwalk (inverse-forward): no stored activations.

    The chain's input cotangent `h_0` is built by forward mode, one JVP per input
    element (per example), `chunk_size` of them at a time; then the forward sweep
    as in [`invertible.grad.mixed_grad`][]. Memory does not grow with depth; time
    grows with the input size, so it suits chains with small inputs. Every layer of
    a chain must be submersive (non-submersive layers need `mixed_grad`).

    **Arguments:**

    - `fun`: a scalar function whose first argument is the model.
    - `has_aux`: whether `fun` returns `(value, aux)`.
    - `chunk_size`: how many JVPs run at once (`None`: all); trades memory for time.

    **Returns:**

    A function with the signature of `fun` returning the gradients (and `aux`).

    **Raises:**

    `ValueError` when `fun` is wrapped, if `chunk_size` is not a positive int or
    `None`. When the returned function is traced: `ValueError` if a chain holds a
    non-submersive layer (use `mixed_grad`), `TypeError` if it holds a layer that
    is not an `invertible.AbstractSubmersive`; otherwise as `mixed_grad`.
    """
    if fun is sentinel:
        return ft.partial(moonwalk_grad, has_aux=has_aux, chunk_size=chunk_size)
    rule = moonwalk_rule(chunk_size)
    return chain_transform(
        fun, rule, has_aux=has_aux, value=False, name="moonwalk_grad"
    )


def moonwalk_value_and_grad(
    fun: Callable = sentinel, *, has_aux: bool = False, chunk_size: int | None = 16
):
    """As [`invertible.grad.moonwalk_grad`][], returning `(value, grads)`."""
    if fun is sentinel:
        return ft.partial(
            moonwalk_value_and_grad, has_aux=has_aux, chunk_size=chunk_size
        )
    rule = moonwalk_rule(chunk_size)
    return chain_transform(
        fun, rule, has_aux=has_aux, value=True, name="moonwalk_value_and_grad"
    )


def checkpointed_grad(fun: Callable = sentinel, *, has_aux: bool = False):
    """Backprop with per-layer gradient checkpointing (`jax.checkpoint`) on chains.

    Keeps each layer's input and recomputes the layer during the reverse pass. A
    comparison method; the layers of a chain may be any callables.

    **Arguments:**

    - `fun`: a scalar function whose first argument is the model.
    - `has_aux`: whether `fun` returns `(value, aux)`.

    **Returns:**

    A function with the signature of `fun` returning the gradients (and `aux`).
    """
    if fun is sentinel:
        return ft.partial(checkpointed_grad, has_aux=has_aux)
    rule = checkpointed_rule()
    return chain_transform(
        fun,
        rule,
        has_aux=has_aux,
        value=False,
        name="checkpointed_grad",
        custom_vjp=False,
    )


def reversible_grad(fun: Callable = sentinel, *, has_aux: bool = False):
    """Reversible backprop (RevBackprop, Gomez et al. 2017) on chains.

    Keeps only each chain's output and rebuilds every layer's input with its
    `inverse` during the reverse pass: constant memory, but round-off in the
    reconstruction grows with depth (see the accuracy benchmark). Every layer must
    be an `invertible.AbstractInvertible`. A comparison method.

    **Arguments:**

    - `fun`: a scalar function whose first argument is the model.
    - `has_aux`: whether `fun` returns `(value, aux)`.

    **Returns:**

    A function with the signature of `fun` returning the gradients (and `aux`).

    **Raises:**

    When the returned function is traced: `TypeError` if a layer of a chain has no
    `inverse` (is not an `invertible.AbstractInvertible`); otherwise as
    [`invertible.grad.mixed_grad`][].
    """
    if fun is sentinel:
        return ft.partial(reversible_grad, has_aux=has_aux)
    rule = reversible_rule()
    return chain_transform(
        fun, rule, has_aux=has_aux, value=False, name="reversible_grad"
    )


for _f in (checkpointed_grad, reversible_grad):
    _f.__doc__ += _CONVENTION.format(name=_f.__name__)
