"""Methods with a reverse rule of their own: one `custom_vjp` over a whole chain.

A method of this kind gives `forward(layout, carry) -> (carry_out, residuals)` and
`backward(residuals, ct_out, layout, carry) -> Cotangents`, written once for both
layouts. This module wraps them in an `eqx.filter_custom_vjp` whose differentiated
inputs are the layers, the activation, the log-det and the condition (key and
state are not differentiated), and routes a chain that is `vmap`-ed directly
through `jax.custom_batching.custom_vmap`, so that the method runs once on the whole
batch.

Why the batched route: layers are per-example and users `vmap` the model inside the
loss. Under `vmap` a `custom_vjp`'s backward pass is vmapped too, and JAX sums the
parameter cotangents over the batch *after* it: inside a `lax.scan` sweep that is a
`(batch, parameters)` array per layer (1 GB per layer, measured). On the batch
route the carry holds the batch (`Carry.batch`), and every call of a layer maps it
over the examples with the parameters outside the map, so parameter vjps contract
over the batch directly. Elsewhere (no `vmap`, `vmap` outside the gradient for
per-example gradients, a batch of models) JAX's own batching runs the per-example
method: correct, just without that saving.
"""

import abc
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jaxtyping import Array, PyTree

from .._carry import Batch, Carry, replace
from .._layout import AbstractLayout
from .._method import AbstractMethod, running, transform_name
from ._jax_private import innermost_vmap
from ._report import report_tap
from ._taps import keep_perturbed
from ._validate import check_chain


class Cotangents(NamedTuple):
    """What a method's backward pass returns: per-layer gradients (in the layout's
    storage), the cotangents of the chain's input, log-det and condition (`None`
    where there is none), and the figures for the report (the structure of
    `report_zeros`, or `None`)."""

    layers: PyTree
    x: Array
    log_det: Array | None
    condition: PyTree
    report: dict | None = None


class AbstractRuleMethod(AbstractMethod):
    """A method given by a forward and a backward pass over the whole chain."""

    transform: ClassVar[str]  # the public transform's name, for messages

    def __call__(self, layout: AbstractLayout, carry: Carry) -> Carry:
        name = transform_name(self.transform)
        self.check(layout, carry, name)
        return forward_mode_guard(name, _run, self, layout, carry)

    def check(self, layout: AbstractLayout, carry: Carry, name: str) -> None:
        """Trace-time checks (`name`: the transform's, for messages); methods add
        their requirements on the layers."""
        check_chain(layout, carry, name)

    def report_zeros(self, layout: AbstractLayout, carry: Carry) -> dict | None:
        """Zeros shaped like the figures `backward` reports (`None`: none)."""
        return None

    @abc.abstractmethod
    def forward(self, layout: AbstractLayout, carry: Carry) -> tuple[Carry, Any]:
        """The chain's output carry, and residuals for `backward`."""

    @abc.abstractmethod
    def backward(
        self, residuals: Any, ct: tuple, layout: AbstractLayout, carry: Carry
    ) -> Cotangents:
        """`ct = (ct_x, ct_log_det)` is the output's cotangent (`ct_log_det` is `None`
        without a log-det)."""


