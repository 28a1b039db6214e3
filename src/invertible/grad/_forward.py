"""Forward-mode comparison methods over the whole loss: exact and projected."""

import functools as ft
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray

from ._transform import sentinel


def _flat_loss(fun, model, args, kwargs, has_aux):
    """The loss as a function of one flat vector of the model's inexact arrays."""
    diff, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(diff)

    def loss(flat):
        out = fun(eqx.combine(unravel(flat), static), *args, **kwargs)
        value, aux = out if has_aux else (out, None)
        value = jnp.asarray(value)
        if value.shape != ():
            raise ValueError(
                f"the loss must return a scalar, got shape {value.shape}. Reduce it, "
                "e.g. with `jnp.mean`."
            )
        return value, aux

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

    @ft.wraps(fun)
    def grad(model, /, *args, **kwargs):
        loss, flat, unravel = _flat_loss(fun, model, args, kwargs, has_aux)
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

    @ft.wraps(fun)
    def grad(model, /, *args, tangent_key: PRNGKeyArray, **kwargs):
        loss, flat, unravel = _flat_loss(fun, model, args, kwargs, has_aux)
        tangents = jr.normal(tangent_key, (num_tangents, flat.size), flat.dtype)

        def estimate(v: Array):
            _, slope, aux = jax.jvp(loss, (flat,), (v,), has_aux=True)
            return slope * v, aux

        g, aux = jax.vmap(estimate)(tangents)
        grads = unravel(jnp.mean(g, axis=0))
        return (grads, jax.tree.map(lambda a: a[0], aux)) if has_aux else grads

    return grad
