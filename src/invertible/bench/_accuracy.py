"""`accuracy`: float32 gradient error against a float64 oracle from the same
weights, against depth (the paper's Fig 6, there measured along training), with
ReLU and with tanh residuals, Mixed with and without anchors."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import grad as G
from ._measure import compile_for, relative_error
from ._models import conv_revnet, squared_loss
from ._report import Panel, device, progress, save_plot, table, write_csv, write_json

# Not here: forward mode (exact, but one JVP per parameter: 1.2 million at 48
# layers per block) and projected forward (an unbiased estimate: its error is its
# variance, not round-off).
CANDIDATES = {
    "backprop": eqx.filter_grad,
    "checkpointed": G.checkpointed_grad,
    "reversible": G.reversible_grad,
    "mixed (anchors every 8)": G.mixed_grad(anchor_every=8),
    "mixed (no anchors)": G.mixed_grad(anchor_every=None),
    "moonwalk": G.moonwalk_grad(chunk_size=128),
    # The sweep's own round-off: by default a segment that drifted is redone by
    # reverse mode, which hides it.
    "mixed (no anchors, no repair)": G.mixed_grad(anchor_every=None, on_drift="ignore"),
    "moonwalk (no repair)": G.moonwalk_grad(chunk_size=128, on_drift="ignore"),
}
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


@dataclasses.dataclass(frozen=True)
class Config:
    image: int
    batch: int
    padding: int
    hidden: int
    layers_per_block: tuple[int, ...]
    # Candidates compiled without LLVM's optimisations: quicker to compile, but the
    # code rounds differently (errors up to 1.5x larger here) and runs Moonwalk 20x
    # slower. Only for the quick smoke run.
    fast_compile: bool = False
    activations: tuple[str, ...] = tuple(ACTIVATIONS)  # keys of `ACTIVATIONS`


FULL = Config(image=8, batch=8, padding=8, hidden=16, layers_per_block=(2, 16, 48))
# The smoke run: one activation (the code is the same for both; compiling is its
# cost).
QUICK = Config(
    image=4,
    batch=4,
    padding=8,
    hidden=8,
    layers_per_block=(2,),
    fast_compile=True,
    activations=("relu",),
)


def _cast(tree, dtype):
    cast = lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a
    return jax.tree.map(cast, tree)


def _errors(config: Config, activation) -> dict[str, list[float]]:
    errors = {name: [] for name in CANDIDATES}
    shape = (config.batch, 3, config.image, config.image)
    x32 = jax.random.normal(jax.random.key(0), shape).astype(jnp.float32)
    for layers in progress(config.layers_per_block, "accuracy, layers per block"):
        model32 = conv_revnet(
            layers,
            padded_channels=config.padding,
            hidden=config.hidden,
            activation=activation,
        )
        model64, x64 = _cast(model32, jnp.float64), x32.astype(jnp.float64)
        # The oracle's float64 round-off does not matter: compile it quickly.
        oracle_fn = eqx.filter_grad(squared_loss)
        oracle = compile_for(oracle_fn, model64, x64, fast=True)(model64, x64)
        for name, transform in CANDIDATES.items():
            fn = compile_for(
                transform(squared_loss), model32, x32, fast=config.fast_compile
            )
            errors[name].append(relative_error(fn(model32, x32), oracle))
    return errors


def accuracy(config: Config, out) -> dict:
    depths = list(config.layers_per_block)
    results = {"device": device(), "layers_per_block": depths}
    rows, panels = [], []
    with jax.enable_x64(True):  # for the oracle; the candidates run in float32
        for act_name in config.activations:
            activation = ACTIVATIONS[act_name]
            errors = _errors(config, activation)
            results[act_name] = errors
            rows += [
                {"activation": act_name, "method": m, "layers_per_block": d, "error": e}
                for m, v in errors.items()
                for d, e in zip(depths, v, strict=True)
            ]
            table(
                f"float32 gradient error (worst leaf's relative L2 error against a "
                f"float64 oracle, same weights), {act_name} residuals, RevNet "
                f"{config.batch}x3x{config.image}x{config.image} padded to "
                f"{config.padding}, {config.hidden} hidden channels, LeCun normal "
                f"init; columns: layers per block",
                ["method", *map(str, depths)],
                [[m, *v] for m, v in errors.items()],
            )
            panels.append(
                Panel(
                    f"{act_name} residuals",
                    "layers per block",
                    "relative error vs float64",
                    {m: (depths, v) for m, v in errors.items()},
                    logy=True,
                )
            )
    save_plot(out, "accuracy.png", *panels)
    write_csv(out, "accuracy.csv", rows)
    write_json(out, "accuracy.json", results)
    return results
