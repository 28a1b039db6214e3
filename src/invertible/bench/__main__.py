"""`python -m invertible.bench {memory,time,accuracy,speed,demo} [--quick]`."""

import argparse
import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .. import grad as G
from ._measure import interleaved_medians, methods, relative_error, temp_bytes
from ._models import conv_revnet, mlp_couplings, squared_loss


def _table(title: str, header: list[str], rows: list[list]) -> str:
    lines = [f"\n{title}", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{c:.3g}" if isinstance(c, float) else str(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory(quick: bool) -> dict:
    """Compiled temporary memory at two depths: bytes per layer, per method."""
    batch, features, width = (64, 64, 128) if quick else (2048, 256, 512)
    cases = {
        "MLP couplings, Sequential": lambda d: mlp_couplings(
            d, features=features, width=width
        ),
        "MLP couplings, ScannedSequential": lambda d: mlp_couplings(
            d, features=features, width=width, scanned=True
        ),
        "conv RevNet (3 blocks, pad 3->8)": lambda d: conv_revnet(d),
    }
    depths = {"conv RevNet (3 blocks, pad 3->8)": (2, 4) if quick else (3, 6)}
    inputs = {
        "conv RevNet (3 blocks, pad 3->8)": jnp.ones((16 if quick else 128, 3, 32, 32))
    }
    results = {}
    for case, build in cases.items():
        # Below ~16 layers XLA's buffer reuse makes the growth uneven; from 16 on
        # the slope is steady (measured to 64).
        lo, hi = depths.get(case, (4, 8) if quick else (16, 32))
        x = inputs.get(case, jnp.ones((batch, features)))
        per_layer = lo if "conv" not in case else 3 * lo  # layers added per step
        rows, results[case] = [], {}
        for name, transform in methods().items():
            a = temp_bytes(transform, squared_loss, build(lo), x)
            b = temp_bytes(transform, squared_loss, build(hi), x)
            slope = (b - a) / ((hi - lo) * per_layer // lo) / 1e6
            results[case][name] = {"lo": a, "hi": b, "MB_per_layer": slope}
        base = results[case]["backprop"]["MB_per_layer"]
        ckpt = results[case]["checkpointed"]["MB_per_layer"]
        for name, r in results[case].items():
            rows.append(
                [
                    name,
                    r["lo"] / 1e6,
                    r["hi"] / 1e6,
                    r["MB_per_layer"],
                    r["MB_per_layer"] / base,
                    r["MB_per_layer"] / ckpt,
                ]
            )
        print(
            _table(
                f"{case}: temp_size_in_bytes at depths {lo} and {hi}, input {x.shape}",
                [
                    "method",
                    f"MB @{lo}",
                    f"MB @{hi}",
                    "MB/layer",
                    "vs backprop",
                    "vs checkpointed",
                ],
                rows,
            ),
            flush=True,
        )
    return results


def timing(quick: bool) -> dict:
    """Median time per gradient, interleaved, as ratios to backprop."""
    depth, batch, features, width = (4, 32, 64, 128) if quick else (16, 256, 256, 512)
    model = mlp_couplings(depth, features=features, width=width)
    x = jr.normal(jr.key(1), (batch, features))
    fns = {
        name: eqx.filter_jit(t(squared_loss))
        for name, t in methods().items()
        if name != "moonwalk" or quick
    }
    medians = interleaved_medians(fns, (model, x), repeats=5 if quick else 9)
    rows = [[n, m / medians["backprop"]] for n, m in medians.items()]
    print(
        _table(
            f"Median time, depth {depth}, batch {batch}, {features} features, "
            f"width {width} (ratio to backprop)",
            ["method", "time / backprop"],
            rows,
        ),
        flush=True,
    )
    return {
        n: {"seconds": m, "ratio": m / medians["backprop"]} for n, m in medians.items()
    }


def accuracy(quick: bool) -> dict:
    """float32 gradient error against a float64 oracle from the same weights."""
    jax.config.update("jax_enable_x64", True)
    depths = (8, 16) if quick else (16, 32, 64)
    batch, features, width = (16, 32, 64) if quick else (128, 256, 512)

    def to(tree, dtype):
        cast = lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a
        return jax.tree.map(cast, tree)

    candidates = {
        "backprop": eqx.filter_grad,
        "mixed (anchors every 8)": G.mixed_grad(anchor_every=8),
        "mixed (anchors every 16)": G.mixed_grad(anchor_every=16),
        "mixed (no anchors)": G.mixed_grad(anchor_every=None),
        "moonwalk": G.moonwalk_grad,
        "reversible": G.reversible_grad,
    }
    results, rows = {}, []
    for depth in depths:
        model64 = to(mlp_couplings(depth, features=features, width=width), jnp.float64)
        x64 = jr.normal(jr.key(2), (batch, features), jnp.float64)
        oracle = eqx.filter_jit(eqx.filter_grad(squared_loss))(model64, x64)
        model32, x32 = to(model64, jnp.float32), x64.astype(jnp.float32)
        results[depth] = {}
        for name, t in candidates.items():
            g = eqx.filter_jit(t(squared_loss))(model32, x32)
            results[depth][name] = relative_error(g, oracle)
        rows.append([depth, *results[depth].values()])
    print(
        _table(
            f"float32 relative error vs float64 oracle (worst leaf), MLP couplings "
            f"{features} features, width {width}, LeCun-normal init, batch {batch}",
            ["depth", *candidates],
            rows,
        ),
        flush=True,
    )
    return results


def speed(quick: bool) -> dict:
    """Pure Moonwalk against full forward mode on a small-input network."""
    depth, features, width = (2, 16, 32) if quick else (6, 64, 128)
    model = mlp_couplings(depth, features=features, width=width)
    n_params = sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    x = jr.normal(jr.key(3), (8, features))
    fns = {
        "moonwalk": eqx.filter_jit(G.moonwalk_grad(squared_loss)),
        "forward": eqx.filter_jit(G.forward_grad(squared_loss, chunk_size=1024)),
    }
    medians = interleaved_medians(fns, (model, x), repeats=3)
    ratio = medians["forward"] / medians["moonwalk"]
    print(
        _table(
            f"Moonwalk vs forward: {n_params} parameters, input {features}, batch 8",
            ["method", "median seconds", "forward / moonwalk"],
            [
                ["moonwalk", medians["moonwalk"], ratio],
                ["forward", medians["forward"], 1.0],
            ],
        ),
        flush=True,
    )
    return {"parameters": n_params, "seconds": medians, "forward_over_moonwalk": ratio}


COMMANDS = {"memory": memory, "time": timing, "accuracy": accuracy, "speed": speed}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m invertible.bench")
    parser.add_argument("command", choices=[*COMMANDS, "demo"])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write JSON")
    args = parser.parse_args(argv)
    if args.command == "demo":
        results = {"memory": memory(True), "accuracy": accuracy(True)}
    else:
        results = COMMANDS[args.command](args.quick)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{args.command}.json"
        path.write_text(json.dumps(results, indent=2, default=float))
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
