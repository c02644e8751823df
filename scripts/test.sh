#!/usr/bin/env bash
# Quick start, command 2: install what is missing, build, run the whole test suite
# (unit tests, then integration tests that mount real FUSE file systems; needs root).
#   scripts/test.sh              everything: unit, integration and the QEMU guest tests
#                                (label vm, scripts/test-vm.sh), then the unit suite again
#                                under ASan+UBSan from a build of its own in build-asan/
#                                (EFUSE_TEST_SANITIZE=0 skips that; 6-12 more minutes)
#   scripts/test.sh -L unit      one label (unit, integration, vm), no sanitizer pass
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
sanitize=0
if (($# == 0)); then
  sanitize=${EFUSE_TEST_SANITIZE:-1}
fi
(cd build && ctest --output-on-failure --timeout 900 "$@")
if ((sanitize)); then
  echo "test.sh: the unit suite under ASan+UBSan (build-asan/)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEFUSE_SANITIZE=address,undefined >/dev/null
  cmake --build build-asan -j"$(nproc)" --target efuse_unit_tests
  (cd build-asan && ctest --output-on-failure --timeout 900 -L unit -j"$(nproc)")
fi
