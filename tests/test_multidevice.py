"""Data-parallel gradients over a 4-device CPU mesh equal single-device gradients,
for every method (see `tests/multidevice_check.py`, run here in a subprocess: the
device count must be set before JAX starts)."""

import json
import pathlib

import pytest

from subprocesses import run_python

SCRIPT = pathlib.Path(__file__).with_name("multidevice_check.py")


@pytest.mark.end_to_end
def test_data_parallel_gradients_on_four_cpu_devices():
    run = run_python(
        str(SCRIPT),
        xla_flags="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
    )
    results = [json.loads(line) for line in run.stdout.splitlines() if line]
    methods = {r["method"] for r in results}
    assert methods == {
        "mixed",
        "moonwalk",
        "reversible",
        "checkpointed",
        "forward",
        "projected_forward",
    }
    assert all(r["ok"] for r in results), results
