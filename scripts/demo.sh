#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, and run efused in the foreground
# on a demo passthrough mount under /tmp. Ctrl-C (or SIGTERM) unmounts and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
demo=${EFUSE_DEMO_DIR:-/tmp/efuse-demo}
mkdir -p "$demo/source" "$demo/mnt"
[[ -e "$demo/source/hello.txt" ]] || echo "hello from efuse" > "$demo/source/hello.txt"
cat <<MSG
efuse demo
  source directory : $demo/source
  mountpoint       : $demo/mnt      (try: ls -l $demo/mnt; cat $demo/mnt/hello.txt)
  stop             : Ctrl-C here, or kill -TERM <pid of efused>
MSG
exec build/bin/efused --mount "$demo/source:$demo/mnt"
