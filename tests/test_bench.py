"""The benchmarks: their helpers, the CIFAR-10 reader, and every subcommand's
`--quick` run as a smoke test (files written, numbers sane)."""

import dataclasses
import json
import math
import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invertible import grad as G
from invertible.bench import _compile, _data, _memory, _residuals, _time
from invertible.bench.__main__ import main
from invertible.bench._measure import relative_error, temp_bytes
from invertible.bench._memory import deepest_within
from invertible.bench._models import RESIDUALS, conv_revnet, squared_loss
from subprocesses import run_python

pytestmark = pytest.mark.usefixtures("unchecked")


def _run(command: str, out, *extra: str) -> None:
    # As from the command line: the test run enables float64 globally.
    with jax.enable_x64(False):
        main([command, "--quick", "--out", str(out), *extra])


def _read(out, name: str, png: str | None = None):
    for path in (
        out / f"{name}.json",
        out / f"{name}.csv",
        out / (png or f"{name}.png"),
    ):
        assert path.is_file() and path.stat().st_size > 0, path
    return json.loads((out / f"{name}.json").read_text())


def test_fast_compile_keeps_the_byte_count():
    model = conv_revnet(2, hidden=4)
    x = jnp.ones((2, 3, 8, 8), jnp.float32)
    fast = temp_bytes(G.mixed_grad, squared_loss, model, x, fast=True)
    assert fast == temp_bytes(G.mixed_grad, squared_loss, model, x, fast=False)


def test_deepest_within_finds_the_last_depth_under_budget():
    probes = []

    def temp_at(depth):
        probes.append(depth)
        return 100 + 7 * depth + (depth % 3)  # close to linear, not exactly

    for budget in (108, 300, 1000):
        probes.clear()
        deepest = deepest_within(budget, temp_at, 1, 1000)
        assert temp_at(deepest) <= budget < temp_at(deepest + 1)
        assert len(probes) <= 2 + 6  # a handful of compiles, not a scan


def test_budget_search_with_a_budget_of_its_own():
    # Synthetic linear memory (MB) per method: no compiles.
    slope = {m: 10.0 / (i + 1) for i, m in enumerate(_memory.METHODS)}
    temp_at = lambda method, layers: int((100 + slope[method] * layers) * 1e6)
    config = dataclasses.replace(_memory.QUICK, budget_mb=151.0, max_layers=64)
    deepest = _memory._budget(config, temp_at)
    assert deepest["budget_bytes"] == 151_000_000
    for method in _memory.METHODS:
        expected = min(int(51 / slope[method]), 64)  # no ties with the budget
        assert deepest[method] == expected, method


def test_budget_search_extrapolates_past_its_cap():
    # The same lines, searched only to 16 layers: the deeper ones come from the
    # line through the figure's deepest network and the cap; a flat one is None.
    slope = {m: 10.0 / (i + 1) for i, m in enumerate(_memory.METHODS)}
    slope["reversible"] = 0.0
    temp_at = lambda method, layers: int((100 + slope[method] * layers) * 1e6)
    config = dataclasses.replace(_memory.QUICK, budget_mb=151.0, max_layers=16)
    deepest = _memory._budget(config, temp_at)
    assert deepest["reversible"] is None
    for method in _memory.METHODS:
        if method == "reversible":
            continue
        expected = int(51 / slope[method])
        assert abs(deepest[method] - expected) <= 1, method
        assert (method in deepest["extrapolated"]) == (expected > 16), method


def _write_cifar10(folder, images_per_file: int = 10) -> dict:
    rng = np.random.default_rng(0)
    written = {}
    for name in (*_data.CIFAR10_TRAIN, _data.CIFAR10_TEST):
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (images_per_file, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, images_per_file).tolist(),
            b"filenames": [b"x.png"] * images_per_file,
        }
        (folder / name).write_bytes(pickle.dumps(batch))
        written[name] = batch
    return written


def test_cifar10_reader(tmp_path):
    written = _write_cifar10(tmp_path)
    data = _data.cifar10(tmp_path)
    assert data.x_train.shape == (50, 3, 32, 32) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (10, 3, 32, 32)
    assert data.y_train.dtype == np.int32 and data.classes == 10
    np.testing.assert_array_equal(data.y_test, written["test_batch"][b"labels"])
    np.testing.assert_array_equal(
        data.y_train[10:20], written["data_batch_2"][b"labels"]
    )
    # Standardised per channel with the training set's statistics.
    np.testing.assert_allclose(data.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=(0, 2, 3)), 1, atol=1e-3)
    # The layout: 1024 red bytes, row-major, then green, then blue.
    raw = written["test_batch"][b"data"][3].astype(np.float64)
    image = data.x_test[3]
    for channel in range(3):
        plane = raw[1024 * channel : 1024 * (channel + 1)].reshape(32, 32)
        corr = np.corrcoef(plane.ravel(), image[channel].ravel())[0, 1]
        assert corr > 0.999


