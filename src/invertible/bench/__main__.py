"""`python -m invertible.bench {memory,time,compile,accuracy,train,flow,demo} [--quick]
[--out DIR]`.

Every subcommand prints Markdown tables, shows progress on stderr, and writes CSV
and JSON files (and PNG figures) into `--out` (default `bench-out/`). `--quick`
runs tiny sizes (a smoke test, a couple of minutes on two CPU cores); the numbers
worth reading come from the full sizes. See docs/benchmarks.md for a full run.
"""

import argparse
import dataclasses
import pathlib
import time

from . import _accuracy, _compile, _data, _flow, _memory, _time, _train


def _train_command(args) -> dict:
    if args.dataset == "cifar10":
        if args.data_dir is None:
            raise SystemExit("train --dataset cifar10 needs --data-dir")
        try:
            data = _data.cifar10(args.data_dir)
        except FileNotFoundError as error:
            raise SystemExit(str(error)) from None
        config = _train.CIFAR10_QUICK if args.quick else _train.CIFAR10_FULL
    else:
        data = _data.digits()
        config = _train.DIGITS_QUICK if args.quick else _train.DIGITS_FULL
    if args.epochs is not None:
        config = dataclasses.replace(config, epochs=args.epochs)
    return _train.train(config, data, args.out)


def _demo(args) -> dict:
    """The main job's quick demonstration: memory against depth (with the deepest
    network under a budget), then a short training run on the digits."""
    return {
        "memory": _memory.memory(_memory.QUICK, args.out),
        "train": _train.train(_train.DIGITS_QUICK, _data.digits(), args.out),
    }


COMMANDS = {
    "memory": lambda a: _memory.memory(
        dataclasses.replace(
            _memory.QUICK if a.quick else _memory.FULL, budget_mb=a.budget_mb
        ),
        a.out,
    ),
    "time": lambda a: _time.timing(_time.QUICK if a.quick else _time.FULL, a.out),
    "compile": lambda a: _compile.compile_times(
        _compile.QUICK if a.quick else _compile.FULL, a.out
    ),
    "accuracy": lambda a: _accuracy.accuracy(
        _accuracy.QUICK if a.quick else _accuracy.FULL, a.out
    ),
    "train": _train_command,
    "flow": lambda a: _flow.flow(
        dataclasses.replace(
            _flow.QUICK if a.quick else _flow.FULL,
            **({} if a.epochs is None else {"epochs": a.epochs}),
        ),
        a.out,
    ),
    "demo": _demo,
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m invertible.bench", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "command",
        choices=list(COMMANDS),
        help="memory (Figs 2-3, and the deepest network within a budget), time "
        "(Fig 4), compile (compile time of unrolled chains), accuracy (Fig 6), "
        "train (Fig 5), flow (a normalizing flow on the digits), demo (memory and "
        "train, quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("bench-out"),
        help="folder for the CSV, JSON and PNG files (default: bench-out)",
    )
    parser.add_argument(
        "--dataset",
        choices=["digits", "cifar10"],
        default="digits",
        help="train: scikit-learn's digits (built in) or CIFAR-10 (--data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="train --dataset cifar10: the folder with data_batch_1..5, test_batch",
    )
    parser.add_argument("--epochs", type=int, default=None, help="train, flow: epochs")
    parser.add_argument(
        "--budget-mb",
        type=float,
        default=None,
        help="memory: the budget (MB of compiled temporaries) for the deepest-network "
        "search (default: backprop's memory at 5 layers per block, 3 with --quick)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = COMMANDS[args.command](args)
    print(
        f"\n{args.command}: {time.perf_counter() - start:.0f} s; files in {args.out}/",
        flush=True,
    )
    return results


if __name__ == "__main__":
    main()
