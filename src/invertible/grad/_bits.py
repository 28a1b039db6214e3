"""Piecewise-linear activations that keep one bit per unit for reverse mode.

The derivative of ReLU or leaky ReLU is a function of the sign of its input
alone, so reverse mode needs one bit per unit; `jax.nn.relu`'s linearisation keeps
a byte (a boolean mask) and `jax.nn.leaky_relu`'s a float. `packed_bits(fn)` runs
`fn` through its jaxpr (JAX's custom-interpreter pattern), with every
`jax.nn.relu` and `jax.nn.leaky_relu` (and nothing else) replaced by versions whose
reverse rule keeps the packed signs: what the user's residual computes is
unchanged, only what phase 1 keeps for it. It is used in Mixed's phase 1, which is
reverse mode only.
"""

import functools as ft

import equinox as eqx
import jax
import jax.extend.core as jex
import jax.numpy as jnp


def _pack(mask):
    return jnp.packbits(mask.reshape(-1))


def _unpack(bits, like):
    return jnp.unpackbits(bits, count=like.size).reshape(like.shape).astype(bool)


@jax.custom_vjp
def relu(x):
    """`jax.nn.relu` (derivative 0 at 0), keeping `x > 0` as packed bits."""
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    return jnp.maximum(x, 0), _pack(x > 0)


def _relu_bwd(bits, ct):
    return (jnp.where(_unpack(bits, ct), ct, 0).astype(ct.dtype),)


relu.defvjp(_relu_fwd, _relu_bwd)


@jax.custom_vjp
def leaky_relu(x, negative_slope):
    """`jax.nn.leaky_relu`, keeping `x >= 0` as packed bits."""
    return jnp.where(x >= 0, x, negative_slope * x)


def _leaky_fwd(x, negative_slope):
    return leaky_relu(x, negative_slope), (_pack(x >= 0), negative_slope)


def _leaky_bwd(residuals, ct):
    bits, negative_slope = residuals
    slope = jnp.where(_unpack(bits, ct), 1, negative_slope).astype(ct.dtype)
    return ct * slope, jnp.zeros_like(negative_slope)


leaky_relu.defvjp(_leaky_fwd, _leaky_bwd)


def _name(eqn) -> str | None:
    return eqn.params.get("name")


def _is_relu(eqn) -> bool:
    """A `custom_jvp_call` of `jax.nn.relu` (its name is lost under `vmap`: look
    at its body, one `max(x, 0)`, possibly in a `jit` named `relu`)."""
    if eqn.primitive.name != "custom_jvp_call":
        return False
    if _name(eqn) is not None:
        return _name(eqn) == "relu"
    body = eqn.params["call_jaxpr"].jaxpr.eqns
    if len(body) != 1:
        return False
    (inner,) = body
    if inner.primitive.name in ("jit", "pjit"):
        return _name(inner) == "relu"
    return inner.primitive.name == "max" and any(
        isinstance(v, jex.Literal) and v.val == 0 for v in inner.invars
    )


def _read(env, var):
    return var.val if isinstance(var, jex.Literal) else env[var]


def _leaky_slope(eqn, inputs):
    """The negative slope of a `jit[name=leaky_relu]` call: the scalar of its
    `mul`, a literal or one of its inputs."""
    closed = eqn.params["jaxpr"]
    inner = dict(zip(closed.jaxpr.invars, inputs, strict=True))
    inner.update(zip(closed.jaxpr.constvars, closed.consts, strict=True))
    for e in closed.jaxpr.eqns:
        if e.primitive.name == "mul":
            for v in e.invars:
                value = _read(inner, v)
                if jnp.ndim(value) == 0:
                    return value
    return None


def _evaluate(jaxpr, consts, *args):
    env = {}
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        inputs = [_read(env, v) for v in eqn.invars]
        primitive = eqn.primitive.name
        outputs = None
        if _is_relu(eqn):
            outputs = [relu(*inputs)]
        elif primitive in ("jit", "pjit"):
            if _name(eqn) == "leaky_relu" and len(inputs) <= 2:
                slope = inputs[1] if len(inputs) == 2 else _leaky_slope(eqn, inputs)
                if slope is not None:
                    slope = jnp.asarray(slope, inputs[0].dtype)
                    outputs = [leaky_relu(inputs[0], slope)]
            if outputs is None:  # inline, so that calls nested inside are seen too
                closed = eqn.params["jaxpr"]
                outputs = _evaluate(closed.jaxpr, closed.consts, *inputs)
        if outputs is None:
            params = eqn.primitive.get_bind_params(eqn.params)
            with eqn.ctx.manager:
                outputs = eqn.primitive.bind(*inputs, **params)
            if not eqn.primitive.multiple_results:
                outputs = [outputs]
        for var, value in zip(eqn.outvars, outputs, strict=True):
            env[var] = value
    return [_read(env, v) for v in jaxpr.outvars]


def packed_bits(fn):
    """`fn`, with its ReLU and leaky-ReLU activations keeping packed bits for
    reverse mode (see above). `fn` takes and returns pytrees; non-array leaves of
    its arguments are static."""

    @ft.wraps(fn)
    def run(*args, **kwargs):
        dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
        leaves, treedef = jax.tree.flatten(dynamic)

        def flat(*leaves):
            args, kwargs = eqx.combine(jax.tree.unflatten(treedef, leaves), static)
            return fn(*args, **kwargs)

        closed, out_shape = jax.make_jaxpr(flat, return_shape=True)(*leaves)
        outputs = _evaluate(closed.jaxpr, closed.consts, *leaves)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

    return run
