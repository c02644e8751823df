#!/usr/bin/env bash
# Long stress runs, kept out of the default suite so .ci/run stays fast: the data-integrity
# and concurrency tests again and again, each with fresh random seeds and EFUSE_SOAK_SCALE
# times its usual work, alternating the FUSE transports, until the time is up. Stops at the
# first failure and prints the test, the transport, the seed and the log.
#   scripts/soak.sh                                  30 minutes, scale 4, both transports
#   scripts/soak.sh --minutes 240 --scale 10 --transport uring
# Needs root (it mounts FUSE file systems); installs what is missing and builds first.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
minutes=30 scale=4 transports="uring classic"
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes|--scale|--transport)
      [ $# -ge 2 ] || { echo "soak: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --minutes) minutes=$2 ;;
        --scale) scale=$2 ;;
        --transport)
          case "$2" in
            both) transports="uring classic" ;;
            uring | classic) transports=$2 ;;
            *) echo "soak: --transport takes uring, classic or both, not '$2'" >&2; exit 2 ;;
          esac ;;
      esac
      shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "soak: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for v in "minutes:$minutes" "scale:$scale"; do
  if ! [[ ${v#*:} =~ ^[1-9][0-9]*$ ]]; then
    echo "soak: --${v%%:*} must be a positive integer, not '${v#*:}'" >&2
    exit 2
  fi
done
[ "$(id -u)" = 0 ] || { echo "soak: run as root (it mounts FUSE file systems)" >&2; exit 2; }

logs=$(mktemp -d /tmp/efuse-soak.XXXXXX)
echo "soak: building (log in $logs/build.log)"
bash scripts/build.sh > "$logs/build.log" 2>&1 || { tail -30 "$logs/build.log"; exit 1; }

# The tests whose failures would mean lost or wrong data, stale caches or a crash.
tests=(test_fsx test_fio_verify test_stress_ng test_concurrent_dirops test_kill9
       test_invalidation test_posix_ops test_tar)
end=$((SECONDS + minutes * 60))
runs=0 round=0
echo "soak: $minutes min, scale $scale, transports: $transports; logs in $logs"
while [ $SECONDS -lt $end ]; do
  round=$((round + 1))
  for t in $transports; do
    for test in "${tests[@]}"; do
      [ $SECONDS -lt $end ] || break 3
      log="$logs/round$round-$t-$test.log"
      start=$SECONDS
      rc=0
      EFUSED="$PWD/build/bin/efused" EFUSE_FSX="$PWD/build/bin/efuse_fsx" \
        EFUSED_ARGS="--transport $t" EFUSE_SOAK_SCALE=$scale PYTHONDONTWRITEBYTECODE=1 \
        python3 "tests/integration/$test.py" > "$log" 2>&1 || rc=$?
      if [ $rc = 77 ]; then
        echo "soak: round $round $t $test: skipped ($(grep -m1 SKIP "$log" || true))"
        continue
      fi
      if [ $rc != 0 ]; then
        echo "soak: FAILED in round $round: $test on the $t transport (exit $rc), log $log"
        grep -h "reproduce with" "$log" | sed 's/^/  /' || true
        tail -40 "$log"
        exit 1
      fi
      runs=$((runs + 1))
      echo "soak: round $round $t $test: ok ($((SECONDS - start)) s)"
      rm -f "$log"
    done
  done
done
echo "soak: $runs runs passed in $((SECONDS / 60)) min; nothing failed (logs of failures stay in $logs)"
