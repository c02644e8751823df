"""Paths, constants, the log and the harness's exceptions: what every other module of the
bench uses."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent  # bench/
REPO = BENCH.parent
WORK = BENCH / "work"
RUN = WORK / "run"
# The ext4 RUN is mounted from for one run (mounts.make_run_fs): sparse, on WORK's disk.
RUN_IMAGE = WORK / "run.img"
BIN = WORK / "bin"
LOCK = WORK / ".lock"
DAEMONS = WORK / "daemons.json"
EXAMPLES = Path("/usr/share/doc/libfuse3-dev/examples")
LINUX_TXZ = Path("/usr/src/linux-source-6.1.tar.xz")
LINUX_TAR = WORK / "linux-source-6.1.tar"
LINUX_TAR_SUBSET = WORK / "linux-source-6.1-subset.tar"
# The subset tar holds only these top-level directories of the kernel tree (~11k entries):
# it stays below the 20,000 open files a stock passthrough_ll may hold here (see README).
SUBSET_TAR_DIRS = ("fs", "include", "kernel", "net")
SIDES = ("native", "libfuse", "efused", "efused-nobpf", "efused-cache", "efused-passthrough",
         "efused-nobalance", "efuse-run", "efused-base", "libfuse-xattr",
         "tmpfs", "memory")
# Sides that run only when asked for by name (--sides): efused-base needs --efused-base;
# libfuse-xattr (passthrough_ll -o xattr, the tar rows only) is libfuse serving extended
# attributes as efused does: like for like on the tar rows, where the kernel asks for
# security.capability twice per file of a server that serves xattrs (bench/README.md).
OPT_IN_SIDES = ("efused-base", "libfuse-xattr",
         "tmpfs", "memory")
TAR_GROUPS = ("tar-subset", "tar-full")
# Row groups of the adaptive I/O path (io_path: auto against each fixed path, see
# bench/README.md): small hot files re-read (the page cache should win), one pass over
# large cold files (passthrough should win), both at once. Run by native, efused (auto),
# efused-cache and efused-passthrough.
IO_PATH_GROUPS = ("io-hot", "io-cold", "io-mix")
IO_PATH_SIDES = ("efused-cache", "efused-passthrough", "efused")
BASE_GROUPS = ("tree", "cat", "fio-one", "fio-small", "fio-large", "tar-subset", "tar-full")
# Queue balancing (docs/adaptive-io.md): one process fsyncs in a loop while another stats,
# both on CPU 0 (one io_uring queue); p99 stat latency with balancing on (efused) and off
# (efused-nobalance: EFUSE_QUEUE_BALANCING=0).
SKEW_GROUPS = ("queue-skew",)
GROUPS = BASE_GROUPS + IO_PATH_GROUPS + SKEW_GROUPS
# efuse-run: efused with --intercept, the row's commands run under efuse-run (the interception
# library serves their opens, reads and stats from the backing directory). Only these rows.
INTERCEPT_GROUPS = ("tree", "cat")
INTERCEPT_DIR = RUN / "intercept"   # EFUSE_INTERCEPT_DIR of that side's efused and clients
# The memory backend against tmpfs (issue 22: fio 4 KiB 70/30 on one file, warm, >= 0.8x
# tmpfs; find and stat of the tree <= 1.2x tmpfs): sides `memory` (efused --mount
# memory:MNT, no telemetry) and `tmpfs` (a tmpfs mounted for the row), in these rows only.
MEMORY_GROUPS = ("tree", "fio-one")
QUICK_GROUPS = ("tree", "cat", "fio-one", "fio-small", "fio-large", "tar-subset")
FIO_GROUPS = ("fio-one", "fio-small", "fio-large")
# Row groups efused-nobpf measures: every one. In these it measures the efused side's own
# mount and files (back to back, same data); the tar rows extract into a fresh mount per
# repetition, which the two cannot share, so there it starts a fresh efused of its own for
# every repetition, like every other side.
COST_GROUPS = BASE_GROUPS
SHARED_COST_GROUPS = FIO_GROUPS + ("tree", "cat")
# Row groups with an extra counted run per FUSE side (COUNTED_SIDES) and variant, with the
# telemetry efused attached and scraped: the upcalls / context switches per operation table
# (per fio I/O, per file catted, per archive entry extracted).
COUNTED_GROUPS = ("fio-one", "cat", "tar-subset")
COUNTED_SIDES = ("libfuse", "efused")
ENV = dict(os.environ, LC_ALL="C")
# Every measured efused runs with its own telemetry off: the eBPF programs are host-wide and
# a measured efused lives through every side's timed runs, so telemetry is attached instead
# by a separate telemetry-only efused exactly during the timed runs that must carry it (see
# Telemetry and bench/README.md, "eBPF telemetry").
EFUSED_ENV = dict(ENV, EFUSE_BPF="0")
TELEMETRY_ENV = {k: v for k, v in ENV.items() if k != "EFUSE_BPF"}
# Name of one of the programs every efused telemetry copy loads (bpf/efuse_telemetry.bpf.c).
TELEMETRY_PROG = "efuse_request_send"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

LOGF = None


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, file=sys.stderr, flush=True)
    if LOGF:
        LOGF.write(line + "\n")
        LOGF.flush()


class BenchError(Exception):
    """A measurement or a side failed; the harness records it and goes on."""


class Interrupted(BaseException):
    """SIGTERM / SIGHUP: treated like Ctrl-C."""


def _on_signal(signum, _frame):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signal.Signals(signum).name)


def tail(path: Path, n: int = 600, start: int = 0) -> str:
    try:
        data = path.read_bytes()[start:][-n:].decode(errors="replace")
    except OSError:
        return ""
    return data.strip()

