#!/usr/bin/env bash
# Builds efuse.ko: the kernel's own fs/fuse (from Debian's linux-source package of the
# same version as the target kernel) with the patches in kmod/patches/series applied,
# against that kernel's headers. See kmod/README.md.
#
#   kmod/build.sh                          newest Debian 12 6.12 kernel apt knows
#   kmod/build.sh --release 6.12.118+deb12-amd64
#   kmod/build.sh --out DIR                build in DIR (default kmod/build); prints the
#                                          path of efuse.ko on its last line
#   kmod/build.sh --kernel-dir DIR --source PATH
#                                          installed headers (DKMS: /lib/modules/VER/build)
#                                          and the kernel's source: a linux-source tarball
#                                          or a directory holding fs/fuse; nothing is
#                                          downloaded
#   kmod/build.sh --print-inputs           fetch and unpack only; print the headers
#                                          directory and the fs/fuse source directory
#
# Without --kernel-dir the Debian packages linux-headers-ABI-{amd64,common},
# linux-kbuild-ABI and linux-source-X.Y are fetched with apt-get download into
# EFUSE_VM_CACHE (default /var/cache/efuse-vm) and unpacked there with dpkg-deb -x;
# nothing is installed on the host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

release="" out="$here/build" kdir="" source="" print_inputs=0
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --release) release=${2:?--release needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --kernel-dir) kdir=${2:?--kernel-dir needs a value}; shift 2 ;;
    --source) source=${2:?--source needs a value}; shift 2 ;;
    --print-inputs) print_inputs=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "kmod/build.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [[ -n $kdir && -z $source ]] || [[ -z $kdir && -n $source ]]; then
  echo "kmod/build.sh: --kernel-dir and --source go together" >&2
  exit 2
fi
if [[ -n $kdir && $print_inputs == 1 ]]; then
  echo "kmod/build.sh: --print-inputs is for the downloading build" >&2
  exit 2
fi

out=$(realpath -m "$out")                   # kbuild's M= must be absolute
cache=${EFUSE_VM_CACHE:-/var/cache/efuse-vm}
log() { echo "kmod: $*" >&2; }

# Version of a package as apt would download it now.
candidate() { apt-cache policy "$1" | awk '/Candidate:/ { print $2 }'; }

