"""`memory`: compiled temporary memory against depth (the paper's Figs 2 and 3), the
deepest network each method fits into a memory budget, and the bytes per layer of
MLP couplings.

Memory is XLA's `temp_size_in_bytes` of the compiled gradient function: a property
of the program, measured without running it, so the paper's sizes (32x32 inputs,
batch 512, ~200k parameters per layer per block at padding 18) cost only compile
time.
"""

import dataclasses

import jax.numpy as jnp

from ._measure import METHODS, methods, temp_bytes
from ._models import conv_revnet, mlp_couplings, squared_loss
from ._report import Panel, device, progress, save_plot, table, write_csv, write_json


@dataclasses.dataclass(frozen=True)
class Config:
    image: int  # height = width of the (3-channel) input
    batch: int
    hidden: int  # channels inside each residual
    paddings: tuple[int, ...]  # channels after zero-padding; one figure each
    layers_per_block: tuple[int, ...]
    budget_layers: int  # budget: backprop's memory at this many layers per block
    max_layers: int  # the budget search stops here
    mlp_batch: int
    mlp_features: int
    mlp_width: int
    mlp_depths: tuple[int, int]
    mlp_chains: tuple[str, ...] = ("Sequential", "ScannedSequential")  # one table each
    budget_mb: float | None = None  # a budget of its own, instead of budget_layers


FULL = Config(
    image=32,
    batch=512,
    hidden=64,
    paddings=(8, 18),
    layers_per_block=(1, 3, 5, 10),
    budget_layers=5,
    max_layers=128,
    mlp_batch=2048,
    mlp_features=256,
    mlp_width=512,
    # Below ~16 layers XLA's buffer reuse makes the growth uneven; from 16 on the
    # slope is steady (measured to 64).
    mlp_depths=(16, 32),
)
QUICK = Config(
    image=32,
    batch=64,
    hidden=16,
    paddings=(8,),
    layers_per_block=(2, 3),
    budget_layers=3,
    max_layers=8,
    mlp_batch=64,
    mlp_features=64,
    mlp_width=128,
    mlp_depths=(4, 8),
    mlp_chains=(),  # compile time: the smoke run skips them
)

# Forward-mode methods run `chunk_size` JVPs at once and keep that many sets of
# activations: measured at 1, their least memory (and slowest).
CHUNK_SIZE = 1


def _revnet_temp(config: Config, padding: int):
    """`temp_at(method, layers_per_block) -> bytes`, cached."""
    x = jnp.ones((config.batch, 3, config.image, config.image), jnp.float32)
    transforms = methods(METHODS, chunk_size=CHUNK_SIZE)
    cache = {}

    def temp_at(method: str, layers: int) -> int:
        if (method, layers) not in cache:
            model = conv_revnet(layers, padded_channels=padding, hidden=config.hidden)
            cache[method, layers] = temp_bytes(
                transforms[method], squared_loss, model, x
            )
        return cache[method, layers]

    return temp_at


def deepest_within(budget: int, temp_at, lo: int, hi: int) -> int:
    """The largest depth `d` in `[lo, hi)` with `temp_at(d) <= budget`, given
    `temp_at(lo) <= budget < temp_at(hi)` and memory that grows with depth.

    Memory is nearly linear in depth, so probe first where the line through the
    bracket's ends crosses the budget (two or three compiles), then bisect."""
    for probe in range(64):
        if hi - lo <= 1:
            return lo
        t_lo, t_hi = temp_at(lo), temp_at(hi)
        if probe < 4:
            depth = lo + int((budget - t_lo) * (hi - lo) / (t_hi - t_lo))
        else:
            depth = (lo + hi) // 2
        depth = min(max(depth, lo + 1), hi - 1)
        if temp_at(depth) <= budget:
            lo = depth
        else:
            hi = depth
    raise AssertionError("unreachable: the bracket halves at least every probe")


def _budget(config: Config, temp_at) -> dict:
    """The deepest network (layers per block) each method fits into
    `config.budget_mb`, or else into backprop's memory at `config.budget_layers`
    layers per block."""
    if config.budget_mb is None:
        budget = temp_at("backprop", config.budget_layers)
    else:
        budget = int(config.budget_mb * 1e6)
    deepest = {}
    for method in progress(METHODS, "budget search"):
        at = lambda layers, m=method: temp_at(m, layers)
        # Start from the figure's depths. Not from 1 alone: at one layer per block
        # XLA compiles the scans differently and some methods take *more* memory
        # than at two (the paper notes such a gap at one layer per block too).
        known = sorted({*config.layers_per_block, config.max_layers})
        fitting = [d for d in known if at(d) <= budget]
        if at(config.max_layers) <= budget:
            deepest[method] = config.max_layers  # at least: the search stops there
        elif not fitting:  # shallower than the figure's shallowest, if at all
            below = [d for d in range(1, known[0]) if at(d) <= budget]
            deepest[method] = max(below, default=0)
        else:
            lo = max(fitting)
            hi = min(d for d in known if d > lo)
            deepest[method] = deepest_within(budget, at, lo, hi)
    return {"budget_bytes": budget, "max_layers": config.max_layers, **deepest}


