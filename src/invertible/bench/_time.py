"""`time`: time per batch against depth (the paper's Fig 4), compile excluded,
methods interleaved in one process, medians; reported as ratios to backprop.

Two networks. The RevNet of the memory figures, smaller, for the methods whose
cost is a small multiple of a forward pass. And a tiny RevNet for pure Moonwalk and
Forward, whose costs are one forward pass per input element and per parameter: at
the paper's size they take minutes to hours per batch (1839 s for Forward at 6
layers on the paper's GPU), so only their ratio is measured here.

Then the residual kinds of `memory`, stacked, at one depth: every method's time
against its compiled memory (the same programs), one plot per kind.
"""

import dataclasses

import jax
import jax.numpy as jnp

from . import _residuals
from ._measure import compile_for, interleaved_medians, methods
from ._memory import FULL_SIZES, QUICK_METHODS, QUICK_SIZES
from ._models import RESIDUALS, conv_revnet, squared_loss
from ._report import (
    Panel,
    device,
    progress,
    save_plot,
    save_scatter,
    table,
    write_csv,
    write_json,
)


@dataclasses.dataclass(frozen=True)
class Network:
    image: int
    batch: int
    padding: int
    hidden: int
    layers_per_block: tuple[int, ...]
    methods: tuple[str, ...]
    repeats: int
    chunk_size: int = 64  # JVPs at once for moonwalk and forward

    def short(self) -> str:
        return (
            f"RevNet, 3x{self.image}x{self.image}->{self.padding}, batch {self.batch}"
        )

    def describe(self) -> str:
        return (
            f"RevNet, batch {self.batch} of 3x{self.image}x{self.image} padded to "
            f"{self.padding} channels, {self.hidden} hidden channels"
        )


@dataclasses.dataclass(frozen=True)
class Residuals:
    """The residual kinds, each a `ScannedSequential` of `depth` couplings."""

    kinds: tuple[str, ...]
    sizes: dict  # per kind, as `_memory`'s
    depth: int
    repeats: int
    methods: tuple[str, ...] = _residuals.METHODS


@dataclasses.dataclass(frozen=True)
class Config:
    revnet: Network
    tiny: Network
    residuals: Residuals
    # Compile without LLVM's optimisations: 3-4x quicker to compile, slower code.
    # Only for the quick smoke run, whose times are not measurements.
    fast_compile: bool = False


FULL = Config(
    revnet=Network(
        image=16,
        batch=32,
        padding=18,
        hidden=16,
        layers_per_block=(1, 3, 5, 10),
        methods=(
            "backprop",
            "checkpointed",
            "reversible",
            "mixed",
            "projected forward",
        ),
        repeats=7,
    ),
    tiny=Network(
        image=8,
        batch=4,
        padding=8,
        hidden=8,
        layers_per_block=(1, 2),
        methods=("backprop", "mixed", "moonwalk", "forward"),
        repeats=3,
        chunk_size=256,
    ),
    residuals=Residuals(
        kinds=tuple(RESIDUALS),
        # The memory benchmark's sizes, but a batch of 16 images for the conv
        # couplings: at 64 one backprop step takes 2 s on two CPU cores.
        sizes={
            **FULL_SIZES,
            "groupnorm conv": {**FULL_SIZES["groupnorm conv"], "batch": 16},
        },
        depth=24,
        repeats=9,
    ),
)
QUICK = Config(
    revnet=dataclasses.replace(
        FULL.revnet, image=8, batch=8, padding=8, layers_per_block=(2,), repeats=3
    ),
    tiny=dataclasses.replace(
        FULL.tiny, image=4, batch=2, hidden=4, layers_per_block=(1,), repeats=2
    ),
    residuals=Residuals(
        kinds=("relu",),
        sizes=QUICK_SIZES,
        depth=8,
        repeats=2,
        methods=QUICK_METHODS,
    ),
    fast_compile=True,
)


def _seconds(network: Network, fast_compile: bool) -> dict[str, list[float]]:
    """Median seconds per batch, per method, at each depth."""
    x = jax.random.normal(
        jax.random.key(0), (network.batch, 3, network.image, network.image)
    ).astype(jnp.float32)
    transforms = methods(network.methods, chunk_size=network.chunk_size)
    seconds = {m: [] for m in network.methods}
    for layers in progress(network.layers_per_block, "time, layers per block"):
        model = conv_revnet(
            layers, padded_channels=network.padding, hidden=network.hidden
        )
        fns = {
            m: compile_for(t(squared_loss), model, x, fast=fast_compile)
            for m, t in transforms.items()
        }
        medians = interleaved_medians(
            fns, (model, x), network.repeats, f"time, {layers} layers per block"
        )
        for m, s in medians.items():
            seconds[m].append(s)
    return seconds


def _residual_seconds(config: Config, kind: str) -> dict:
    """Median seconds and temp MB of every method that applies, on a stack of
    `config.residuals.depth` couplings of `kind`."""
    spec, residual = config.residuals, RESIDUALS[kind]
    size = spec.sizes[kind]
    model = residual.build(spec.depth, True, size)
    x = _residuals.example_input(residual, size)
    transforms = _residuals.transforms(spec.methods, residual, spec.depth, True)
    fns = {
        m: compile_for(t(squared_loss), model, x, fast=config.fast_compile)
        for m, t in progress(transforms.items(), f"time, {kind}: compiling")
    }
    mb = {
        m: f.compiled.memory_analysis().temp_size_in_bytes / 1e6 for m, f in fns.items()
    }
    seconds = interleaved_medians(fns, (model, x), spec.repeats, f"time, {kind}")
    return {
        "network": _residuals.describe(residual, size),
        "relu": residual.relu,
        "seconds": seconds,
        "ratio_to_backprop": {m: s / seconds["backprop"] for m, s in seconds.items()},
        "MB": mb,
    }


