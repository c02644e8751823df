#!/usr/bin/env bash
# Quick start, command 2: install what is missing, build, run the whole test suite
# (unit tests, then integration tests that mount real FUSE file systems; needs root).
#   scripts/test.sh              everything in the default suite
#   scripts/test.sh -L unit      one label (unit, integration)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
cd build
ctest --output-on-failure --timeout 900 "$@"
