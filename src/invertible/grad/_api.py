"""The public gradient transforms."""

import functools as ft
from collections.abc import Callable

from .._method import AbstractMethod
from ._checkpointed import Checkpointed
from ._mixed import Mixed
from ._moonwalk import Moonwalk
from ._reversible import Reversible
from ._transform import method_transform, sentinel


def _transform(public: Callable, fun, by: AbstractMethod, *, value: bool, **config):
    """`public(fun, **config)`, differentiating chains `by` a method; the decorator
    form when `fun` is left out."""
    if fun is sentinel:
        return ft.partial(public, **config)
    has_aux, report = config.pop("has_aux"), config.pop("report", False)
    name = public.__name__
    return method_transform(
        fun, by, has_aux=has_aux, value=value, name=name, report=report
    )


def filter_grad(
    fun: Callable = sentinel,
    *,
    method: AbstractMethod,
    has_aux: bool = False,
    report: bool = False,
):
    """`eqx.filter_grad`, with every chain differentiated by `method`.

    Every `invertible.Sequential` and `invertible.ScannedSequential` reached from
    the first argument, built inside `fun`, or passed in another argument, and
    every invertible layer called outside a chain, is differentiated by `method`
    (chains marked with a method of their own keep it). Everything else (a stem, a
    head, the loss) is differentiated by ordinary reverse mode, so the gradients
    are `eqx.filter_grad`'s. Use it as `filter_grad(fun, method=...)`, or as a
    decorator with keyword arguments; it works on methods too.

    **Arguments:**

    - `fun`: a scalar function whose first argument is the model. Gradients are
      taken with respect to the floating-point arrays of the first positional
      argument; other leaves get `None`.
    - `method`: e.g. `invertible.grad.Mixed(anchor_every=16)`.
    - `has_aux`: whether `fun` returns `(value, aux)`.
    - `report`: whether to return, besides, an `invertible.grad.Report` of what
      the methods measured in the backward pass (drift, repairs, vijp errors).

    **Returns:**

    A function with the signature of `fun` returning the gradients (and `aux`);
    with `report=True`, the pair `(that, report)`.
    """
    config = dict(method=method, has_aux=has_aux, report=report)
    return _transform(filter_grad, fun, method, value=False, **config)


def filter_value_and_grad(
    fun: Callable = sentinel,
    *,
    method: AbstractMethod,
    has_aux: bool = False,
    report: bool = False,
):
    """As [`invertible.grad.filter_grad`][], returning `(value, grads)` like
    `eqx.filter_value_and_grad` (with `report=True`, `((value, grads), report)`)."""
    config = dict(method=method, has_aux=has_aux, report=report)
    return _transform(filter_value_and_grad, fun, method, value=True, **config)


