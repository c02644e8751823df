#!/usr/bin/env bash
# Builds the efused Debian package (debhelper 13) from a copy of the tree and checks it
# with lintian. Installs what is missing (debhelper, devscripts, lintian, build deps).
#   scripts/build-deb.sh               the committed tree (git HEAD); packaging/deb/ is
#                                      always taken from the working tree
#   scripts/build-deb.sh --worktree    the working tree as it is (tracked files only)
#   OUT=DIR scripts/build-deb.sh       where the .deb goes (default build/deb)
# Prints the lintian report; exits non-zero when the build fails or lintian reports an error or a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${OUT:-$repo/build/deb}

if [[ $(id -u) -ne 0 ]]; then
  echo "build-deb: needs root to install build dependencies (or have them installed)" >&2
fi
# Another apt or dpkg (unattended-upgrades, a second build) holds the dpkg and lists locks:
# wait for them instead of failing. DPkg::Lock::Timeout makes apt-get wait for the dpkg
# lock itself (apt >= 1.9.11); `apt-get update` gives up at once on the lists lock, so
# that is retried while its message says the lock is held (up to APT_LOCK_WAIT seconds).
apt_lock_wait=${APT_LOCK_WAIT:-900}
apt_get() {
  local waited=0 log rc
  log=$(mktemp)
  while :; do
    rc=0
    apt-get -o DPkg::Lock::Timeout="$apt_lock_wait" "$@" >"$log" 2>&1 || rc=$?
    if ((rc == 0)); then
      rm -f "$log"
      return 0
    fi
    if ! grep -q 'Could not get lock\|Unable to acquire the dpkg\|Unable to lock' "$log" \
        || ((waited >= apt_lock_wait)); then
      cat "$log" >&2
      rm -f "$log"
      return "$rc"
    fi
    ((waited == 0)) && echo "build-deb: waiting for the apt lock (another apt or dpkg is running)" >&2
    sleep 5
    waited=$((waited + 5))
  done
}

need=(debhelper devscripts lintian dpkg-dev equivs help2man)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "build-deb: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi

work=$(mktemp -d /tmp/efuse-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src=$work/efuse-$(sed -n 's/^efuse (\([^)]*\)).*/\1/p;q' packaging/deb/debian/changelog)
mkdir -p "$src"
if [[ ${1:-} == --worktree ]]; then
  git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$src"
else
  git archive HEAD | tar -xf - -C "$src"
fi
# The packaging itself always comes from the working tree (so it can be worked on).
rm -rf "$src/packaging/deb" && mkdir -p "$src/packaging" && cp -r packaging/deb "$src/packaging/deb"
cp -r packaging/deb/debian "$src/debian"

# Build dependencies from debian/control (mk-build-deps installs a metapackage for them).
if ! (cd "$src" && dpkg-checkbuilddeps >/dev/null 2>&1); then
  echo "build-deb: installing build dependencies" >&2
  (cd "$work" && DEBIAN_FRONTEND=noninteractive mk-build-deps --install --remove \
     --tool "apt-get -o DPkg::Lock::Timeout=$apt_lock_wait -y -qq --no-install-recommends" \
     "$src/debian/control" >/dev/null)
fi

(cd "$src" && dpkg-buildpackage -us -uc -b -j"$(nproc)") > "$work/build.log" 2>&1 || {
  tail -60 "$work/build.log"
  echo "build-deb: dpkg-buildpackage failed (log above)" >&2
  exit 1
}
mkdir -p "$out"
changes=$(ls "$work"/*.changes)
rm -f "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
cp "$work"/*.deb "$work"/*.buildinfo "$changes" "$out"/
echo "build-deb: built:"
ls -l "$out"/*.deb

echo "build-deb: lintian:"
lintian_rc=0
# As root lintian warns that it should not run as root; that line is not about the package.
lintian --info --display-info --fail-on error,warning "$out/$(basename "$changes")" \
  > "$work/lintian.txt" 2>&1 || lintian_rc=$?
grep -v '^running with root privileges is not recommended' "$work/lintian.txt" || true
if ((lintian_rc)); then
  echo "build-deb: lintian reported errors or warnings" >&2
  exit 1
fi
echo "build-deb: lintian: no errors, no warnings"