def _revnet(config: Config, padding: int, out) -> dict:
    temp_at = _revnet_temp(config, padding)
    depths = config.layers_per_block
    for method, layers in progress(
        [(m, d) for d in depths for m in METHODS],
        f"memory, padding {padding}",
    ):
        temp_at(method, layers)
    mb = {m: [temp_at(m, d) / 1e6 for d in depths] for m in METHODS}
    # Growth per layer per block (3 couplings) between the two deepest networks.
    slope = {m: (v[-1] - v[-2]) / (depths[-1] - depths[-2]) for m, v in mb.items()}
    budget = _budget(config, temp_at)

    shape = f"{config.batch}x3x{config.image}x{config.image}"
    table(
        f"RevNet, input {shape} padded to {padding} channels, {config.hidden} "
        f"hidden channels: temp_size_in_bytes (MB) against layers per block",
        ["method", *map(str, depths), "MB per layer per block", "vs backprop"],
        [[m, *mb[m], slope[m], slope[m] / slope["backprop"]] for m in METHODS],
    )
    deepest_backprop = budget["backprop"]
    if config.budget_mb is None:
        budget_name = f"backprop's memory at {config.budget_layers} layers per block"
    else:
        budget_name = "a budget"
    table(
        f"Deepest RevNet (padding {padding}) within {budget_name} "
        f"({budget['budget_bytes'] / 1e6:.1f} MB); the search stops at "
        f"{config.max_layers}",
        ["method", "layers per block", "vs backprop"],
        [
            [
                m,
                _at_least(budget[m], config.max_layers),
                budget[m] / deepest_backprop if deepest_backprop else float("inf"),
            ]
            for m in METHODS
        ],
    )
    save_plot(
        out,
        f"memory_pad{padding}.png",
        Panel(
            f"RevNet, {shape} padded to {padding} channels",
            "layers per block",
            "compiled temp memory (MB)",
            {m: (list(depths), mb[m]) for m in METHODS},
        ),
    )
    return {
        "input": shape,
        "padding": padding,
        "hidden": config.hidden,
        "layers_per_block": list(depths),
        "MB": mb,
        "MB_per_layer_per_block": slope,
        "deepest_within_budget": budget,
    }


def _at_least(layers: int, max_layers: int) -> str:
    return f">= {layers}" if layers >= max_layers else str(layers)


def _mlp(config: Config) -> dict:
    """Bytes per layer of MLP couplings (Python-loop and scanned chains)."""
    lo, hi = config.mlp_depths
    x = jnp.ones((config.mlp_batch, config.mlp_features), jnp.float32)
    sizes = dict(features=config.mlp_features, width=config.mlp_width)
    results = {}
    for chain in config.mlp_chains:
        scanned = chain == "ScannedSequential"
        temps = {
            (m, depth): temp_bytes(
                t, squared_loss, mlp_couplings(depth, scanned=scanned, **sizes), x
            )
            for m, t in progress(methods().items(), f"memory, MLP {chain}")
            for depth in (lo, hi)
        }
        per_layer = {
            m: (temps[m, hi] - temps[m, lo]) / (hi - lo) / 1e6 for m in methods()
        }
        results[chain] = {"MB_per_layer": per_layer}
        table(
            f"MLP couplings ({chain}), {config.mlp_features} features, width "
            f"{config.mlp_width}, batch {config.mlp_batch}: temp_size_in_bytes at "
            f"depths {lo} and {hi}",
            ["method", f"MB @{lo}", f"MB @{hi}", "MB per layer", "vs backprop"],
            [
                [
                    m,
                    temps[m, lo] / 1e6,
                    temps[m, hi] / 1e6,
                    per_layer[m],
                    per_layer[m] / per_layer["backprop"],
                ]
                for m in per_layer
            ],
        )
    return results


def memory(config: Config, out) -> dict:
    results = {
        "device": device(),
        "forward_chunk_size": CHUNK_SIZE,
        "revnet": [_revnet(config, padding, out) for padding in config.paddings],
        "mlp_couplings": _mlp(config),
    }
    write_csv(
        out,
        "memory.csv",
        [
            {
                "padding": r["padding"],
                "method": m,
                "layers_per_block": d,
                "temp_MB": v,
            }
            for r in results["revnet"]
            for m, values in r["MB"].items()
            for d, v in zip(r["layers_per_block"], values, strict=True)
        ],
    )
    write_json(out, "memory.json", results)
    return results
