#!/usr/bin/env bash
# efused in QEMU guests that boot Debian's own kernels (6.12 and 6.1): the smoke tests on
# the stock kernel FUSE of each (slow under TCG; not part of scripts/test.sh; ctest label
# `vm`), and on 6.12 kmod/'s efuse.ko loaded. Needs root. Installs what is missing
# (scripts/install-deps.sh --vm --kmod), builds efused
# if it is not built, downloads the kernel packages once into /var/cache/efuse-vm
# (EFUSE_VM_CACHE) and unpacks them there; nothing is installed on the host.
#   scripts/test-vm.sh                    both kernels
#   scripts/test-vm.sh --kernel 6.12      one kernel (6.12, 6.1 or all)
#   scripts/test-vm.sh --keep             keep the work directory (initramfs, disks, console logs)
#   scripts/test-vm.sh --timeout 900      seconds before a hung guest is killed (a failure)
#   scripts/test-vm.sh --accel tcg        auto (default), kvm or tcg
#   scripts/test-vm.sh --no-kmod          without building and loading kmod/'s efuse.ko (6.12)
#   EFUSE_BUILD_DIR=/tmp/b scripts/test-vm.sh   efused from another build tree
# Prints `N passed, N failed`; exits non-zero when anything failed. See tests/vm/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bad arguments (and --help) end here, before anything is installed or built.
python3 tests/vm/run_vm_tests.py --check-args "$@"
for arg in "$@"; do
  [[ $arg == -h || $arg == --help ]] && exit 0
done
if [[ $(id -u) -ne 0 ]]; then
  echo "test-vm: needs root (QEMU's 9p export of /, FUSE mounts in the guest)" >&2
  exit 2
fi

bash scripts/install-deps.sh --vm --kmod
build_dir=${EFUSE_BUILD_DIR:-build}
if [[ ! -x $build_dir/bin/efused ]]; then
  if [[ -n ${EFUSE_BUILD_DIR:-} ]]; then
    echo "test-vm: $build_dir/bin/efused missing" >&2
    exit 2
  fi
  bash scripts/build.sh
fi

exec python3 tests/vm/run_vm_tests.py --efused "$build_dir/bin/efused" "$@"
