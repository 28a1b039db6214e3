#!/usr/bin/env bash
# The main job: a quick demonstration run of the benchmarks (compiled memory of
# every gradient method against depth, the deepest network each fits into
# backprop's memory, then a short training run on scikit-learn's digits with
# backprop, Mixed and reversible gradients; tables on stdout, CSV/JSON/PNG files in
# bench-out/). Works on a fresh machine with only Python >= 3.11 and pip: creates
# (or reuses) the virtual environment .venv and installs the package with its
# `bench` extra first. Extra arguments go to `python -m invertible.bench demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/venv.sh

section "set-up: virtual environment with .[bench]"
ensure_venv bench

section "demo: python -m invertible.bench demo --quick${*:+ $*}"
exec python -m invertible.bench demo --quick "$@"