# Path of PKG's .deb in the cache, downloaded if missing.
fetch() {
  local pkg=$1 deb
  mkdir -p "$cache/debs"
  deb=$(ls "$cache/debs/${pkg}_"*.deb 2>/dev/null | tail -n1 || true)
  if [[ -z $deb ]]; then
    log "apt-get download $pkg"
    (cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
    deb=$(ls "$cache/debs/${pkg}_"*.deb | tail -n1)
  fi
  echo "$deb"
}

if [[ -z $kdir ]]; then
  if [[ -z $release ]]; then
    release=$(apt-cache pkgnames linux-headers-6.12. |
      grep -E '^linux-headers-6\.12\.[0-9]+\+deb12-amd64$' | sed 's/^linux-headers-//' |
      sort -V | tail -n1)
    [[ -n $release ]] || { log "no linux-headers-6.12.*+deb12-amd64 in apt's lists (apt-get update?)"; exit 1; }
  fi
  abi=${release%-amd64}                      # 6.12.118+deb12, 6.1.0-57
  series=$(echo "$abi" | cut -d. -f1-2)      # 6.12
  mkdir -p "$cache"
  exec 9>"$cache/lock"
  flock 9                                    # tests/vm may be unpacking into the cache too
  hdr_deb=$(fetch "linux-headers-$release")
  common_deb=$(fetch "linux-headers-$abi-common")
  # kbuild is per ABI from 6.12 on (linux-kbuild-6.12.118+deb12), per series before
  # (linux-kbuild-6.1).
  kbuild=linux-kbuild-$abi
  apt-cache show "$kbuild" >/dev/null 2>&1 || kbuild=linux-kbuild-$series
  kbuild_deb=$(fetch "$kbuild")
  src_deb=$(fetch "linux-source-$series")
  version=$(dpkg-deb -f "$hdr_deb" Version)
  src_version=$(dpkg-deb -f "$src_deb" Version)
  if [[ $src_version != "$version" ]]; then
    log "linux-source-$series is $src_version but linux-headers-$release is $version:"
    log "fs/fuse must come from the same kernel; remove $src_deb to fetch $(candidate "linux-source-$series")"
    exit 1
  fi

  root="$cache/headers/$release"
  if [[ ! -e $root/.ready ]]; then
    log "unpacking headers of $release (once; cached in $root)"
    rm -rf "$root"
    mkdir -p "$root"
    for deb in "$hdr_deb" "$common_deb" "$kbuild_deb"; do dpkg-deb -x "$deb" "$root"; done
    # The headers' Makefile includes the common headers by absolute path
    # (/usr/src/linux-headers-ABI-common/Makefile); point it at the unpacked copy instead of
    # installing anything into the host's /usr/src. The other links are relative.
    sed -i "s|^include /usr/src/|include $root/usr/src/|" \
      "$root/usr/src/linux-headers-$release/Makefile"
    touch "$root/.ready"
  fi
  kdir="$root/usr/src/linux-headers-$release"
  where="linux-source-$series $version"

  fuse_src="$cache/fuse-src/$version"
  if [[ ! -e $fuse_src/.ready ]]; then
    log "extracting fs/fuse from linux-source-$series $version (once; cached in $fuse_src)"
    rm -rf "$fuse_src"
    mkdir -p "$fuse_src"
    dpkg-deb --fsys-tarfile "$src_deb" |
      tar -xO "./usr/src/linux-source-$series.tar.xz" |
      tar -xJ -C "$fuse_src" --strip-components=1 --wildcards "linux-source-$series/fs/fuse/*"
    touch "$fuse_src/.ready"
  fi
  flock -u 9
  if ((print_inputs)); then
    printf '%s\t%s\n' "$kdir" "$fuse_src"
    exit 0
  fi
elif [[ -d $source ]]; then
  fuse_src=$source
  where=$source
else
  fuse_src="$out/pristine"
  where=$source
  rm -rf "$fuse_src"
  mkdir -p "$fuse_src"
  tar -xJf "$source" -C "$fuse_src" --strip-components=1 --wildcards '*/fs/fuse/*'
fi

rm -rf "$out/fs"
mkdir -p "$out/fs"
cp -a "$fuse_src/fs/fuse" "$out/fs/fuse"
while read -r p; do
  [[ -z $p || $p == \#* ]] && continue
  log "applying $p"
  # A kernel the series was not written for is refused here, before anything is built.
  if ! patch -d "$out" -p1 --forward --batch --dry-run < "$here/patches/$p" >"$out/patch.log" 2>&1; then
    sed 's/^/  /' "$out/patch.log" >&2
    log "$p does not apply to fs/fuse of $where: the series is written for Debian's 6.12;"
    log "refusing to build for this kernel (kmod/README.md, Rebasing, says how to carry it over)"
    exit 1
  fi
  patch -d "$out" -p1 --forward --batch --quiet < "$here/patches/$p"
done < "$here/patches/series"

# efuse_handler.h is one header for the module, the BPF handlers and user space: the
# series must leave fs/fuse's copy byte for byte equal to bpf/handlers/'.
shared="$here/../bpf/handlers/efuse_handler.h"
if [[ -e $shared ]] && ! cmp -s "$shared" "$out/fs/fuse/efuse_handler.h"; then
  diff -u "$shared" "$out/fs/fuse/efuse_handler.h" >&2 || true
  log "fs/fuse/efuse_handler.h after the series differs from bpf/handlers/efuse_handler.h"
  exit 1
fi

log "building against $kdir"
make -C "$kdir" M="$out/fs/fuse" -j"$(nproc)" modules >"$out/build.log" 2>&1 ||
  { tail -30 "$out/build.log" >&2; log "build failed (log: $out/build.log)"; exit 1; }
if grep -E 'warning:' "$out/build.log" >&2; then
  log "the build warned (log: $out/build.log)"
  exit 1
fi
echo "$out/fs/fuse/efuse.ko"
