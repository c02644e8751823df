#!/usr/bin/env bash
# Quick start, command 2: install what is missing, build, run the whole test suite
# (unit tests, then integration tests that mount real FUSE file systems; needs root).
#   scripts/test.sh              everything in the default suite
#   scripts/test.sh -L unit      one label (unit, integration, vm)
# With no arguments the QEMU guest tests (label vm, scripts/test-vm.sh) are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
cd build
if (($# == 0)); then
  set -- -LE vm
fi
ctest --output-on-failure --timeout 900 "$@"