# The targets for Mixed's time at depth 24: with ReLU residuals, and with
# smooth ones (tanh, GELU, attention).
TARGET_RELU, TARGET_SMOOTH = 1.5, 2.2


def _residuals_timing(config: Config, out) -> tuple[dict, list[dict]]:
    spec = config.residuals
    results = {
        kind: _residual_seconds(config, kind)
        for kind in progress(spec.kinds, "time, residual kinds")
    }
    methods = [
        m for m in spec.methods if any(m in r["seconds"] for r in results.values())
    ]
    cell = lambda r, m, key: r[key].get(m, "-")
    table(
        f"Residual kinds, {spec.depth} couplings stacked (ScannedSequential): median "
        f"time per batch / backprop's (compile excluded, {spec.repeats} interleaved "
        "runs)",
        ["method", *spec.kinds],
        [
            [m, *(cell(r, m, "ratio_to_backprop") for r in results.values())]
            for m in methods
        ],
    )
    table(
        f"The same in seconds, on this machine only ({device()}), for scale; sizes: "
        + "; ".join(f"{k}: {r['network']}" for k, r in results.items()),
        ["method", *spec.kinds],
        [[m, *(cell(r, m, "seconds") for r in results.values())] for m in methods],
    )
    table(
        f"Compiled temp memory (MB) of the same programs, at {spec.depth} couplings",
        ["method", *spec.kinds],
        [[m, *(cell(r, m, "MB") for r in results.values())] for m in methods],
    )
    rows = []
    for kind, r in results.items():
        target = TARGET_RELU if r["relu"] else TARGET_SMOOTH
        ratio = r["ratio_to_backprop"]["mixed"]
        rows.append([kind, ratio, target, "yes" if ratio <= target else "no"])
    table(
        f"Mixed's time at {spec.depth} couplings against the target (ReLU residuals "
        f"{TARGET_RELU}x backprop, smooth ones {TARGET_SMOOTH}x)",
        ["kind", "mixed / backprop", "target", "met"],
        rows,
    )
    save_scatter(
        out,
        "time_vs_memory.png",
        *(
            Panel(
                f"{kind}: {spec.depth} couplings, stacked",
                "time per batch / backprop",
                f"compiled temp memory (MB) at {spec.depth} couplings",
                {m: ([r["ratio_to_backprop"][m]], [r["MB"][m]]) for m in r["seconds"]},
            )
            for kind, r in results.items()
        ),
    )
    csv_rows = [
        {
            "network": kind,
            "method": m,
            "layers_per_block": spec.depth,
            "seconds": r["seconds"][m],
            "ratio_to_backprop": r["ratio_to_backprop"][m],
        }
        for kind, r in results.items()
        for m in r["seconds"]
    ]
    return {"depth": spec.depth, "repeats": spec.repeats, **results}, csv_rows


def timing(config: Config, out) -> dict:
    results = {"device": device()}
    rows = []
    for name, network in (("revnet", config.revnet), ("tiny", config.tiny)):
        depths = network.layers_per_block
        seconds = _seconds(network, config.fast_compile)
        ratio = {
            m: [s / b for s, b in zip(v, seconds["backprop"], strict=True)]
            for m, v in seconds.items()
        }
        results[name] = {
            "network": network.describe(),
            "layers_per_block": list(depths),
            "chunk_size": network.chunk_size,
            "seconds": seconds,
            "ratio_to_backprop": ratio,
        }
        rows += [
            {
                "network": name,
                "method": m,
                "layers_per_block": d,
                "seconds": s,
                "ratio_to_backprop": r,
            }
            for m in network.methods
            for d, s, r in zip(depths, seconds[m], ratio[m], strict=True)
        ]
        table(
            f"{network.describe()}: median time per batch / backprop's, against "
            f"layers per block (compile excluded, {network.repeats} interleaved runs)",
            ["method", *map(str, depths)],
            [[m, *ratio[m]] for m in network.methods],
        )
        table(
            f"The same in seconds, on this machine only ({device()}), for scale",
            ["method", *map(str, depths)],
            [[m, *seconds[m]] for m in network.methods],
        )
    tiny = results["tiny"]["seconds"]
    forward_over_moonwalk = [
        f / m for f, m in zip(tiny["forward"], tiny["moonwalk"], strict=True)
    ]
    results["tiny"]["forward_over_moonwalk"] = forward_over_moonwalk
    table(
        "Forward / Moonwalk (the paper: 27x at 2 and 110x at 20 layers per block)",
        ["layers per block", "forward / moonwalk"],
        [
            [d, r]
            for d, r in zip(
                config.tiny.layers_per_block, forward_over_moonwalk, strict=True
            )
        ],
    )
    revnet, tiny_depths = results["revnet"], config.tiny.layers_per_block
    save_plot(
        out,
        "time.png",
        Panel(
            config.revnet.short(),
            "layers per block",
            "time per batch / backprop",
            {
                m: (revnet["layers_per_block"], r)
                for m, r in revnet["ratio_to_backprop"].items()
            },
        ),
        Panel(
            config.tiny.short(),
            "layers per block",
            f"seconds per batch ({device()})",
            {m: (list(tiny_depths), s) for m, s in tiny.items()},
            logy=True,
        ),
    )
    results["residuals"], residual_rows = _residuals_timing(config, out)
    write_csv(out, "time.csv", rows + residual_rows)
    write_json(out, "time.json", results)
    return results