def mixed_grad(
    fun: Callable = sentinel,
    *,
    has_aux: bool = False,
    anchor_every: int | str | None = "auto",
    strategy: str = "auto",
    on_drift: str = "repair",
    report: bool = False,
):
    """Exact gradients by Mixed mode: drop-in for `eqx.filter_grad`.

    Every chain (see [`invertible.grad.filter_grad`][]) is differentiated in two
    phases. Phase 1 runs with the forward pass and keeps only what the *input*
    path of the reverse pass needs (e.g. ReLU masks, never layer inputs) to get the
    chain's input cotangent `h_0`; it also records fragments of non-submersive
    layers and *anchors*. Phase 2 sweeps forwards with each layer's `inverse_jvp`,
    taking parameter gradients on the way with only the current activation alive.
    Everything outside the chains is differentiated by ordinary reverse mode.

    **Arguments:**

    - `fun`: a scalar function whose first argument is the model.
    - `has_aux`: whether `fun` returns `(value, aux)`.
    - `anchor_every`, `strategy`, `on_drift`: see [`invertible.grad.Mixed`][],
      which says what phase 1 keeps under each strategy and what it costs, and
      what is done with a segment whose sweep drifted. (For its other options,
      `filter_grad(fun, method=Mixed(...))`.)
    - `report`: whether to return, besides, an `invertible.grad.Report`: the
      drift measured at every segment's end (`report.drift`, the largest), and
      which segments were redone.

    **Returns:**

    A function with the signature of `fun` returning the gradients (and `aux`);
    with `report=True`, the pair `(that, report)`.

    **Raises:**

    - `ValueError` when `fun` is wrapped, if `anchor_every` is not a positive int,
      `"auto"` or `None`, or `strategy` not one of `Mixed`'s.
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
    options = dict(anchor_every=anchor_every, strategy=strategy, on_drift=on_drift)
    config = dict(has_aux=has_aux, report=report, **options)
    return _transform(mixed_grad, fun, Mixed(**options), value=False, **config)


def mixed_value_and_grad(
    fun: Callable = sentinel,
    *,
    has_aux: bool = False,
    anchor_every: int | str | None = "auto",
    strategy: str = "auto",
    on_drift: str = "repair",
    report: bool = False,
):
    """As [`invertible.grad.mixed_grad`][], returning `(value, grads)` like
    `eqx.filter_value_and_grad` (with `report=True`, `((value, grads), report)`)."""
    options = dict(anchor_every=anchor_every, strategy=strategy, on_drift=on_drift)
    config = dict(has_aux=has_aux, report=report, **options)
    return _transform(mixed_value_and_grad, fun, Mixed(**options), value=True, **config)


def moonwalk_grad(
    fun: Callable = sentinel,
    *,
    has_aux: bool = False,
    chunk_size: int | None = 16,
    on_drift: str = "repair",
    report: bool = False,
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
    - `chunk_size`, `on_drift`: see [`invertible.grad.Moonwalk`][]. The sweep
      meets an exact cotangent only at the chain's output: a drifted chain is
      redone by reverse mode (`"repair"`, default; memory still flat, time
      quadratic in depth), or its gradients poisoned with NaN (`"nan"`).
    - `report`: as for [`invertible.grad.mixed_grad`][].

    **Returns:**

    A function with the signature of `fun` returning the gradients (and `aux`);
    with `report=True`, the pair `(that, report)`.

    **Raises:**

    `ValueError` when `fun` is wrapped, if `chunk_size` is not a positive int or
    `None`. When the returned function is traced: `ValueError` if a chain holds a
    non-submersive layer (use `mixed_grad`), `TypeError` if it holds a layer that
    is not an `invertible.AbstractSubmersive`; otherwise as `mixed_grad`.
    """
    options = dict(chunk_size=chunk_size, on_drift=on_drift)
    config = dict(has_aux=has_aux, report=report, **options)
    return _transform(moonwalk_grad, fun, Moonwalk(**options), value=False, **config)


def moonwalk_value_and_grad(
    fun: Callable = sentinel,
    *,
    has_aux: bool = False,
    chunk_size: int | None = 16,
    on_drift: str = "repair",
    report: bool = False,
):
    """As [`invertible.grad.moonwalk_grad`][], returning `(value, grads)` (with
    `report=True`, `((value, grads), report)`)."""
    options = dict(chunk_size=chunk_size, on_drift=on_drift)
    config = dict(has_aux=has_aux, report=report, **options)
    method = Moonwalk(**options)
    return _transform(moonwalk_value_and_grad, fun, method, value=True, **config)


def checkpointed_grad(
    fun: Callable = sentinel,
    *,
    has_aux: bool = False,
    segment_length: int | None = None,
):
    """Backprop with gradient checkpointing (`jax.checkpoint`) on chains.

    A comparison method; the layers of a chain may be any callables. See
    [`invertible.grad.Checkpointed`][].

    **Arguments:**

    - `fun`: a scalar function whose first argument is the model.
    - `has_aux`: whether `fun` returns `(value, aux)`.
    - `segment_length`: `None` keeps every layer's input and recomputes each layer
      in the reverse pass; `k` keeps every `k`-th input and recomputes `k` layers
      at a time (√L checkpointing with `k ≈ √L`).

    **Returns:**

    A function with the signature of `fun` returning the gradients (and `aux`).
    """
    method = Checkpointed(segment_length=segment_length)
    return _transform(
        checkpointed_grad,
        fun,
        method,
        value=False,
        has_aux=has_aux,
        segment_length=segment_length,
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
    return _transform(reversible_grad, fun, Reversible(), value=False, has_aux=has_aux)
