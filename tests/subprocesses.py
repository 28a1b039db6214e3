"""Running Python in a process of its own, for tests that need XLA flags other
than the test run's (XLA reads them once, when JAX starts)."""

import os
import subprocess
import sys


def run_python(
    *args: str, xla_flags: str = "", default_optimisation: bool = False, **env: str
) -> subprocess.CompletedProcess:
    """`python *args`, asserted to succeed. `xla_flags` are added to the inherited
    ones; `default_optimisation` drops the LLVM level that test.sh sets (for code
    that runs long rather than compiles much); `env` sets further variables."""
    environ = {**os.environ, **env}
    flags = environ.get("XLA_FLAGS", "").split()
    if default_optimisation:
        flags = [f for f in flags if "optimization_level" not in f]
    environ["XLA_FLAGS"] = " ".join([*flags, *xla_flags.split()])
    run = subprocess.run(
        [sys.executable, *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run
