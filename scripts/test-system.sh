#!/usr/bin/env bash
# System tests: efused under a real systemd in a booted Debian 12 container (slow; not part
# of scripts/test.sh). Needs root. Installs mmdebstrap and systemd-container if missing,
# builds efused and efusectl if they are not built, builds the container's rootfs once
# (cached in /var/cache/efuse-test/, a few minutes) and then runs in about a minute.
#   scripts/test-system.sh                     build/bin/efused and build/bin/efusectl
#   EFUSE_BUILD_DIR=/tmp/b scripts/test-system.sh   binaries from another build tree
#   scripts/test-system.sh --deb build/deb/efused_0.1.0_amd64.deb
#                                              also install that package (scripts/build-deb.sh)
#                                              with dpkg in a second container
#   scripts/test-system.sh --keep              leave the containers' rootfs copies behind
# Prints `N passed, N failed`; exits non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "test-system: needs root (systemd-nspawn, FUSE mounts)" >&2
  exit 2
fi

missing=()
for p in mmdebstrap systemd-container util-linux curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "test-system: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build_dir=${EFUSE_BUILD_DIR:-build}
if [[ ! -x $build_dir/bin/efused || ! -x $build_dir/bin/efusectl ]]; then
  if [[ -n ${EFUSE_BUILD_DIR:-} ]]; then
    echo "test-system: $build_dir/bin/efused or efusectl missing" >&2
    exit 2
  fi
  bash scripts/build.sh
fi

exec python3 tests/system/run_system_tests.py \
  --efused "$build_dir/bin/efused" --efusectl "$build_dir/bin/efusectl" "$@"
