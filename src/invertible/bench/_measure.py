"""Measuring: compiled temporary memory, interleaved median time, relative error."""

import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import grad as G
from ._report import METHODS, progress


def _fixed_tangent_key(loss):
    """`projected_forward_grad` takes its random key as a keyword; fix one, so that
    every method's gradient function takes just `(model, x)`."""
    grad = G.projected_forward_grad(loss)
    return lambda model, x: grad(model, x, tangent_key=jax.random.key(0))


def methods(names=METHODS[:5], *, chunk_size: int = 16) -> dict[str, Callable]:
    """Gradient transforms by name, each `transform(loss) -> grad(model, x)`.

    `chunk_size`: how many JVPs moonwalk (per input element) and forward (per
    parameter) run at once; memory grows with it, time shrinks.
    """
    every = {
        "backprop": eqx.filter_grad,
        "checkpointed": G.checkpointed_grad,
        "reversible": G.reversible_grad,
        "mixed": G.mixed_grad,
        "moonwalk": G.moonwalk_grad(chunk_size=chunk_size),
        "forward": G.forward_grad(chunk_size=chunk_size),
        "projected forward": _fixed_tangent_key,
    }
    return {name: every[name] for name in names}


# XLA's buffer assignment (hence `temp_size_in_bytes`) is done on the optimised HLO,
# before LLVM generates machine code; LLVM's optimisation level changes only the
# code. Level 0 compiles 3-5x faster here and gives the same byte counts
# (tests/test_bench.py checks one case).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def compile_for(fn: Callable, *args, fast: bool = False):
    """`eqx.filter_jit(fn)` compiled for `args` (and callable on them); `fast`: at
    LLVM optimisation level 0 (the same buffers, slower code)."""
    lowered = eqx.filter_jit(fn).lower(*args)
    return lowered.compile(FAST_COMPILE if fast else None)


def temp_bytes(transform, loss, model, x, *, fast: bool = True) -> int:
    """`temp_size_in_bytes` of the compiled gradient function."""
    compiled = compile_for(transform(loss), model, x, fast=fast)
    return compiled.compiled.memory_analysis().temp_size_in_bytes


def interleaved_medians(
    fns: dict[str, Callable], args, repeats: int = 7, description: str = "timing"
) -> dict[str, float]:
    """Median seconds per call, methods interleaved in one process (so that load
    from elsewhere on the machine hits them alike), compiled and run once first."""
    for f in fns.values():
        jax.block_until_ready(f(*args))
    samples = {name: [] for name in fns}
    for _ in progress(range(repeats), description):
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
