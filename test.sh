#!/usr/bin/env bash
# Runs the test suite. Works on a fresh machine with only Python >= 3.11 and pip:
# creates (or reuses) the virtual environment .venv, installs the package with its
# `test` extra, then runs pytest. Extra arguments go to pytest:
#
#   bash test.sh                      # the unit tests (what every change runs)
#   bash test.sh -m end_to_end        # the whole runs: benchmarks' smoke runs,
#                                     # the docs' pages, the multi-device check,
#                                     # the memory checks slowest to compile
#   bash test.sh -m ''                # both (CI runs both, one after the other)
#   bash test.sh -k coupling -x       # a subset of the unit tests
#   bash test.sh tests/test_docs.py   # a file, whatever its tests' marks
#
# PYTHON=python3.12 or VENV=/some/dir override the interpreter or the environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/venv.sh

section "set-up: virtual environment with .[test]"
ensure_venv test

# A compilation cache for this run alone, shared by the workers: hypothesis
# examples, the two workers and successive test modules compile many identical
# programs (a fifth of the run's time). Fresh each run, removed after it.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
    JAX_COMPILATION_CACHE_DIR="$(mktemp -d)"
    trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
    export JAX_COMPILATION_CACHE_DIR
    export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
    export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
fi

# LLVM's optimisation level 0: the suite compiles thousands of small programs, and
# at level 0 XLA's own passes, buffers (`temp_size_in_bytes`) and float64 results
# are unchanged; only the machine code is slower. About a fifth of the run's time.
# The benchmarks time code compiled at the default level.
export XLA_FLAGS="--xla_backend_optimization_level=0${XLA_FLAGS:+ $XLA_FLAGS}"

# The unit tests unless the arguments choose (a mark, or files).
select=(-m "not end_to_end")
for arg in "$@"; do
    case "$arg" in -m | -m* | tests/* | ./tests/*) select=() ;; esac
done

section "tests: python -m pytest ${select[*]:+${select[*]} }${*:+$*}"
start=$SECONDS
status=0
# Two workers (CI has two cores): compiling dominates, and XLA compiles on one.
# Work stealing: test times range from a second to a minute.
python -m pytest -ra --durations=5 -n "${TEST_WORKERS:-2}" --dist worksteal \
    ${select[@]+"${select[@]}"} "$@" || status=$?
echo "test wall time: $((SECONDS - start)) s"
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests (exit code 5); counting that as a failure." >&2
    exit 1
fi
exit "$status"
