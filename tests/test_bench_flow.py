"""The `flow` benchmark's `--quick` run as a smoke test: files written, numbers
finite, Mixed on backprop's trajectory with less memory per flow step."""

import json
import math

import jax
import pytest

from invertible.bench.__main__ import main

pytestmark = pytest.mark.usefixtures("unchecked")


@pytest.mark.end_to_end
def test_flow_quick(tmp_path):
    # As from the command line: the test run enables float64 globally.
    with jax.enable_x64(False):
        main(["flow", "--quick", "--out", str(tmp_path)])
    for name in ("flow.json", "flow.csv", "flow.png", "flow_samples.png"):
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, path
    results = json.loads((tmp_path / "flow.json").read_text())

    curves = results["curves"]
    assert set(curves) == {"backprop", "mixed"}
    for curve in curves.values():
        assert all(math.isfinite(v) for values in curve.values() for v in values)
    assert results["samples_finite"]
    # The same start and batches: Mixed's final bits/dim is backprop's to 3
    # significant digits.
    final = results["final_test_bpd"]
    assert abs(final["mixed"] - final["backprop"]) <= 5e-4 * abs(final["backprop"])
    assert results["distance_to_backprop"] < 1e-3

    per_step = results["memory"]["MB_per_flow_step"]
    assert all(math.isfinite(v) for v in per_step.values())
    assert per_step["mixed"] < per_step["backprop"]
