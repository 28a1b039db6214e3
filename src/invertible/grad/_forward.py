"""Forward-mode comparison methods over the whole loss: exact and projected."""

import functools as ft
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray

from .._checks import positive_int
from .._method import Usage, default_method
from ._checkpointed import Backprop
from ._transform import check_loss, sentinel


def _flat_loss(fun, model, args, kwargs, has_aux, method):
    """The loss as a function of one flat vector of the model's inexact arrays.

    Chains run plainly (forward mode needs no custom rule), after the trace-time
    checks of a chain's input."""
    diff, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(diff)

    def loss(flat):
        with default_method(Backprop(), Usage(name=method)):
            out = fun(eqx.combine(unravel(flat), static), *args, **kwargs)
        check_loss(method, out, has_aux)
        value, aux = out if has_aux else (out, None)
        return jnp.asarray(value), aux

    return loss, flat, unravel


def forward_grad(
    fun: Callable = sentinel, *, has_aux: bool = False, chunk_size: int | None = 256
):
    """Exact gradients by forward mode alone: one JVP per parameter.

    The paper's "Forward" baseline: no activations are stored, but the time is the
    number of parameters times a forward pass. `chunk_size` JVPs run at once.
    Same calling convention as `eqx.filter_grad`.
    """
    if fun is sentinel:
        return ft.partial(forward_grad, has_aux=has_aux, chunk_size=chunk_size)
    positive_int("forward_grad", "chunk_size", chunk_size, optional=True)

    @ft.wraps(fun)
    def grad(model, /, *args, **kwargs):
        loss, flat, unravel = _flat_loss(
            fun, model, args, kwargs, has_aux, "forward_grad"
        )
        _, aux = loss(flat)

        def along_basis(index):
            tangent = jnp.zeros_like(flat).at[index].set(1)
            return jax.jvp(lambda p: loss(p)[0], (flat,), (tangent,))[1]

        if flat.size == 0:  # nothing to differentiate
            g = flat
        else:
            indices = jnp.arange(flat.size)
            g = jax.lax.map(along_basis, indices, batch_size=chunk_size)
        grads = unravel(g.astype(flat.dtype))
        return (grads, aux) if has_aux else grads

    return grad


def projected_forward_grad(
    fun: Callable = sentinel, *, has_aux: bool = False, num_tangents: int = 1
):
    """The forward gradient of Baydin et al. (2022): unbiased, noisy, one JVP.

    For a tangent `v ~ N(0, I)` over all parameters, returns `(∇L · v) v`, whose
    expectation is the gradient `∇L`. Averages `num_tangents` such estimates. The
    returned function takes the random key as the keyword argument `tangent_key`:
    `projected_forward_grad(loss)(model, x, y, tangent_key=key)`.
    """
    if fun is sentinel:
        return ft.partial(
            projected_forward_grad, has_aux=has_aux, num_tangents=num_tangents
        )
    positive_int("projected_forward_grad", "num_tangents", num_tangents)

    @ft.wraps(fun)
    def grad(model, /, *args, tangent_key: PRNGKeyArray | None = None, **kwargs):
        if tangent_key is None:
            raise TypeError(
                "projected_forward_grad: pass the random key for the tangents as "
                "the keyword argument `tangent_key`, e.g. "
                "`grad_fn(model, x, tangent_key=jax.random.key(0))`."
            )
        loss, flat, unravel = _flat_loss(
            fun, model, args, kwargs, has_aux, "projected_forward_grad"
        )
        tangents = jr.normal(tangent_key, (num_tangents, flat.size), flat.dtype)

        def estimate(v: Array):
            _, slope, aux = jax.jvp(loss, (flat,), (v,), has_aux=True)
            return slope * v, aux

        g, aux = jax.vmap(estimate)(tangents)
        grads = unravel(jnp.mean(g, axis=0))
        return (grads, jax.tree.map(lambda a: a[0], aux)) if has_aux else grads

    return grad
