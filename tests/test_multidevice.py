"""Data-parallel gradients over a 4-device CPU mesh equal single-device gradients,
for every method (see `tests/multidevice_check.py`, run here in a subprocess: the
device count must be set before JAX starts)."""

import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).with_name("multidevice_check.py")


def test_data_parallel_gradients_on_four_cpu_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    run = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    results = [json.loads(line) for line in run.stdout.splitlines() if line]
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
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
