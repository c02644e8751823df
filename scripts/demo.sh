#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, and run efused in the foreground
# on its embedded demo config: a passthrough mount of /tmp/efuse-demo/source at
# /tmp/efuse-demo/mnt, with /metrics on 127.0.0.1:19567. efused prints the mountpoint, the
# metrics URL and how to stop it; Ctrl-C (or SIGTERM) unmounts and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec build/bin/efused --demo --bus none
