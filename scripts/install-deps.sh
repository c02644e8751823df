#!/usr/bin/env bash
# Installs every Debian 12 package efuse needs that is not already present.
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --bench    also what bench/ needs (linux-source tarball, libfuse examples)
#   scripts/install-deps.sh --vm       also what the QEMU guest tests need (scripts/test-vm.sh)
#   scripts/install-deps.sh --kmod     also what building the kernel module needs (kmod/build.sh)
# Runs apt-get only when something is missing, so repeated runs are fast and offline-safe.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config            # toolchain
  libgtest-dev googletest                     # unit tests
  libyaml-cpp-dev libvalijson-dev             # config: YAML + JSON Schema validation
  nlohmann-json3-dev                          # JSON views (D-Bus, efusectl)
  prometheus-cpp-dev                          # /metrics registry and HTTP exposer
  libsystemd-dev dbus                         # sd-bus, sd-notify; dbus-daemon for tests
  liburing-dev                                # FUSE over io_uring queues
  clang llvm libbpf-dev bpftool               # eBPF programs (CO-RE) and their skeletons
  prometheus                                  # real Prometheus + promtool for metrics tests
  fuse3 libfuse3-dev                          # fusermount3 (non-root mounts); libfuse examples for the baseline
  util-linux procps psmisc                    # findmnt, mountpoint, pkill, fuser
  python3                                     # integration test harness (stdlib only)
  bash-completion                             # completions/ under bash-completion (test_completion)
  groff-base                                  # man page checks (test_manpages)
  coreutils tar git attr acl xz-utils diffutils   # real programs the integration tests drive
  fio stress-ng                               # I/O verification and stress
)
for arg in "$@"; do
  case "$arg" in
    --bench) pkgs+=(linux-source-6.1 hyperfine) ;;
    # QEMU, the guest's busybox and initramfs tools, module indexing (depmod, modprobe
    # --show-depends), the data disk (mkfs.ext4 -d, debugfs), .ko.xz decompression.
    --vm) pkgs+=(qemu-system-x86 busybox-static cpio kmod e2fsprogs xz-utils) ;;
    # kmod/build.sh: the kernel's compiler, kbuild's tools, pahole for the module's BTF;
    # dkms (tests/vm builds the module through kmod/dkms.conf).
    --kmod) pkgs+=(gcc-12 make patch xz-utils dwarves dkms) ;;
    *) echo "install-deps: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  [[ "$p" == \#* ]] && continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install packages" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
