"""`memory`: compiled temporary memory against depth (the paper's Figs 2 and 3), the
deepest network each method fits into a memory budget, and the bytes per layer of
chains of couplings with the usual residual kinds (MLPs with ReLU, tanh and GELU, a
pre-LayerNorm MLP, a GroupNorm conv, a reversible transformer), in both chain forms.

Memory is XLA's `temp_size_in_bytes` of the compiled gradient function: a property
of the program, measured without running it, so the paper's sizes (32x32 inputs,
batch 512, ~200k parameters per layer per block at padding 18) cost only compile
time.
"""

import dataclasses
import functools
import multiprocessing
import os

import jax.numpy as jnp

from . import _residuals
from ._measure import METHODS, methods, temp_bytes
from ._models import RESIDUALS, conv_revnet, squared_loss
from ._report import Panel, device, progress, save_plot, table, write_csv, write_json

CHAINS = ("Sequential", "ScannedSequential")

# The residual kinds' sizes (`_models.RESIDUALS` says which keys each reads).
FULL_SIZES = {
    "relu": dict(batch=512, features=256, width=512),
    "tanh": dict(batch=512, features=256, width=512),
    "gelu": dict(batch=512, features=256, width=512),
    "layernorm": dict(batch=512, features=256, width=512),
    "groupnorm conv": dict(batch=64, channels=16, image=16, hidden=32),
    "transformer": dict(batch=16, tokens=64, features=128, heads=4),
}
# Small, but with activations larger than a layer's parameters (as at full size),
# or the per-layer bytes measure copies of the parameters instead.
QUICK_SIZES = {
    "relu": dict(batch=256, features=32, width=32),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One residual kind in one chain form, and the methods measured on it."""

    kind: str  # a key of `_models.RESIDUALS`
    chain: str  # "Sequential" or "ScannedSequential"
    methods: tuple[str, ...] = _residuals.METHODS


@dataclasses.dataclass(frozen=True)
class Config:
    image: int  # height = width of the (3-channel) input
    batch: int
    hidden: int  # channels inside each residual
    paddings: tuple[int, ...]  # channels after zero-padding; one figure each
    layers_per_block: tuple[int, ...]
    budget_layers: int  # budget: backprop's memory at this many layers per block
    max_layers: int  # compiles up to here; beyond, the line is extrapolated
    residual_cases: tuple[Case, ...]
    residual_sizes: dict
    # Depths in couplings, per chain form: the slope is taken between the two.
    # Stacks compile in a time that does not grow with depth, so they go to 64,
    # where √L (8) divides the depth as it does at 16 (4).
    residual_depths: dict = dataclasses.field(
        default_factory=lambda: {"Sequential": (16, 32), "ScannedSequential": (16, 64)}
    )
    budget_mb: float | None = None  # a budget of its own, instead of budget_layers
    # Processes compiling the programs (1: all in this one).
    jobs: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)


FULL = Config(
    image=32,
    batch=512,
    hidden=64,
    paddings=(8, 18),
    layers_per_block=(1, 3, 5, 10),
    budget_layers=5,
    # Deep enough that only the flat methods' memory does not reach the budget
    # (ProjForward's grows ~1 MB per layer per block).
    max_layers=512,
    residual_cases=tuple(Case(k, c) for k in RESIDUALS for c in CHAINS),
    residual_sizes=FULL_SIZES,
)
# The smoke run: compile time is per program, whatever the sizes, so it measures
# few programs: every method once (ReLU MLPs, stacked), the main ones elsewhere.
QUICK_METHODS = ("backprop", "checkpointed", _residuals.SQRT, "mixed")
QUICK = Config(
    image=32,
    batch=64,
    hidden=16,
    paddings=(8,),
    layers_per_block=(2, 3),
    budget_layers=3,
    max_layers=8,
    # One stack: the unit tests (tests/test_memory.py) measure both chain forms.
    residual_cases=(Case("relu", "ScannedSequential"),),
    residual_sizes=QUICK_SIZES,
    # Not below 8 in a `Sequential`: up to Mixed's anchor spacing (8) there is one
    # segment, and no anchor to grow by. A stack compiles in a time that does not
    # grow with depth: the full run's depths, past the first anchors.
    residual_depths={"Sequential": (8, 16), "ScannedSequential": (16, 64)},
    # In this process: a spawned worker cannot start where `__main__` is not a
    # file (a pytest-xdist worker reads its code from stdin), and waits forever.
    jobs=1,
)

# Forward-mode methods run `chunk_size` JVPs at once and keep that many sets of
# activations: measured at 1, their least memory (and slowest).
CHUNK_SIZE = 1


def _revnet_temp(config: Config, padding: int, known: dict | None = None):
    """`temp_at(method, layers_per_block) -> bytes`, cached (starting from `known`,
    the same keys)."""
    x = jnp.ones((config.batch, 3, config.image, config.image), jnp.float32)
    transforms = methods(METHODS, chunk_size=CHUNK_SIZE)
    cache = dict(known or {})

    # Every method is compiled at the same depths (the figure's, the cap's): build
    # each network once. At 512 layers per block it holds ~450 MB of weights.
    @functools.lru_cache(maxsize=2)
    def model(layers: int):
        return conv_revnet(layers, padded_channels=padding, hidden=config.hidden)

    def temp_at(method: str, layers: int) -> int:
        if (method, layers) not in cache:
            cache[method, layers] = temp_bytes(
                transforms[method], squared_loss, model(layers), x
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


# Growth below this share of the budget between the figure's deepest network and
# the cap counts as none: XLA's bookkeeping adds a few KB over hundreds of layers
# to methods that keep nothing per layer, a line that would cross any budget only
# at hundreds of millions of layers.
FLAT = 1e-3


def extrapolate(budget: int, temp_at, lo: int, hi: int) -> int | None:
    """Where the line through `temp_at(lo)` and `temp_at(hi)` (`lo < hi`, both
    within the budget) crosses `budget`, in whole layers; `None` for a line that
    does not grow (by less than `FLAT` of the budget: a flat method)."""
    growth = temp_at(hi) - temp_at(lo)
    if growth <= FLAT * budget:
        return None
    return hi + int((budget - temp_at(hi)) * (hi - lo) / growth)


def _budget(config: Config, temp_at) -> dict:
    """The deepest network (layers per block) each method fits into
    `config.budget_mb`, or else into backprop's memory at `config.budget_layers`
    layers per block: searched by compiles up to `config.max_layers`, extrapolated
    beyond (those methods are listed under `"extrapolated"`; `None`: flat)."""
    if config.budget_mb is None:
        budget = temp_at("backprop", config.budget_layers)
    else:
        budget = int(config.budget_mb * 1e6)
    deepest, extrapolated = {}, []
    cap = config.max_layers
    for method in progress(METHODS, "budget search"):
        at = lambda layers, m=method: temp_at(m, layers)
        # Start from the figure's depths. Not from 1 alone: at one layer per block
        # XLA compiles the scans differently and some methods take *more* memory
        # than at two (the paper notes such a gap at one layer per block too).
        known = _revnet_depths(config)
        fitting = [d for d in known if at(d) <= budget]
        if at(cap) <= budget:
            # Past the cap: the line through the cap and the figure's deepest
            # network (far apart, so that XLA's small steps do not tilt it).
            below = max(d for d in known if d < cap)
            deepest[method] = extrapolate(budget, at, below, cap)
            extrapolated.append(method)
        elif not fitting:  # shallower than the figure's shallowest, if at all
            below = [d for d in range(1, known[0]) if at(d) <= budget]
            deepest[method] = max(below, default=0)
        else:
            lo = max(fitting)
            hi = min(d for d in known if d > lo)
            deepest[method] = deepest_within(budget, at, lo, hi)
    return {
        "budget_bytes": budget,
        "max_layers": cap,
        "extrapolated": extrapolated,
        **deepest,
    }


def _deepest_cell(budget: dict, method: str) -> str:
    depth = budget[method]
    if depth is None:
        return f"unbounded (flat: grows < {FLAT:.1%} of the budget)"
    return (
        f"~{depth} (extrapolated)" if method in budget["extrapolated"] else str(depth)
    )


def _revnet_depths(config: Config) -> list[int]:
    """The depths every method is compiled at: the figure's and the cap."""
    return sorted({*config.layers_per_block, config.max_layers})


def _revnet_job(config: Config, padding: int, layers: int) -> dict:
    """Every method's temp bytes at one depth, as `temp_at`'s cache keys (a job
    for a worker: one network built, seven programs compiled)."""
    temp_at = _revnet_temp(config, padding)
    return {(m, layers): temp_at(m, layers) for m in METHODS}


def _revnet(config: Config, padding: int, out, known: dict | None = None) -> dict:
    temp_at = _revnet_temp(config, padding, known)
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
    cap = config.max_layers
    # Growth between the figure's deepest network and the cap (the search compiled
    # every method there): what tells the nearly flat methods apart.
    deep_slope = {
        m: (temp_at(m, cap) - temp_at(m, depths[-1])) / (cap - depths[-1]) / 1e6
        for m in METHODS
    }

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
        f"({budget['budget_bytes'] / 1e6:.1f} MB): compiled up to {cap} layers per "
        f"block; past {cap}, extrapolated from the line through {depths[-1]} and "
        f"{cap} (marked ~)",
        [
            "method",
            "layers per block",
            "vs backprop",
            f"MB per layer, {depths[-1]}-{cap}",
        ],
        [
            [
                m,
                _deepest_cell(budget, m),
                "unbounded"
                if budget[m] is None
                else budget[m] / deepest_backprop
                if deepest_backprop
                else float("inf"),
                deep_slope.get(m, "-"),
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
        "MB_per_layer_per_block_to_cap": deep_slope,
        "deepest_within_budget": budget,
    }


def _temps(kind: str, chain: str, depth: int, names, size: dict) -> dict:
    """Temp bytes of each method of `names` that applies, on `depth` couplings of
    `kind` as a `chain`. A job of its own, so that it can run in a worker."""
    residual = RESIDUALS[kind]
    scanned = chain == "ScannedSequential"
    model = residual.build(depth, scanned, size)
    x = _residuals.example_input(residual, size)
    transforms = _residuals.transforms(names, residual, depth, scanned)
    return {m: temp_bytes(t, squared_loss, model, x) for m, t in transforms.items()}


def _jobs(config: Config) -> list[tuple]:
    jobs = [
        (case.kind, case.chain, depth, case.methods, config.residual_sizes[case.kind])
        for case in config.residual_cases
        for depth in config.residual_depths[case.chain]
    ]
    # Longest first (unrolled chains compile in time growing with depth), so that
    # the workers finish together.
    return sorted(jobs, key=lambda j: (j[1] == "Sequential", j[2]), reverse=True)


def _case(config: Config, case: Case, temps: dict) -> dict:
    """`case`'s results from `temps[(kind, chain, depth)]`."""
    residual = RESIDUALS[case.kind]
    scanned = case.chain == "ScannedSequential"
    lo, hi = config.residual_depths[case.chain]
    at = [temps[case.kind, case.chain, d] for d in (lo, hi)]
    mb = {m: [t[m] / 1e6 for t in at] for m in at[0]}
    slope = {m: (v[1] - v[0]) / (hi - lo) for m, v in mb.items()}
    return {
        "kind": case.kind,
        "chain": case.chain,
        "network": _residuals.describe(residual, config.residual_sizes[case.kind]),
        "depths": [lo, hi],
        "sqrt_segment_length": [
            _residuals.segment_length(d, residual) for d in (lo, hi)
        ],
        "binomial_checkpoints": [
            _residuals.binomial_checkpoints(d // residual.per_entry) for d in (lo, hi)
        ]
        if scanned
        else None,
        "MB": mb,
        "MB_per_layer": slope,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else 0.0


def _case_table(r: dict) -> None:
    lo, hi = r["depths"]
    slope, mb = r["MB_per_layer"], r["MB"]
    per_layer = slope.get("checkpointed")
    entries = " blocks of 2" if RESIDUALS[r["kind"]].per_entry > 1 else ""
    lengths = "/".join(map(str, r["sqrt_segment_length"]))
    notes = [f"√L segments of {lengths}{entries or ' couplings'}"]
    if r["binomial_checkpoints"]:
        counts = "/".join(map(str, r["binomial_checkpoints"]))
        notes.append(f"binomial with {counts} checkpoints (≈√n for n scan steps)")
    table(
        f"{r['network']} ({r['chain']}): temp_size_in_bytes at {lo} and {hi} "
        f"couplings ({'; '.join(notes)}, at the two depths)",
        ["method", f"MB @{lo}", f"MB @{hi}", "MB per layer", "vs checkpointed"],
        [
            [
                m,
                v[0],
                v[1],
                slope[m],
                "-" if per_layer is None else _ratio(slope[m], per_layer),
            ]
            for m, v in mb.items()
        ],
    )


def _targets_table(results: list[dict]) -> None:
    """Mixed against checkpointing, one line per kind and chain form."""
    rows = []
    for r in results:
        slope, mb = r["MB_per_layer"], r["MB"]
        if "mixed" not in slope or "checkpointed" not in slope:
            continue
        vs = _ratio(slope["mixed"], slope["checkpointed"])
        sqrt = mb.get(_residuals.SQRT)
        total = _ratio(mb["mixed"][1], sqrt[1]) if sqrt else "-"
        rows.append(
            [
                r["kind"],
                r["chain"],
                slope["mixed"],
                slope["checkpointed"],
                vs,
                "yes" if vs <= 0.25 else "no",
                r["depths"][1],
                total,
            ]
        )
    table(
        "Mixed against checkpointing: its slope over per-layer checkpointing's "
        "(target <= 0.25), its total at the deeper depth over √L segments'",
        [
            "kind",
            "chain",
            "mixed MB/layer",
            "checkpointed MB/layer",
            "ratio",
            "<= 1/4",
            "deeper depth",
            "mixed / √L total",
        ],
        rows,
    )


def memory(config: Config, out) -> dict:
    jobs = _jobs(config)
    temps = {}
    if config.jobs > 1:
        # Compiling is mostly one thread: the programs every method needs (the
        # RevNet's at the figure's depths and the cap, every residual kind's)
        # compile in worker processes (spawned: JAX does not survive a fork),
        # while this one waits for the RevNet's and then runs the budget searches.
        # The numbers are the same as in one process.
        context = multiprocessing.get_context("spawn")
        # A fresh worker every few jobs: XLA's CPU code memory is not given back,
        # and a worker that compiled a whole run's programs ran out of it (LLVM
        # "Unable to allocate section memory"). `multiprocessing.Pool`, not
        # `ProcessPoolExecutor(max_tasks_per_child=...)`, which can wait forever
        # for a retired worker on Python 3.11 (seen here).
        with context.Pool(config.jobs, maxtasksperchild=4) as pool:
            known = {
                padding: [
                    pool.apply_async(_revnet_job, (config, padding, layers))
                    for layers in _revnet_depths(config)
                ]
                for padding in config.paddings
            }
            pending = {pool.apply_async(_temps, job): job[:3] for job in jobs}
            revnet = []
            for padding, results in known.items():
                done = {}
                for result in progress(
                    results, f"memory, padding {padding} (workers)", total=len(results)
                ):
                    done.update(result.get())
                revnet.append(_revnet(config, padding, out, done))
            for result, key in progress(
                pending.items(), "memory, residual kinds", total=len(jobs)
            ):
                temps[key] = result.get()
    else:
        revnet = [_revnet(config, padding, out) for padding in config.paddings]
        for job in progress(jobs, "memory, residual kinds"):
            temps[job[:3]] = _temps(*job)
    residuals = [_case(config, case, temps) for case in config.residual_cases]
    for r in residuals:
        _case_table(r)
    _targets_table(residuals)
    results = {
        "device": device(),
        "forward_chunk_size": CHUNK_SIZE,
        "revnet": revnet,
        "residuals": residuals,
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
    write_csv(
        out,
        "memory_residuals.csv",
        [
            {
                "kind": r["kind"],
                "chain": r["chain"],
                "method": m,
                "layers": d,
                "temp_MB": v,
            }
            for r in residuals
            for m, values in r["MB"].items()
            for d, v in zip(r["depths"], values, strict=True)
        ],
    )
    write_json(out, "memory.json", results)
    return results
