"""Measuring: compiled temporary memory, interleaved median time, relative error."""

import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import grad as G


def methods(include_forward: bool = False) -> dict[str, Callable]:
    out = {
        "backprop": eqx.filter_grad,
        "checkpointed": G.checkpointed_grad,
        "reversible": G.reversible_grad,
        "mixed": G.mixed_grad,
        "moonwalk": G.moonwalk_grad,
    }
    if include_forward:
        out["forward"] = G.forward_grad
    return out


def temp_bytes(transform, loss, model, x) -> int:
    """`temp_size_in_bytes` of the compiled gradient function."""
    compiled = eqx.filter_jit(transform(loss)).lower(model, x).compile()
    return compiled.compiled.memory_analysis().temp_size_in_bytes


def interleaved_medians(fns: dict[str, Callable], args, repeats: int = 7):
    """Median seconds per call, methods interleaved in one process, compile first."""
    for f in fns.values():
        jax.block_until_ready(f(*args))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(f(*args))
            samples[name].append(time.perf_counter() - start)
    return {name: float(np.median(s)) for name, s in samples.items()}


def relative_error(grads, reference) -> float:
    """Worst leaf of ‖g - ref‖ / ‖ref‖, in float64."""
    errors = [
        float(jnp.linalg.norm((g.astype(jnp.float64) - r).ravel()))
        / max(float(jnp.linalg.norm(r.ravel())), 1e-300)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True)
    ]
    return max(errors)
