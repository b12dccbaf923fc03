#!/usr/bin/env bash
# Set up (install packages, build), then run the whole test suite. GPU tests report "skipped"
# where there is no GPU. Extra arguments go to ctest (e.g. -L unit, -LE slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
