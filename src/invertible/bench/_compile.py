"""Compile time: how long `jax.jit` takes to trace, lower and compile a gradient
function on an unrolled chain (`invertible.Sequential`, whose program grows with
depth), `mixed_grad`'s against `eqx.filter_grad`'s, for every residual kind.

A stack (`ScannedSequential`) compiles its body once, at any depth; it is not
measured here."""

import dataclasses
import time

import equinox as eqx
import jax

from .. import grad as G
from . import _residuals
from ._memory import FULL_SIZES, QUICK_SIZES
from ._models import RESIDUALS, squared_loss
from ._report import device, progress, table, write_csv, write_json

TRANSFORMS = {"backprop": eqx.filter_grad, "mixed": G.mixed_grad}


@dataclasses.dataclass(frozen=True)
class Config:
    kinds: tuple[str, ...]  # keys of `_models.RESIDUALS`
    depths: tuple[int, ...]  # couplings
    sizes: dict


FULL = Config(kinds=tuple(RESIDUALS), depths=(48, 64), sizes=FULL_SIZES)
QUICK = Config(kinds=("relu",), depths=(8,), sizes=QUICK_SIZES)


def stages(transform, model, x) -> dict[str, float]:
    """Seconds to trace, lower and compile `transform(squared_loss)` for `model`
    and `x`."""
    params, static = eqx.partition(model, eqx.is_array)
    grad = transform(squared_loss)

    def step(params, x):
        return eqx.filter(grad(eqx.combine(params, static), x), eqx.is_array)

    start = time.perf_counter()
    traced = jax.jit(step).trace(params, x)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    lowered.compile()
    compiled_at = time.perf_counter()
    return {
        "trace": traced_at - start,
        "lower": lowered_at - traced_at,
        "compile": compiled_at - lowered_at,
    }


def compile_times(config: Config, out) -> dict:
    results = {}
    jobs = [(k, d) for k in config.kinds for d in config.depths]
    with jax.enable_x64(False):
        for kind, depth in progress(jobs, "compile time"):
            residual, size = RESIDUALS[kind], config.sizes[kind]
            model = residual.build(depth, False, size)
            x = _residuals.example_input(residual, size)
            seconds = {m: stages(t, model, x) for m, t in TRANSFORMS.items()}
            building = {m: s["lower"] + s["compile"] for m, s in seconds.items()}
            results.setdefault(kind, {})[str(depth)] = {
                "seconds": seconds,
                "lower_and_compile": building,
                "lower_and_compile_ratio": building["mixed"] / building["backprop"],
            }
    table(
        f"Compile time of a `Sequential` (seconds; lower + compile, and its ratio, "
        f"Mixed to backprop), {device()}",
        ["residual", "couplings", "backprop", "mixed", "ratio", "mixed's trace"],
        [
            [
                kind,
                depth,
                r["lower_and_compile"]["backprop"],
                r["lower_and_compile"]["mixed"],
                r["lower_and_compile_ratio"],
                r["seconds"]["mixed"]["trace"],
            ]
            for kind, by_depth in results.items()
            for depth, r in by_depth.items()
        ],
    )
    rows = [
        {"residual": kind, "couplings": int(depth), "method": m, **stage_seconds}
        for kind, by_depth in results.items()
        for depth, r in by_depth.items()
        for m, stage_seconds in r["seconds"].items()
    ]
    write_csv(out, "compile.csv", rows)
    write_json(out, "compile.json", {"device": device(), "residuals": results})
    return results