def test_cifar10_reader_names_missing_files(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        _data.cifar10(tmp_path)


def test_train_cifar10_needs_a_complete_folder(tmp_path):
    with pytest.raises(SystemExit, match="--data-dir"):
        main(["train", "--dataset", "cifar10", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="data_batch_1"):
        main(
            [
                "train",
                "--dataset",
                "cifar10",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path),
            ]
        )


def test_binomial_baseline_is_backprop():
    residual = RESIDUALS["transformer"]  # a stacked block, the harder case
    size = dict(batch=2, tokens=4, features=8, heads=2)
    model = residual.build(8, True, size)
    x = _residuals.example_input(residual, size)
    with jax.enable_x64(False):
        grads = eqx.filter_jit(_residuals.binomial_grad(2)(squared_loss))(model, x)
        reference = eqx.filter_jit(eqx.filter_grad(squared_loss))(model, x)
    assert relative_error(grads, reference) < 1e-5


@pytest.mark.end_to_end
def test_memory_quick(tmp_path):
    _run("memory", tmp_path)
    results = _read(tmp_path, "memory", png="memory_pad8.png")
    assert (tmp_path / "memory_residuals.csv").stat().st_size > 0
    (revnet,) = results["revnet"]
    slope = revnet["MB_per_layer_per_block"]
    assert 0 <= slope["mixed"] < 0.5 * slope["backprop"]
    assert abs(slope["reversible"]) < 0.1 * slope["backprop"]  # flat
    deepest = revnet["deepest_within_budget"]
    assert deepest["reversible"] is None  # flat: no depth reaches the budget
    assert deepest["mixed"] >= 2 * deepest["backprop"]  # the paper's v2 claim
    # Past the cap, the finite depths come from the line: ProjForward's slope is
    # a third of Forward's, so it reaches deeper.
    assert "projected forward" in deepest["extrapolated"]
    cap = deepest["max_layers"]
    assert deepest["projected forward"] > deepest["forward"] > cap
    cases = {(r["kind"], r["chain"]): r for r in results["residuals"]}
    assert set(cases) == {(c.kind, c.chain) for c in _memory.QUICK.residual_cases}
    for (kind, chain), r in cases.items():
        slope = r["MB_per_layer"]
        # Mixed keeps less per layer than per-layer checkpointing (an activation
        # per coupling), and backprop keeps more.
        assert 0 <= slope["mixed"] < slope["checkpointed"] < slope["backprop"], kind
        if "reversible" in slope:
            assert abs(slope["reversible"]) < 1e-3 * slope["backprop"]
        # The binomial baseline needs a stack; "bits" needs ReLU units.
        if chain == "Sequential":
            assert _residuals.BINOMIAL not in slope
        if "mixed (bits)" in slope or "mixed (residuals)" in slope:
            assert ("mixed (bits)" in slope) == RESIDUALS[kind].relu
    # Every method ran somewhere.
    measured = {m for r in cases.values() for m in r["MB"]}
    assert measured == set(_residuals.METHODS)


@pytest.mark.end_to_end
def test_time_quick(tmp_path):
    _run("time", tmp_path)
    results = _read(tmp_path, "time")
    for network in ("revnet", "tiny"):
        for ratios in results[network]["ratio_to_backprop"].values():
            assert all(math.isfinite(r) and r > 0 for r in ratios)
    assert min(results["tiny"]["forward_over_moonwalk"]) > 1
    assert (tmp_path / "time_vs_memory.png").stat().st_size > 0
    residuals = results["residuals"]
    for kind in _time.QUICK.residuals.kinds:
        r = residuals[kind]
        assert set(r["seconds"]) == set(r["MB"]) and "mixed" in r["seconds"]
        assert r["ratio_to_backprop"]["backprop"] == 1
        assert all(math.isfinite(v) and v > 0 for v in r["ratio_to_backprop"].values())
        assert r["MB"]["mixed"] < r["MB"]["backprop"]


@pytest.mark.end_to_end
def test_compile_quick(tmp_path):
    _run("compile", tmp_path)
    assert (tmp_path / "compile.csv").stat().st_size > 0
    results = json.loads((tmp_path / "compile.json").read_text())["residuals"]
    for kind in _compile.QUICK.kinds:
        for depth in map(str, _compile.QUICK.depths):
            r = results[kind][depth]
            stages = [v for s in r["seconds"].values() for v in s.values()]
            assert all(math.isfinite(v) and v > 0 for v in stages), r


@pytest.mark.end_to_end
def test_accuracy_quick(tmp_path):
    _run("accuracy", tmp_path)
    results = _read(tmp_path, "accuracy")
    errors = results["relu"]
    assert max(errors["backprop"]) < 1e-4
    assert max(errors["mixed (anchors every 8)"]) < 1e-3


@pytest.mark.end_to_end
def test_train_quick(tmp_path):
    # In a process of its own, compiled at XLA's default optimisation level:
    # test.sh compiles at level 0, for a suite whose cost is compiling, but
    # training runs hundreds of steps (4x slower at level 0, measured).
    command = ["train", "--quick", "--out", str(tmp_path)]
    run_python("-m", "invertible.bench", *command, default_optimisation=True)
    results = _read(tmp_path, "train")
    accuracy = results["final_test_accuracy"]
    assert set(accuracy) == {"backprop", "mixed", "reversible"}
    assert all(a > 0.5 for a in accuracy.values()), accuracy  # chance: 0.1
    # The same start and batches: Mixed follows backprop's trajectory.
    assert results["distance_to_backprop"]["mixed"] < 1e-2
