#!/usr/bin/env bash
# The main job: a quick demonstration run of the benchmarks (memory, time and
# accuracy of Moonwalk/Mixed gradients against backprop). Works on a fresh machine
# with only Python >= 3.11 and pip: creates (or reuses) the virtual environment
# .venv and installs the package with its `bench` extra first. Extra arguments go to
# `python -m invertible.bench demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/venv.sh

section "set-up: virtual environment with .[bench]"
ensure_venv bench

section "demo: python -m invertible.bench demo --quick${*:+ $*}"
exec python -m invertible.bench demo --quick "$@"
