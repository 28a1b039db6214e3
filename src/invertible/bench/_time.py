"""`time`: time per batch against depth (the paper's Fig 4), compile excluded,
methods interleaved in one process, medians; reported as ratios to backprop.

Two networks. The RevNet of the memory figures, smaller, for the methods whose
cost is a small multiple of a forward pass. And a tiny RevNet for pure Moonwalk and
Forward, whose costs are one forward pass per input element and per parameter: at
the paper's size they take minutes to hours per batch (1839 s for Forward at 6
layers on the paper's GPU), so only their ratio is measured here.
"""

import dataclasses

import jax
import jax.numpy as jnp

from ._measure import compile_for, interleaved_medians, methods
from ._models import conv_revnet, squared_loss
from ._report import Panel, device, progress, save_plot, table, write_csv, write_json


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
class Config:
    revnet: Network
    tiny: Network
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
)
QUICK = Config(
    revnet=dataclasses.replace(
        FULL.revnet, image=8, batch=8, padding=8, layers_per_block=(1, 2), repeats=3
    ),
    tiny=dataclasses.replace(
        FULL.tiny, image=4, batch=2, hidden=4, layers_per_block=(1,), repeats=2
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
    write_csv(out, "time.csv", rows)
    write_json(out, "time.json", results)
    return results