def _layer_names(layout: AbstractLayout) -> tuple[str, ...]:
    names = tuple(type(layer).__name__ for layer in layout.layer_types())
    return names * (len(layout) // len(names))


def _run(method: AbstractRuleMethod, layout: AbstractLayout, carry: Carry) -> Carry:
    zeros = method.report_zeros(layout, carry)
    tap = None
    if zeros is not None:
        tap = report_tap(zeros, _layer_names(layout), type(method).__name__)
    is_vmap, axis_name = innermost_vmap()
    if is_vmap and carry.batch is None:
        return _on_batch(method, layout, carry, tap, axis_name)
    return _apply(method, layout, carry, tap)


def _apply(method, layout: AbstractLayout, carry: Carry, tap) -> Carry:
    vjp_arg = (layout, carry.x, carry.log_det, carry.condition, tap)
    fixed = (carry.key, carry.state)
    x, log_det, state = _chain_vjp(vjp_arg, fixed, method, carry.batch)
    return replace(carry, x=x, log_det=log_det, state=state)


def _carry_of(vjp_arg, fixed, batch) -> tuple[AbstractLayout, Carry]:
    layout, x, log_det, condition, _ = vjp_arg
    key, state = fixed
    return layout, Carry(x, log_det, key, state, condition, batch)


@eqx.filter_custom_vjp
def _chain_vjp(vjp_arg, fixed, method, batch):
    layout, carry = _carry_of(vjp_arg, fixed, batch)
    out = layout.apply(carry)
    return out.x, out.log_det, out.state


@_chain_vjp.def_fwd
def _chain_vjp_fwd(perturbed, vjp_arg, fixed, method, batch):
    del perturbed
    layout, carry = _carry_of(vjp_arg, fixed, batch)
    with running():
        out, residuals = method.forward(layout, carry)
    return (out.x, out.log_det, out.state), residuals


@_chain_vjp.def_bwd
def _chain_vjp_bwd(residuals, ct_out, perturbed, vjp_arg, fixed, method, batch):
    layout, carry = _carry_of(vjp_arg, fixed, batch)
    ct_x, ct_log_det, _ = ct_out
    if ct_x is None:  # symbolic zero: the chain's output is not used
        ct_x = jnp.zeros_like(carry.x)
    if carry.log_det is not None and ct_log_det is None:
        ct_log_det = jnp.zeros_like(carry.log_det)
    with running():
        grads = method.backward(residuals, (ct_x, ct_log_det), layout, carry)
    ct_layout = layout.cotangent(grads.layers)
    report = grads.report if vjp_arg[4] is not None else None
    cts = (ct_layout, grads.x, grads.log_det, grads.condition, report)
    return keep_perturbed(cts, perturbed)


def _on_batch(method, layout: AbstractLayout, carry: Carry, tap, axis_name) -> Carry:
    """Directly under `vmap`: run the method once on the batch (see above)."""
    dynamic, static = eqx.partition(layout, eqx.is_array)
    key, state, condition = carry.key, carry.state, carry.condition

    def per_example(dynamic, x, log_det, key, state, condition, tap):
        c = Carry(x, log_det, key, state, condition)
        out = _apply(method, eqx.combine(dynamic, static), c, tap)
        return out.x, out.log_det, out.state

    rule = custom_vmap(per_example)

    @rule.def_vmap
    def on_batch(
        axis_size, in_batched, dynamic, x, log_det, key, state, condition, tap
    ):
        b_layers, b_x, b_log_det, b_key, b_state, b_condition, b_tap = in_batched
        leaves = jax.tree.leaves
        unbatched = not any(leaves((b_layers, b_state, b_tap)))
        if b_x and unbatched:
            if log_det is not None and not b_log_det:
                log_det = jnp.broadcast_to(log_det, (axis_size, *jnp.shape(log_det)))
            batch = Batch(axis_name, any(leaves(b_key)), any(leaves(b_condition)))
            c = Carry(x, log_det, key, state, condition, batch)
            out = _apply(method, eqx.combine(dynamic, static), c, tap)
            out_batched = (
                True,
                None if out.log_det is None else True,
                jax.tree.map(lambda _: False, out.state),
            )
            return (out.x, out.log_det, out.state), out_batched
        # A batch of models, or an unbatched input: JAX's batching of the
        # per-example method.
        in_axes = jax.tree.map(lambda b: 0 if b else None, tuple(in_batched))
        out = jax.vmap(per_example, in_axes=in_axes)(
            dynamic, x, log_det, key, state, condition, tap
        )
        return out, jax.tree.map(lambda _: True, out)

    x, log_det, new_state = rule(
        dynamic, carry.x, carry.log_det, key, state, condition, tap
    )
    return replace(carry, x=x, log_det=log_det, state=new_state)


def forward_mode_guard(method: str, run, *args):
    """`run(*args)`, turning JAX's error for forward-mode autodiff of a
    `custom_vjp` into one that says what to do."""
    try:
        return run(*args)
    except (TypeError, NotImplementedError) as error:
        if "custom_vjp" not in str(error) and "custom_lin" not in str(error):
            raise
        raise TypeError(
            f"{method}: a chain (`invertible.Sequential`/`ScannedSequential`) was "
            "differentiated in forward mode (`jax.jvp`, `jax.jacfwd`, "
            f"`jax.linearize`) inside the loss. {method} differentiates each chain "
            "with a `jax.custom_vjp`, which JAX differentiates in reverse mode only. "
            "Use reverse mode inside the loss (`jax.vjp`, `jax.jacrev`), or take "
            "this gradient with `invertible.grad.checkpointed_grad` or "
            "`eqx.filter_grad`. Forward-over-reverse (`jax.jvp` of the gradient "
            "function, e.g. for Hessian-vector products) is supported."
        ) from error
