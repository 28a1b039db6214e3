"""What the flow tests (test_flows.py, test_flowjax.py) share: random parameters
and a faster compile."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

# LLVM's optimisation level changes the machine code, not the program XLA runs:
# compiling at level 0 is about twice as fast, which is most of these tests' time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def compiled(fn, *args):
    """`fn(*args)`, through one compile of `eqx.filter_jit(fn)` at `FAST_COMPILE`."""
    return eqx.filter_jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def randomised(model, key, scale: float = 0.3):
    """`model` with noise added to every floating-point parameter: ActNorm's
    identity start and zero-initialised conditioners would hide errors in the
    log-det's gradients."""
    leaves, treedef = jax.tree.flatten(eqx.filter(model, eqx.is_inexact_array))
    # One draw, cut into pieces: every random op is compiled on its own.
    sizes = [leaf.size for leaf in leaves]
    noise = scale * jr.normal(key, (sum(sizes),), jnp.result_type(*leaves))
    pieces = jnp.split(noise, np.cumsum(sizes)[:-1])
    moved = [
        a + n.reshape(a.shape).astype(a.dtype)
        for a, n in zip(leaves, pieces, strict=True)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, moved), model)
