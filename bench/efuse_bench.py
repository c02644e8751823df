#!/usr/bin/env python3
"""efuse benchmark harness: native ext4 vs libfuse 3.14 passthrough_ll vs efused.

Entry point: bench/run (see bench/README.md). Python 3 standard library only.

Every row is measured on every side in one run, sides taking turns within each repetition:
repetitions 2k and 2k+1 run the side order rotated by k, forwards then backwards (native,
libfuse, efused, efused-nobpf; efused-nobpf, efused, libfuse, native; libfuse, efused,
efused-nobpf, native; ...; efused-nobpf in fio, tree and cat rows only), so that every pair of sides runs
in both orders and no side always runs first; reported as the median of the repetitions. Each FUSE side serves a fresh ext4 directory
under bench/work/run and the data files of a row live inside its mount. efused's eBPF
telemetry is attached only during efused's timed runs and the counted runs of fio-one, cat
and tar-subset, which give the upcalls / context switches per operation table; efused ÷
efused-nobpf is its cost.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import gzip
import hashlib
import json
import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
import prom_text  # noqa: E402  (the /metrics parser the integration tests use too)
WORK = BENCH / "work"
RUN = WORK / "run"
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
SIDES = ("native", "libfuse", "efused", "efused-nobpf")
GROUPS = ("tree", "cat", "fio-one", "fio-small", "fio-large", "tar-subset", "tar-full")
QUICK_GROUPS = ("tree", "cat", "fio-one", "fio-small", "fio-large", "tar-subset")
FIO_GROUPS = ("fio-one", "fio-small", "fio-large")
# Row groups efused-nobpf measures on the efused side's mount (the tar rows extract into a
# fresh mount per repetition, which the two cannot share).
COST_GROUPS = FIO_GROUPS + ("tree", "cat")
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


# --------------------------------------------------------------------------- processes

class Registry:
    """Everything the harness started, so cleanup can stop it by PID."""

    def __init__(self) -> None:
        self.daemons: dict[int, "Daemon"] = {}
        self.cmds: set[subprocess.Popen] = set()

    def save(self) -> None:
        data = {str(pid): {"cmdline": d.argv, "mnt": str(d.mnt) if d.mnt else None}
                for pid, d in self.daemons.items()}
        data.update({str(p.pid): {"cmdline": p.args, "group": True} for p in self.cmds})
        tmp = DAEMONS.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(DAEMONS)

    def kill_cmds(self) -> None:
        for p in list(self.cmds):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                log(f"warning: command pid {p.pid} did not die")
        self.cmds.clear()


REG = Registry()


def run(argv, *, timeout: float | None = None, stdout=subprocess.DEVNULL, check: bool = True,
        cwd: Path | None = None, what: str | None = None) -> tuple[float, bytes, bytes]:
    """Runs argv (list, or str for bash -c) in its own process group; returns
    (wall seconds, stdout, stderr). The process group is killed on timeout or interrupt."""
    if isinstance(argv, str):
        argv = ["bash", "-c", argv]
    argv = [str(a) for a in argv]
    what = what or shlex.join(argv)[:200]
    capture = stdout is subprocess.PIPE
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                             cwd=str(cwd or WORK), env=ENV, start_new_session=True)
    except OSError as e:
        raise BenchError(f"cannot run {what}: {e}")
    REG.cmds.add(p)
    REG.save()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise BenchError(f"timed out after {timeout:.0f}s: {what}")
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    finally:
        REG.cmds.discard(p)
    dt = time.perf_counter() - t0
    REG.save()
    if check and p.returncode != 0:
        msg = (err or b"").decode(errors="replace").strip() or \
            (out or b"").decode(errors="replace").strip()
        if len(msg) > 600:
            msg = msg[:250] + " … " + msg[-300:]
        raise BenchError(f"exit {p.returncode}: {what}: {msg}")
    return dt, (out if capture else b""), (err or b"")


def sync() -> None:
    run(["sync"], timeout=600)


def drop_caches() -> None:
    sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# --------------------------------------------------------------------------- mounts

@dataclass
class Mount:
    mountpoint: str
    fstype: str
    dev: str


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts() -> list[Mount]:
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            try:
                sep = parts.index("-", 6)
            except ValueError:
                continue
            res.append(Mount(_unescape(parts[4]), parts[sep + 1], parts[2]))
    return res


def mount_at(path: Path) -> Mount | None:
    found = None
    for m in mounts():
        if m.mountpoint == str(path):
            found = m  # the last one is the top of the stack
    return found


def mounts_under(path: Path) -> list[Mount]:
    p = str(path).rstrip("/") + "/"
    return [m for m in mounts() if m.mountpoint.startswith(p) or m.mountpoint == str(path)]


def abort_connection(m: Mount) -> None:
    """Aborts a FUSE connection so processes blocked on a hung daemon get ENOTCONN."""
    conns = Path("/sys/fs/fuse/connections")
    if not any(x.fstype == "fusectl" for x in mounts()):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(conns)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    major, minor = m.dev.split(":")
    abort = conns / minor / "abort"
    try:
        abort.write_text("1")
        log(f"aborted FUSE connection {minor} ({m.mountpoint})")
    except OSError as e:
        log(f"warning: cannot abort FUSE connection {minor}: {e}")


def force_unmount(path: Path) -> None:
    for _ in range(8):
        m = mount_at(path)
        if not m:
            return
        if m.fstype.startswith("fuse"):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
            if mount_at(path):
                abort_connection(m)
        subprocess.run(["umount", "-l", str(path)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
    if mount_at(path):
        log(f"warning: could not unmount {path}")


def refuse_if_mounted_below(path: Path, doing: str) -> None:
    below = mounts_under(path)
    if below:
        raise BenchError(f"refusing to {doing} {path}: mounted below: {[m.mountpoint for m in below]}")


def safe_rmtree(path: Path) -> None:
    """rm -rf that never descends into a mount (refuses if anything is mounted below)."""
    if not path.exists():
        return
    refuse_if_mounted_below(path, "delete")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=3600)


_retired = [0]


def build_c(out: Path, src: Path, inputs: list[Path], flags: list[str] = (), what: str = "") -> None:
    """Compiles `src` with gcc -O2 -Wall (then `flags`) into `out`, unless `out` is newer than
    every file of `inputs` (the source and what it includes)."""
    if out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        return
    log(f"building {out.name} {what}".rstrip())
    r = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src), *flags],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"building {out.name} failed: {r.stderr[-500:]}")


def retire(path: Path) -> None:
    """Moves a side's finished data out of the way instead of deleting it; RUN, with
    everything retired, goes at the end of the run. On an ext4 without a journal (this
    project's bench machines) every new inode is checked against the inodes deleted in the
    last 60 to 300 seconds (fs/ext4/ialloc.c recently_deleted()), so a tar extraction right
    after deleting the previous one took 2 to 9 times as long as one on a quiet file system,
    and the penalty fell on whichever side came next."""
    if not path.exists():
        return
    refuse_if_mounted_below(path, "move")
    dest = RUN / "retired"
    dest.mkdir(parents=True, exist_ok=True)
    _retired[0] += 1
    path.rename(dest / f"{_retired[0]}-{path.parent.name}-{path.name}")


# --------------------------------------------------------------------------- sides

class Daemon:
    """A server process started by PID. With `mnt`, start() waits until it is mounted there;
    with `ready`, until it printed that line (efused's contract: "efused: ready")."""

    def __init__(self, side: str, argv: list[str], mnt: Path | None, fstype: str, logpath: Path,
                 env: dict, ready: bytes | None = None):
        self.side, self.argv, self.mnt, self.fstype, self.logpath = side, argv, mnt, fstype, logpath
        self.env, self.ready = env, ready
        self.proc: subprocess.Popen | None = None
        self.logf = None
        self.log_start = 0
        self.notes: list[str] = []

    def start(self, timeout: float = 30) -> None:
        self.logpath.parent.mkdir(parents=True, exist_ok=True)
        self.logf = open(self.logpath, "ab")
        self.logf.write(f"\n==== {time.strftime('%F %T')} {shlex.join(self.argv)}\n".encode())
        self.logf.flush()
        self.log_start = self.logf.tell()
        if self.mnt and mount_at(self.mnt):
            raise BenchError(f"{self.mnt} is already a mount point")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                         stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        except OSError as e:
            raise BenchError(f"cannot start {self.side}: {e}")
        REG.daemons[self.proc.pid] = self
        REG.save()
        deadline = time.monotonic() + timeout
        while self.mnt:
            m = mount_at(self.mnt)
            if m and m.fstype.startswith("fuse"):
                break
            rc = self.proc.poll()
            if rc is not None:
                raise BenchError(f"{self.side} exited with status {rc} before mounting: "
                                 f"{tail(self.logpath, 400, self.log_start)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.side} did not mount {self.mnt} within {timeout:.0f}s: "
                                 f"{tail(self.logpath, 400, self.log_start)}")
            time.sleep(0.02)
        if self.mnt and self.fstype and m.fstype != self.fstype:
            self.notes.append(f"mounted with fstype {m.fstype}, expected {self.fstype}")
            log(f"warning: {self.side}: {self.notes[-1]}")
        while self.ready and self.ready not in self.output():
            rc = self.proc.poll()
            if rc is not None:
                raise BenchError(f"{self.side} exited with status {rc} before it was ready: "
                                 f"{tail(self.logpath, 400, self.log_start)}")
            if time.monotonic() > deadline:
                if not self.mnt:
                    raise BenchError(f"{self.side} did not print {self.ready.decode()!r} within "
                                     f"{timeout:.0f}s: {tail(self.logpath, 400, self.log_start)}")
                self.notes.append(f"mount is live but {self.ready.decode()!r} was not printed")
                log(f"warning: {self.side}: {self.notes[-1]}")
                break
            time.sleep(0.02)
        if self.mnt:
            run(["ls", "-a", self.mnt], timeout=20, what=f"ls {self.mnt} (mount sanity check)")

    def output(self) -> bytes:
        """What the daemon printed since this start."""
        try:
            return self.logpath.read_bytes()[self.log_start:]
        except OSError:
            return b""

    def check(self) -> None:
        if self.proc is None:
            raise BenchError(f"{self.side} not started")
        rc = self.proc.poll()
        if rc is not None:
            raise BenchError(f"{self.side} died (status {rc}): {tail(self.logpath, 400, self.log_start)}")
        if self.mnt and not mount_at(self.mnt):
            raise BenchError(f"{self.side} mount {self.mnt} disappeared")

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        try:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    self.notes.append("did not exit within 15s of SIGTERM")
                    log(f"warning: {self.side} pid {p.pid} did not exit within 15s of SIGTERM")
            if self.mnt and mount_at(self.mnt):
                if p.poll() is not None:
                    self.notes.append(f"exited (status {p.returncode}) but left {self.mnt} mounted")
                force_unmount(self.mnt)
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    log(f"warning: {self.side} pid {p.pid} survived SIGKILL")
            if self.mnt and mount_at(self.mnt):
                force_unmount(self.mnt)
        finally:
            REG.daemons.pop(p.pid, None)
            REG.save()
            if self.logf:
                self.logf.write(f"==== stopped, status {p.poll()}\n".encode())
                self.logf.close()
                self.logf = None
            self.proc = None


class Side:
    name = ""
    groups = GROUPS     # the row groups this side is measured in
    telemetry = False   # its timed runs carry efused's eBPF telemetry (see Telemetry)

    def __init__(self, bench: "Bench"):
        self.bench = bench
        self.unavailable: str | None = None  # set when the side cannot run at all

    def begin(self, group: str) -> Path:
        raise NotImplementedError

    def end(self) -> None:
        pass

    def check(self) -> None:
        pass

    def storage(self, group: str) -> Path:
        raise NotImplementedError


class NativeSide(Side):
    name = "native"

    def storage(self, group):
        return RUN / "native" / group

    def begin(self, group):
        d = self.storage(group)
        retire(d)
        d.mkdir(parents=True)
        return d


class FuseSide(Side):
    fstype = ""
    env = ENV
    ready: bytes | None = None

    def __init__(self, bench):
        super().__init__(bench)
        self.daemon: Daemon | None = None
        self.mnt = RUN / f"mnt-{self.name}"
        self.notes: list[str] = []

    def storage(self, group):
        return RUN / f"src-{self.name}" / group

    def argv(self, src: Path, mnt: Path) -> list[str]:
        raise NotImplementedError

    def begin(self, group):
        if self.unavailable:
            raise BenchError(self.unavailable)
        src = self.storage(group)
        retire(src)
        src.mkdir(parents=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.daemon = Daemon(self.name, self.argv(src, self.mnt), self.mnt, self.fstype,
                             self.bench.out / "logs" / f"{self.name}-{group}.log", self.env,
                             self.ready)
        try:
            self.daemon.start()
        except BaseException:
            self.end()
            raise
        return self.mnt

    def check(self):
        if not self.daemon:
            raise BenchError(f"{self.name} is not running")
        self.daemon.check()

    def end(self):
        if self.daemon:
            d = self.daemon
            self.daemon = None
            d.stop()
            for n in d.notes:
                if n not in self.notes:
                    self.notes.append(n)


class LibfuseSide(FuseSide):
    name = "libfuse"
    fstype = "fuse.passthrough_ll"

    def argv(self, src, mnt):
        # DEFAULT passthrough_ll options: only the source and foreground mode.
        return [str(BIN / "passthrough_ll"), "-f", "-o", f"source={src}", str(mnt)]


class EfusedSide(FuseSide):
    """efused as shipped: telemetry on. The daemon itself runs with EFUSE_BPF=0 and the
    telemetry efused attaches the same programs around each of this side's timed runs."""
    name = "efused"
    fstype = "fuse.efuse"
    env = EFUSED_ENV
    ready = b"efused: ready"
    telemetry = True

    def argv(self, src, mnt):
        return [str(self.bench.efused_bin), "--mount", f"{src}:{mnt}"] + \
            shlex.split(self.bench.args.efused_args)


class EfusedNoBpfSide(EfusedSide):
    """The efused side's own daemon, mount and files with no eBPF telemetry attached: the
    telemetry's cost is efused ÷ this, measured back to back on the same data, so that file
    placement and page cache state do not count as telemetry cost. Runs a daemon of its own
    only when the efused side is not part of the run."""
    name = "efused-nobpf"
    groups = COST_GROUPS
    telemetry = False

    def __init__(self, bench):
        super().__init__(bench)
        self.shared: EfusedSide | None = None  # the efused side whose mount this measures

    def begin(self, group):
        twin = next((s for s in self.bench.sides if s.name == EfusedSide.name), None)
        if twin is not None and twin.daemon is not None:
            self.shared = twin
            return twin.mnt
        self.shared = None
        return super().begin(group)

    def check(self):
        if self.shared is not None:
            self.shared.check()
        else:
            super().check()

    def end(self):
        if self.shared is not None:
            self.shared = None
        else:
            super().end()


SIDE_CLASSES = {c.name: c for c in (NativeSide, LibfuseSide, EfusedSide, EfusedNoBpfSide)}
assert tuple(SIDE_CLASSES) == SIDES


# --------------------------------------------------------------------------- eBPF telemetry

def counters_of(samples, mount: str) -> dict[str, float]:
    """The counters of the per-I/O table for the FUSE connection labelled `mount` (for a mount
    the telemetry efused does not serve itself: its mountpoint), flat: `upcalls:OPCODE`,
    `switches:SIDE KIND`, `latency_sum_s`, and the host-wide `dropped:REASON`."""
    c: dict[str, float] = {}

    def add(k, v):
        c[k] = c.get(k, 0.0) + v
    for name, lb, v in samples:
        if name == "efuse_bpf_events_dropped_total":
            add(f"dropped:{lb.get('reason')}", v)
        elif lb.get("mount") != mount:
            continue
        elif name == "efuse_kernel_requests_total":
            add(f"upcalls:{lb.get('opcode')}", v)
        elif name == "efuse_context_switches_total":
            add(f"switches:{lb.get('side')} {lb.get('kind')}", v)
        elif name == "efuse_kernel_request_duration_seconds_sum":
            add("latency_sum_s", v)
    return c


def counter_deltas(before: dict, after: dict, ios: int) -> dict:
    """What one counted run cost, from two counters_of() scrapes around it and fio's I/O count."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}

    def part(prefix):
        return {k[len(prefix):]: round(v) for k, v in sorted(d.items())
                if k.startswith(prefix) and round(v)}
    upcalls = part("upcalls:")
    n = sum(upcalls.values())
    return {"ios": ios, "upcalls": upcalls, "upcalls_total": n,
            "switches": {f"{sd} {kd}": round(d.get(f"switches:{sd} {kd}", 0.0))
                         for sd in ("daemon", "client") for kd in ("voluntary", "involuntary")},
            "upcall_latency_mean_us": d.get("latency_sum_s", 0.0) / n * 1e6 if n else None,
            "events_dropped": part("dropped:")}


def bpftool_json(*args: str):
    """`bpftool -j ARGS` parsed, or None when bpftool fails."""
    try:
        r = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def telemetry_copies() -> dict[int, set[int]] | None:
    """{program id: PIDs holding it (a program or link fd)} for every copy of efused's eBPF
    telemetry attached on the host (recognised by its TELEMETRY_PROG program with a link to
    a tracepoint); None when bpftool cannot list programs and links. A copy whose efused has
    exited can stay listed a moment without its link until the kernel frees it: it no longer
    runs, and is not counted."""
    progs, links = bpftool_json("prog", "show"), bpftool_json("link", "show")
    if not isinstance(progs, list) or not isinstance(links, list):
        return None
    linked = {ln.get("prog_id") for ln in links}
    copies: dict[int, set[int]] = {p["id"]: set() for p in progs
                                   if p.get("name") == TELEMETRY_PROG and p["id"] in linked}
    if not copies:
        return copies
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") not in ("anon_inode:bpf-prog",
                                                                "anon_inode:bpf_link"):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    mo = re.search(r"^prog_id:\s*(\d+)", f.read(), re.M)
            except OSError:
                continue
            if mo and int(mo.group(1)) in copies:
                copies[int(mo.group(1))].add(int(pid))
    return copies


def describe_pid(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} ({shlex.join(c.decode(errors='replace') for c in cmd)[:120]})"


class Telemetry:
    """A telemetry-only efused: no mounts, /metrics on a free loopback port. It loads the same
    eBPF programs every efused loads, and they observe every FUSE mount on the host; so the
    bench attaches them exactly during the timed runs that must carry them (the efused side's,
    and the counted runs of COUNTED_GROUPS) and reads the measured mount's counters from it."""

    def __init__(self, bench: "Bench"):
        self.bench = bench
        self.daemon: Daemon | None = None
        self.url = ""
        self.unavailable: str | None = None  # why the telemetry cannot run, once known
        self.notes: list[str] = []

    def argv(self, config: Path) -> list[str]:
        return [str(self.bench.efused_bin), "--config", str(config), "--bus", "none",
                "--metrics", "127.0.0.1:0"]

    @property
    def pid(self) -> int | None:
        return self.daemon.proc.pid if self.daemon and self.daemon.proc else None

    def start(self) -> bool:
        """Attaches the telemetry; False when it cannot run (self.unavailable says why, and
        later calls return False at once)."""
        if self.unavailable:
            return False
        config = RUN / "telemetry.yaml"
        config.write_text("# telemetry-only efused of bench/efuse_bench.py: no mounts\nmounts: []\n")
        self.daemon = Daemon("telemetry", self.argv(config), None, "",
                             self.bench.out / "logs" / "telemetry.log", TELEMETRY_ENV,
                             b"efused: ready")
        try:
            self.daemon.start()
            mo = re.search(rb"metrics: serving (http://\S+/metrics)", self.daemon.output())
            if not mo:
                raise BenchError("it printed no 'metrics: serving URL' line: "
                                 + tail(self.daemon.logpath, 400, self.daemon.log_start))
            self.url = mo.group(1).decode()
            up = next((v for n, _, v in self.scrape() if n == "efuse_bpf_up"), None)
            if up != 1:
                why = [ln for ln in self.daemon.output().decode(errors="replace").splitlines()
                       if "bpf:" in ln]
                raise BenchError(f"efuse_bpf_up is {'missing' if up is None else f'{up:g}'}: "
                                 + (" ".join(why) or "(no 'bpf:' line in its log)"))
        except BenchError as e:
            self.unavailable = f"telemetry efused: {' '.join(str(e).split())}"
            log(f"eBPF telemetry unavailable: {self.unavailable}")
            self.stop()
            return False
        return True

    def scrape(self) -> list[tuple[str, dict, float]]:
        try:
            with urllib.request.urlopen(self.url, timeout=30) as r:
                return prom_text.parse(r.read().decode())
        except (OSError, ValueError) as e:
            raise BenchError(f"scraping the telemetry efused at {self.url}: {e}")

    def stop(self) -> None:
        d, self.daemon = self.daemon, None
        if d is None:
            return
        if d.proc and d.proc.poll() is not None and not self.unavailable:
            self.notes.append(f"the telemetry efused exited (status {d.proc.returncode}) while "
                              "attached; see logs/telemetry.log")
        d.stop()
        self.notes += [n for n in d.notes if n not in self.notes]


# --------------------------------------------------------------------------- results

@dataclass
class Metric:
    key: str
    group: str
    row: str
    label: str
    unit: str
    better: str  # "higher" | "lower"
    reps: dict = field(default_factory=dict)     # side -> [values]
    extra: dict = field(default_factory=dict)    # side -> [dict per rep]
    errors: dict = field(default_factory=dict)   # side -> error text

    def median(self, side):
        v = self.reps.get(side)
        return statistics.median(v) if v else None


# --------------------------------------------------------------------------- the bench

@dataclass
class Ctx:
    side: Side
    data: Path
    failed: str | None = None


@dataclass
class Phase:
    """One measured step of a row group: R repetitions, each running every side once, in order.
    measure(ctx, rep) returns {metric key: value}, optionally "_extra": details of the run.
    A counted phase (counted = key in Bench.counts) runs once per COUNTED_SIDES side with the
    telemetry attached and records the measured mount's counter deltas instead of metrics."""
    metrics: list[Metric]
    measure: Callable[[Ctx, int], dict]
    before_each: Callable[[Ctx], None] | None = None
    side_prepare: Callable[[Ctx], None] | None = None
    counted: str | None = None


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.reps = args.reps or (1 if self.quick else 3)
        self.runtime = args.runtime or (5 if self.quick else 15)
        self.efused_bin = Path(args.efused) if args.efused else REPO / "build" / "bin" / "efused"
        self.out: Path = Path()
        self.metrics: list[Metric] = []
        self.by_key: dict[str, Metric] = {}
        self.started = datetime.datetime.now()
        self.finished = None
        self.status = "running"
        self.sides: list[Side] = []
        self.side_names = [s for s in SIDES if s in args.sides]
        rows = args.rows or (QUICK_GROUPS if self.quick else GROUPS)
        self.groups = [g for g in GROUPS if g in rows]
        self.efused_version = "n/a"
        self.efused_sha256 = "n/a"
        self.efused_src = self.efused_bin
        self.setup_notes: list[str] = []
        # What one blocking request and reply between two processes costs here (pingpong.c):
        # {"same_cpu_us", "cross_cpu_us", "unpinned_us"}, or {"error": why}.
        self.wait_floor: dict = {}
        self.tar_entries: dict[str, int] = {}
        self.telemetry = Telemetry(self)
        self.counts: dict[str, dict[str, dict]] = {}  # counted phase -> side -> run details
        self.counted_rows: dict[str, tuple[str, str]] = {}  # counted phase -> (row, per what)
        self.foreign: dict[str, dict] = {}            # side -> foreign telemetry tally
        # 1/5/15-min load average before the harness did any work: other work on the machine.
        self.loadavg = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
        self.cfg = {
            "fio_one": (1, (256 * MiB if self.quick else 1 * GiB), 4 * KiB),
            "fio_small": (50, 512 * KiB, 4 * KiB),
            "fio_large": (4, (64 * MiB if self.quick else 256 * MiB), 1 * MiB),
            "tree_dirs": 100, "tree_files": 100, "tree_walks": 10,
            "cat_count": 20000, "cat_batch": 200, "cat_size": 4 * KiB,
        }

    # ---- metrics bookkeeping
    def declare(self, key, group, row, label, unit, better) -> Metric:
        m = Metric(key, group, row, label, unit, better)
        self.metrics.append(m)
        self.by_key[key] = m
        return m

    def fail_side(self, metrics: list[Metric], side: str, err: str) -> None:
        for m in metrics:
            if len(m.reps.get(side, [])) < self.reps and side not in m.errors:
                m.errors[side] = err

    # ---- group framework
    def run_group(self, gid: str, metrics: list[Metric], prepare: Callable[[Ctx], None] | None,
                  phases: list[Phase]) -> None:
        """Starts every side of the group on a fresh directory, runs prepare per side, then each
        phase with reps x sides: repetitions 2k and 2k+1 run the order rotated by k, forwards
        then backwards (a counted phase: once per COUNTED_SIDES side)."""
        log(f"== group {gid}")
        sides = [s for s in self.sides if gid in s.groups]
        ctxs: dict[str, Ctx] = {}
        try:
            for side in sides:
                try:
                    data = side.begin(gid)
                    ctx = Ctx(side, data)
                    ctxs[side.name] = ctx
                    if prepare and getattr(side, "shared", None) is None:  # data laid out once
                        t0 = time.monotonic()
                        prepare(ctx)
                        side.check()
                        log(f"   {side.name}: prepared in {time.monotonic() - t0:.1f}s")
                except (BenchError, OSError) as e:
                    self.side_failed(ctxs, side, metrics, f"setup: {e}")
            for phase in phases:
                if phase.counted and self.telemetry.unavailable:
                    log(f"   {phase.counted}: not counted, eBPF telemetry unavailable")
                    continue
                psides = [s for s in sides if not phase.counted or s.name in COUNTED_SIDES]
                if phase.side_prepare:
                    for side in psides:
                        ctx = ctxs.get(side.name)
                        if not ctx or ctx.failed:
                            continue
                        try:
                            phase.side_prepare(ctx)
                            side.check()
                        except (BenchError, OSError) as e:
                            self.side_failed(ctxs, side, metrics, f"prepare: {e}")
                reps = 1 if phase.counted else self.reps
                for rep in range(reps):
                    turn = (rep // 2) % len(psides) if psides else 0
                    order = psides[turn:] + psides[:turn]
                    if rep % 2:  # every pair of sides runs in both orders
                        order.reverse()
                    for side in order:
                        ctx = ctxs.get(side.name)
                        if not ctx or ctx.failed:
                            continue
                        try:
                            vals = self.timed(ctx, phase, rep)
                            side.check()
                        except (BenchError, OSError) as e:
                            if phase.counted:
                                self.counts[phase.counted][side.name] = {"error": " ".join(str(e).split())}
                            self.side_failed(ctxs, side, metrics, str(e))
                            continue
                        extra = vals.pop("_extra")
                        if phase.counted:
                            self.counts[phase.counted][side.name] = extra
                            log(f"   {phase.counted} counted {side.name}: {describe_counts(extra)}")
                            continue
                        shown = []
                        for m in phase.metrics:
                            m.reps.setdefault(side.name, []).append(vals[m.key])
                            m.extra.setdefault(side.name, []).append(extra)
                            shown.append(f"{m.label}={fmt(vals[m.key], m.unit)}")
                        log(f"   {phase.metrics[0].row} rep {rep + 1}/{reps} {side.name}: "
                            + ", ".join(shown))
        finally:
            for side in sides:
                try:
                    side.end()
                except Exception as e:  # noqa: BLE001 - cleanup must go on
                    log(f"warning: stopping {side.name}: {e}")
                try:
                    retire(side.storage(gid))
                except Exception as e:  # noqa: BLE001
                    log(f"warning: moving data of {side.name} aside: {e}")
            self.write_results()

    def timed(self, ctx: Ctx, phase: Phase, rep: int) -> dict:
        """One timed run of one side: attaches the eBPF telemetry if the side or the phase wants
        it, runs before_each, records which copies of the telemetry are loaded (it must be
        exactly the bench's own, or none), then measure. Returns measure's values with "_extra"
        (always present) holding the run's details; for a counted phase "_extra" also holds
        the measured mount's counter deltas."""
        side = ctx.side
        attached = (side.telemetry or bool(phase.counted)) and self.telemetry.start()
        try:
            if phase.before_each:
                phase.before_each(ctx)
            foreign = self.foreign_telemetry(side.name)
            counting = bool(phase.counted) and attached
            before = counters_of(self.telemetry.scrape(), str(side.mnt)) if counting else None
            vals = phase.measure(ctx, rep)
            vals["_extra"] = dict(vals.get("_extra", {}), foreign_bpf_telemetry=foreign,
                                  bpf_telemetry=bool(attached))
            if counting:
                after = counters_of(self.telemetry.scrape(), str(side.mnt))
                c = counter_deltas(before, after, vals["_extra"]["ios"])
                if not c["upcalls_total"]:  # fio's OPEN alone is one: the label did not match
                    raise BenchError(f"the telemetry counted no upcalls for mount=\"{side.mnt}\" "
                                     "(efuse_kernel_requests_total); see logs/telemetry.log")
                vals["_extra"]["counters"] = c
            return vals
        finally:
            if attached:
                self.telemetry.stop()

    def foreign_telemetry(self, side: str) -> int | None:
        """Copies of efused's eBPF telemetry loaded now that the bench did not start (each
        observes every FUSE mount, so a timed run pays for it); None if bpftool cannot tell.
        Tallied per side for the notes."""
        copies = telemetry_copies()
        t = self.foreign.setdefault(side, {"runs": 0, "disturbed": 0, "unknown": 0, "holders": set()})
        t["runs"] += 1
        if copies is None:
            t["unknown"] += 1
            return None
        own = self.telemetry.pid
        others = [holders for holders in copies.values() if own not in holders]
        if others:
            t["disturbed"] += 1
            for holders in others:
                t["holders"] |= ({describe_pid(h) for h in holders}
                                 or {"a copy whose holder was not found (exiting, or pinned)"})
        return len(others)

    def side_failed(self, ctxs, side: Side, metrics, err: str) -> None:
        err = " ".join(err.split())
        if "Too many open files" in err:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            err = (f"[hint: RLIMIT_NOFILE here is {soft}/{hard} and cannot be raised without "
                    "CAP_SYS_RESOURCE; a daemon that keeps one fd per inode the kernel knows "
                    "runs out; see bench/README.md] " + err)
        log(f"   FAILED {side.name}: {err}")
        self.fail_side(metrics, side.name, err)
        ctx = ctxs.get(side.name)
        if ctx:
            ctx.failed = err
        try:
            side.end()
        except Exception as e:  # noqa: BLE001
            log(f"warning: stopping {side.name}: {e}")

    # ---- rows
    def group_tree(self):
        nd, nf, walks = self.cfg["tree_dirs"], self.cfg["tree_files"], self.cfg["tree_walks"]
        n = nd * nf + nd + 1
        row = f"tree {nd} dirs x {nf} files ({n:,} entries)"
        mk = lambda k, r, l: self.declare(f"tree.{k}", "tree", r, l, "s", "lower")  # noqa: E731
        # A warm walk takes milliseconds, about what one scheduling hiccup costs here: each
        # warm repetition times `walks` walks back to back and reports the time per walk.
        per = f"time per walk ({walks} walks)"
        fw = mk("find.warm", f"find, warm: {row}", per)
        sw = mk("stat.warm", f"find -printf (lstat each), warm: {row}", per)
        fc = mk("find.cold", f"find, cold: {row}", "time")
        sc = mk("stat.cold", f"find -printf (lstat each), cold: {row}", "time")
        metrics = [fw, sw, fc, sc]
        pad = len(str(max(nd, nf) - 1))
        fmt_ = "%i %s %m %n %T@ %p\n"

        def prepare(ctx):
            t = ctx.data / "tree"
            run(f"mkdir {shlex.quote(str(t))} && cd {shlex.quote(str(t))} && "
                f"for d in $(seq -f %0{pad}.0f 0 {nd - 1}); do mkdir d$d && "
                f"(cd d$d && touch $(seq -f f%0{pad}.0f 0 {nf - 1})) || exit 1; done",
                timeout=900, what="create tree")
            cnt = run(["find", t], stdout=subprocess.PIPE, timeout=600)[1].count(b"\n")
            if cnt != n:
                raise BenchError(f"tree has {cnt} entries, expected {n}")
            sync()

        def find(ctx, warm, stat):
            argv = ["find", ctx.data / "tree"] + (["-printf", fmt_] if stat else [])
            if not warm:
                return run(argv, timeout=900)[0]
            run(argv, timeout=900)
            loop = f'for i in $(seq {walks}); do "$@" || exit; done'
            return run(["bash", "-c", loop, "walk"] + argv, timeout=900,
                       what=f"{walks} x {shlex.join(map(str, argv))}")[0] / walks

        phases = [
            Phase([fw], lambda c, r: {fw.key: find(c, True, False)}),
            Phase([sw], lambda c, r: {sw.key: find(c, True, True)}),
            Phase([fc], lambda c, r: {fc.key: find(c, False, False)}, lambda c: drop_caches()),
            Phase([sc], lambda c, r: {sc.key: find(c, False, True)}, lambda c: drop_caches()),
        ]
        self.run_group("tree", metrics, prepare, phases)

    def group_cat(self):
        count, batch, size = self.cfg["cat_count"], self.cfg["cat_batch"], self.cfg["cat_size"]
        m = self.declare("cat.warm", "cat",
                         f"cat one {size // KiB} KiB file x {count:,} (xargs -n {batch} cat), warm",
                         "time", "s", "lower")
        lists = RUN / "lists"

        def prepare(ctx):
            f = ctx.data / "small.dat"
            run(["dd", "if=/dev/urandom", f"of={f}", f"bs={size}", "count=1", "status=none"],
                timeout=60)
            lists.mkdir(parents=True, exist_ok=True)
            (lists / f"cat-{ctx.side.name}.txt").write_text(f"{f}\n" * count)
            got = run(["cat", f], stdout=subprocess.PIPE, timeout=60)[1]
            if len(got) != size:
                raise BenchError(f"read back {len(got)} bytes, expected {size}")
            sync()

        def measure(ctx, rep):
            f = ctx.data / "small.dat"
            run(["cat", f], timeout=60)  # warm-up
            owner = getattr(ctx.side, "shared", None) or ctx.side  # whose data this is
            lst = lists / f"cat-{owner.name}.txt"
            return {m.key: run(["xargs", "-d", "\\n", "-n", str(batch), "-a", lst, "cat"],
                               timeout=1800)[0], "_extra": {"ios": count}}

        phases = [Phase([m], measure)]
        key = self.counted("cat", "warm", m.row, "files")
        if key:
            phases.append(Phase([], measure, counted=key))
        self.run_group("cat", [m], prepare, phases)

    def group_fio(self, gid, nrfiles, filesize, bs):
        def sz(n):
            return f"{n // GiB} GiB" if n % GiB == 0 else (
                f"{n // MiB} MiB" if n % MiB == 0 else f"{n // KiB} KiB")
        desc = f"fio randrw 70/30 {nrfiles} x {sz(filesize)} bs={sz(bs).replace(' ', '')}"
        ms = {}
        for var in ("warm", "cold"):
            for k, label, unit in (("iops", "IOPS r+w", "IOPS"), ("mbps", "MB/s r+w", "MB/s")):
                ms[(var, k)] = self.declare(f"{gid}.{var}.{k}", gid, f"{desc}, {var}", label,
                                            unit, "higher")
        metrics = list(ms.values())
        layout_bs = min(MiB, filesize)
        rawdir = self.out / "raw"

        def base(d):
            return ["fio", "--name=bench", f"--directory={d}", "--filename_format=data.$filenum",
                    f"--nrfiles={nrfiles}", f"--filesize={filesize}", f"--size={nrfiles * filesize}",
                    "--ioengine=psync", "--fallocate=none", "--invalidate=0"]

        def prepare(ctx):  # lay the files out (sequential write through the mount)
            run(base(ctx.data) + ["--rw=write", f"--bs={layout_bs}", "--numjobs=1"],
                timeout=3600, stdout=subprocess.PIPE, what=f"fio layout ({gid})")
            names = sorted(p.name for p in ctx.data.iterdir())
            want = sorted(f"data.{i}" for i in range(nrfiles))
            if names != want:
                raise BenchError(f"fio layout produced {names[:5]}..., expected {want[:5]}...")
            sync()

        def prefill(ctx):  # warm: read every file once through the mount
            run(base(ctx.data) + ["--rw=read", f"--bs={layout_bs}", "--numjobs=1"],
                timeout=3600, stdout=subprocess.PIPE, what=f"fio prefill ({gid})")

        def measure(var, run_name):
            def f(ctx, rep):
                rawdir.mkdir(parents=True, exist_ok=True)
                jpath = rawdir / f"fio-{gid}-{var}-{ctx.side.name}-{run_name(rep)}.json"
                run(base(ctx.data) + [
                    "--rw=randrw", "--rwmixread=70", f"--bs={bs}", "--numjobs=2",
                    "--group_reporting", "--time_based", f"--runtime={self.runtime}s",
                    "--output-format=json", f"--output={jpath}"],
                    timeout=self.runtime + 900, stdout=subprocess.PIPE, what=f"fio {gid} {var}")
                txt = jpath.read_text()
                try:
                    job = json.loads(txt[txt.index("{"):])["jobs"][0]
                except (ValueError, KeyError, IndexError) as e:
                    raise BenchError(f"cannot parse fio output {jpath}: {e}")
                if job.get("error"):
                    raise BenchError(f"fio job error {job['error']}")
                r, w = job["read"], job["write"]
                extra = {"ios": r["total_ios"] + w["total_ios"],
                         "read_iops": r["iops"], "write_iops": w["iops"],
                         "read_MBps": r["bw_bytes"] / 1e6, "write_MBps": w["bw_bytes"] / 1e6,
                         "read_clat_mean_us": r["clat_ns"]["mean"] / 1e3,
                         "write_clat_mean_us": w["clat_ns"]["mean"] / 1e3,
                         "raw": str(jpath.relative_to(self.out))}
                return {ms[(var, "iops")].key: r["iops"] + w["iops"],
                        ms[(var, "mbps")].key: (r["bw_bytes"] + w["bw_bytes"]) / 1e6,
                        "_extra": extra}
            return f

        phases = []
        for var, before_each, side_prepare in (("warm", lambda c: sync(), prefill),
                                               ("cold", lambda c: drop_caches(), None)):
            phases.append(Phase([ms[(var, "iops")], ms[(var, "mbps")]],
                                measure(var, lambda rep: f"r{rep + 1}"), before_each, side_prepare))
            # One more run per FUSE side, same state as the repetitions: counted.
            key = self.counted(gid, var, f"{desc}, {var}", "I/Os")
            if key:
                phases.append(Phase([], measure(var, lambda rep: "counted"), before_each,
                                    counted=key))
        self.run_group(gid, metrics, prepare, phases)

    def group_tar(self, gid: str, path: Path, name: str):
        n = self.tar_entries[str(path)]
        row = f"tar -xf {name} ({n:,} entries, {path.stat().st_size / 1e9:.2f} GB)"
        mt = self.declare(f"{gid}.extract", gid, row, "time excl. sync", "s", "lower")
        ms = self.declare(f"{gid}.extract_sync", gid, row, "time incl. sync", "s", "lower")

        def before(ctx):
            # A fresh mount (and fresh source directory) for every extraction: the kernel then
            # holds no inodes of earlier extractions, and every side starts from the same state.
            self.restart(ctx, gid)
            run(["cat", path], timeout=600)  # keep the archive in the page cache
            sync()

        def measure(ctx, rep):
            dest = ctx.data / "x"
            run(["mkdir", dest], timeout=60)
            t1 = run(["tar", "-xf", path, "-C", dest], timeout=7200)[0]
            t2 = run(["sync"], timeout=3600)[0]
            return {mt.key: t1, ms.key: t1 + t2, "_extra": {"ios": n}}

        phases = [Phase([mt, ms], measure, before)]
        key = self.counted(gid, "extract", row, "entries")
        if key:
            phases.append(Phase([], measure, before, counted=key))
        self.run_group(gid, [mt, ms], None, phases)

    def counted(self, gid: str, variant: str, row: str, per: str) -> str | None:
        """Registers the counted run of a row group (per = what its operations are: "I/Os",
        "files", "entries"); its Phase key, or None when the group is not counted in this run."""
        if gid not in COUNTED_GROUPS or not set(COUNTED_SIDES) & set(self.side_names):
            return None
        key = f"{gid}.{variant}"
        self.counts[key] = {}
        self.counted_rows[key] = (row, per)
        return key

    def restart(self, ctx: Ctx, gid: str) -> None:
        ctx.side.end()
        retire(ctx.side.storage(gid))
        ctx.data = ctx.side.begin(gid)

    # ---- setup
    def setup(self):
        if not self.args.skip_deps:
            log("installing missing dependencies (scripts/install-deps.sh --bench)")
            r = subprocess.run([str(REPO / "scripts" / "install-deps.sh"), "--bench"])
            if r.returncode != 0:
                raise SystemExit("install-deps.sh --bench failed")
        BIN.mkdir(parents=True, exist_ok=True)
        self.sides = [SIDE_CLASSES[name](self) for name in self.side_names]
        for side in self.sides:
            if side.name == "libfuse":
                try:
                    self.build_passthrough_ll()
                except BenchError as e:
                    side.unavailable = " ".join(str(e).split())
                    log(f"libfuse unavailable: {side.unavailable}")
        # efused serves the efused sides and, as the telemetry efused, observes the counted runs.
        telemetry_used = any(s.telemetry for s in self.sides) or (
            any(g in COUNTED_GROUPS for g in self.groups)
            and any(s in COUNTED_SIDES for s in self.side_names))
        efused_sides = [s for s in self.sides if isinstance(s, EfusedSide)]
        if efused_sides or telemetry_used:
            try:
                self.build_efused()
            except BenchError as e:
                err = " ".join(str(e).split())
                log(f"efused unavailable: {err}")
                for side in efused_sides:
                    side.unavailable = err
                self.telemetry.unavailable = f"efused unavailable: {err}"
        if telemetry_used and self.telemetry.start():
            log(f"eBPF telemetry available (telemetry efused: {shlex.join(self.telemetry.argv(RUN / 'telemetry.yaml'))})")
            self.telemetry.stop()
        if any(g.startswith("tar") for g in self.groups):
            self.prepare_tar()
        self.measure_wait_floor()

    def build_passthrough_ll(self):
        src_dir = BIN.parent / "passthrough_ll"
        src_dir.mkdir(parents=True, exist_ok=True)
        for fname in ("passthrough_ll.c", "passthrough_helpers.h"):
            plain, gz = EXAMPLES / fname, EXAMPLES / (fname + ".gz")
            if plain.exists():
                data = plain.read_bytes()
            elif gz.exists():
                data = gzip.decompress(gz.read_bytes())
            elif fname == "passthrough_ll.c":
                raise BenchError(f"{plain} not found (is libfuse3-dev installed?)")
            else:
                continue
            dst = src_dir / fname
            if not dst.exists() or dst.read_bytes() != data:
                dst.write_bytes(data)
        c = src_dir / "passthrough_ll.c"
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                               text=True, check=True).stdout.split()
        build_c(BIN / "passthrough_ll", c, sorted(src_dir.iterdir()), flags + ["-lpthread"],
                "from libfuse3-dev examples")

    def measure_wait_floor(self):
        """Builds bench/pingpong.c and measures the machine's request/reply floor with it
        (bench/README.md, "Wait floor"). A failure is noted, never fatal."""
        out, src = BIN / "pingpong", BENCH / "pingpong.c"
        try:
            build_c(out, src, [src])
            r = subprocess.run([str(out)], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise BenchError(f"pingpong failed: {(r.stderr or r.stdout)[-500:]}")
            self.wait_floor = json.loads(r.stdout)
            log("wait floor (blocking request/reply between two processes): "
                + ", ".join(f"{k} {v}" for k, v in self.wait_floor.items()))
        except (OSError, ValueError, subprocess.SubprocessError, BenchError) as e:
            self.wait_floor = {"error": " ".join(str(e).split())}
            log(f"wait floor not measured: {self.wait_floor['error']}")

    def floor_us(self) -> float | None:
        """The cheapest measured request/reply: what one waited-for upcall costs at least."""
        vals = [v for k, v in self.wait_floor.items() if k != "error" and v is not None]
        return min(vals) if vals else None

    def build_efused(self):
        if not self.efused_bin.exists():
            if self.args.efused:
                raise BenchError(f"{self.efused_bin} does not exist")
            build = REPO / "build"
            blog = self.out / "logs" / "build-efused.log"
            blog.parent.mkdir(parents=True, exist_ok=True)
            log(f"building efused (log: {blog})")
            with open(blog, "ab") as f:
                steps = [["cmake", "-S", str(REPO), "-B", str(build)],
                         ["cmake", "--build", str(build), "-j2", "--target", "efused"]]
                for st in steps:
                    f.write(f"$ {shlex.join(st)}\n".encode())
                    f.flush()
                    r = subprocess.run(st, stdout=f, stderr=subprocess.STDOUT)
                    if r.returncode != 0:
                        raise BenchError(f"building efused failed ({shlex.join(st)}): {tail(blog, 300)}")
            if not self.efused_bin.exists():
                raise BenchError(f"build succeeded but {self.efused_bin} is missing")
        # Run a private copy: others may rebuild build/bin/efused while the bench runs.
        data = self.efused_bin.read_bytes()
        self.efused_sha256 = hashlib.sha256(data).hexdigest()
        self.efused_src = self.efused_bin
        copy = BIN / "efused"
        tmp = BIN / "efused.tmp"
        tmp.write_bytes(data)
        tmp.chmod(0o755)
        tmp.replace(copy)
        self.efused_bin = copy
        try:
            r = subprocess.run([str(self.efused_bin), "--version"], capture_output=True, text=True,
                               timeout=5)
            v = (r.stdout + r.stderr).strip().splitlines()
            self.efused_version = v[0] if r.returncode == 0 and v else f"unknown (--version exit {r.returncode})"
        except (OSError, subprocess.TimeoutExpired) as e:
            self.efused_version = f"unknown ({e})"

    def prepare_tar(self):
        if not LINUX_TAR.exists():
            if not LINUX_TXZ.exists():
                raise SystemExit(f"{LINUX_TXZ} missing (apt-get install linux-source-6.1)")
            log(f"decompressing {LINUX_TXZ} once to {LINUX_TAR}")
            part = LINUX_TAR.with_suffix(".tar.partial")
            with open(part, "wb") as f:
                subprocess.run(["xz", "-T0", "-dc", str(LINUX_TXZ)], stdout=f, check=True)
            part.replace(LINUX_TAR)
        if not LINUX_TAR_SUBSET.exists():
            log(f"making {LINUX_TAR_SUBSET} ({', '.join(SUBSET_TAR_DIRS)})")
            part = LINUX_TAR_SUBSET.with_suffix(".tar.partial")
            with tarfile.open(LINUX_TAR, "r:") as src, \
                    tarfile.open(part, "w", format=tarfile.GNU_FORMAT) as dst:
                for ti in src:
                    parts = ti.name.split("/")
                    if len(parts) == 1 or parts[1] in SUBSET_TAR_DIRS:
                        dst.addfile(ti, src.extractfile(ti) if ti.isfile() else None)
            part.replace(LINUX_TAR_SUBSET)
        for path in (LINUX_TAR, LINUX_TAR_SUBSET):
            cache = path.with_suffix(".entries")
            if cache.exists() and cache.stat().st_mtime >= path.stat().st_mtime:
                self.tar_entries[str(path)] = int(cache.read_text())
            else:
                out = subprocess.run(["tar", "-tf", str(path)], capture_output=True, check=True).stdout
                self.tar_entries[str(path)] = out.count(b"\n")
                cache.write_text(str(self.tar_entries[str(path)]))

    # ---- main
    def run_all(self):
        for g in self.groups:
            if g == "tree":
                self.group_tree()
            elif g == "cat":
                self.group_cat()
            elif g == "fio-one":
                self.group_fio("fio-one", *self.cfg["fio_one"])
            elif g == "fio-small":
                self.group_fio("fio-small", *self.cfg["fio_small"])
            elif g == "fio-large":
                self.group_fio("fio-large", *self.cfg["fio_large"])
            elif g == "tar-subset":
                self.group_tar(g, LINUX_TAR_SUBSET,
                               f"linux-source-6.1 subset {'+'.join(SUBSET_TAR_DIRS)}")
            elif g == "tar-full":
                self.group_tar(g, LINUX_TAR, "linux-source-6.1")

    # ---- output
    def meta(self):
        return {
            "started": self.started.isoformat(timespec="seconds"),
            "finished": self.finished.isoformat(timespec="seconds") if self.finished else None,
            "status": self.status,
            "git": git_info(),
            "quick": self.quick, "reps": self.reps, "fio_runtime_s": self.runtime,
            "sides": self.side_names, "groups": self.groups,
            "efused_bin": str(self.efused_src), "efused_sha256": self.efused_sha256,
            "efused_args": self.args.efused_args,
            "efused_version": self.efused_version,
            "libfuse_cmd": shlex.join(LibfuseSide(self).argv(Path("SRC"), Path("MNT"))),
            "config": {k: v for k, v in self.cfg.items()},
            "tar_entries": self.tar_entries,
            "side_notes": {s.name: (([f"unavailable: {s.unavailable}"] if s.unavailable else [])
                                    + list(getattr(s, "notes", []))) for s in self.sides},
            "telemetry": {
                "cmd": shlex.join(self.telemetry.argv(Path("CONFIG"))),
                "measured_efused_env": "EFUSE_BPF=0",
                "attached_for_sides": [s.name for s in self.sides if s.telemetry],
                "counted_groups": [g for g in COUNTED_GROUPS if g in self.groups],
                "unavailable": self.telemetry.unavailable,
                "notes": self.telemetry.notes,
                "foreign_telemetry": {side: dict(t, holders=sorted(t["holders"]))
                                      for side, t in self.foreign.items()},
            },
            "setup_notes": self.setup_notes,
            "wait_floor": self.wait_floor,
            "loadavg_before_run": self.loadavg,
        }

    def write_results(self):
        if not self.out.exists():
            return
        rows = []
        for m in self.metrics:
            rows.append({
                "key": m.key, "group": m.group, "row": m.row, "metric": m.label, "unit": m.unit,
                "better": m.better,
                "sides": {s: {"reps": m.reps.get(s, []), "median": m.median(s),
                              "error": m.errors.get(s), "details": m.extra.get(s, [])}
                          for s in self.side_names},
                "ratios": {"efused/native": self.ratio(m, "efused", "native"),
                           "efused/libfuse": self.ratio(m, "efused", "libfuse"),
                           "libfuse/native": self.ratio(m, "libfuse", "native"),
                           "efused/efused-nobpf": self.ratio(m, "efused", "efused-nobpf")},
            })
        doc = {"meta": self.meta(), "rows": rows,
               "upcalls_ctxsw_per_io": self.count_rows(),
               "wait_floor": self.floor_rows(),
               "telemetry_cost": self.cost_rows()}
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.out / "results.json")
        (self.out / "results.md").write_text(self.render_md())

    def ratio(self, m, a, b):
        if m.errors.get(a) or m.errors.get(b):
            return None
        va, vb = m.median(a), m.median(b)
        if va is None or vb is None or vb == 0:
            return None
        return va / vb

    def count_rows(self) -> list[dict]:
        """The counted runs: per counted phase, per COUNTED_SIDES side, the run's details and the
        counter deltas (None = not run)."""
        return [{"key": key, "row": row, "per": per,
                 "sides": {s: self.counts[key].get(s) for s in COUNTED_SIDES if s in self.side_names}}
                for key, (row, per) in self.counted_rows.items()]

    def floor_rows(self) -> list[dict]:
        """Per counted time row (cat, tar): how far the client's waits alone put any FUSE
        server above native if each cost only the machine's wait floor."""
        floor, rows = self.floor_us(), []
        for cr in self.count_rows():
            m = self.by_key.get(cr["key"])
            rec = cr["sides"].get("efused")
            native = m.median("native") if m and not m.errors.get("native") else None
            if (m is None or m.unit != "s" or floor is None or native is None
                    or not rec or "counters" not in rec or not rec.get("ios")):
                continue
            per_op_us = native / rec["ios"] * 1e6
            waits = rec["counters"]["switches"]["client voluntary"] / rec["ios"]
            rows.append({"key": cr["key"], "row": cr["row"], "per": cr["per"],
                         "native_per_op_us": per_op_us, "waits_per_op": waits,
                         "floor_us": floor,
                         "lowest_ratio": (per_op_us + waits * floor) / per_op_us,
                         "efused/native": self.ratio(m, "efused", "native")})
        return rows

    def render_floor_md(self) -> list[str]:
        L = ["", "## Wait floor", "",
             "What one blocking request and reply between two processes costs on this machine "
             "(`bench/pingpong.c`: a pipe each way, median of 5 x 10,000 round trips): "]
        if "error" in self.wait_floor or not self.wait_floor:
            L[-1] += f"not measured ({mdesc(self.wait_floor.get('error', 'not run'))})."
            return L
        w = self.wait_floor
        L[-1] += (f"**{w['same_cpu_us']:.1f} µs** with both on one CPU, "
                  + (f"{w['cross_cpu_us']:.1f} µs on two CPUs, " if w.get("cross_cpu_us") else "")
                  + f"{w['unpinned_us']:.1f} µs where the scheduler puts them. A request the "
                  "caller waits for (the client's voluntary context switches above) has the same "
                  "shape, so with the cheapest of these per wait no FUSE server gets below the "
                  "`lowest ratio` here with that many waits per operation:")
        rows = self.floor_rows()
        if not rows:
            return L + ["", "(no counted time row with a native median and efused's counts)"]
        L += ["", "| row | native per op | efused's waits per op | floor per wait | "
              "lowest ratio with those waits | efused/native |", "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            L.append(f"| {r['row']} | {r['native_per_op_us']:.1f} µs | "
                     f"{fmt_per(r['waits_per_op'])} | {r['floor_us']:.1f} µs | "
                     f"{fmt_ratio(r['lowest_ratio'])} | {fmt_ratio(r['efused/native'])} |")
        return L

    def cost_rows(self) -> list[dict]:
        """efused (telemetry on) ÷ efused-nobpf (off), per IOPS or time row both sides ran, as a
        throughput ratio (for time rows: off's time ÷ on's): 1.00x = free, below = slower."""
        rows = []
        for m in self.metrics:
            if m.unit not in ("IOPS", "s") or not {"efused", "efused-nobpf"} <= set(m.reps):
                continue
            on, off = m.reps["efused"], m.reps["efused-nobpf"]
            runs = [e for s in ("efused", "efused-nobpf") for e in m.extra.get(s, [])]
            if m.better == "higher":
                ratio, per_rep = self.ratio(m, "efused", "efused-nobpf"), [a / b for a, b in zip(on, off) if b]
            else:
                ratio, per_rep = self.ratio(m, "efused-nobpf", "efused"), [b / a for a, b in zip(on, off) if a]
            rows.append({
                "key": m.key, "row": m.row, "metric": m.label, "unit": m.unit,
                "on": m.median("efused"), "off": m.median("efused-nobpf"),
                "on/off": ratio, "per_rep_on/off": per_rep,
                "telemetry_attached_on": [e["bpf_telemetry"] for e in m.extra.get("efused", [])],
                "runs": len(runs),
                "runs_with_foreign_telemetry": sum(1 for e in runs if e["foreign_bpf_telemetry"]),
                "runs_unchecked": sum(1 for e in runs if e["foreign_bpf_telemetry"] is None)})
        return rows

    def cell(self, m, side):
        if side not in self.side_names or m.group not in SIDE_CLASSES[side].groups:
            return "not run"
        if m.errors.get(side):
            return "FAILED"
        v = m.median(side)
        return fmt(v, m.unit) if v is not None else "—"

    def render_counts_md(self) -> list[str]:
        L = ["", "## Upcalls and context switches per operation", "",
             "Counted by efused's eBPF telemetry (`efuse_kernel_requests_total`, "
             "`efuse_context_switches_total`, `efuse_kernel_request_duration_seconds`; "
             "`docs/bpf.md`) over one extra run per side and variant, "
             "same workload and state as the repetitions above: the telemetry efused is attached "
             "for that run only, and /metrics is scraped right before and after it; the deltas of "
             "the measured mount are divided by the run's operations: fio's I/Os (reads + writes "
             "completed), the files catted, the archive entries extracted. "
             "Upcalls = requests the kernel sent to the FUSE server; FORGET and BATCH_FORGET "
             "are not counted (they are not `fuse_req`s). Context switches: `daemon` = the "
             "server's threads, `client` = threads while they wait on a request of the mount "
             "(fio, cat, tar); `vol.` = blocked, `invol.` = preempted.", ""]
        if self.telemetry.unavailable and not any(self.counts.values()):
            return L + [f"**eBPF telemetry unavailable, nothing counted**: "
                        f"{mdesc(self.telemetry.unavailable)}"]
        L += ["| row | side | operations | upcalls | upcalls / op | by opcode, per op | "
              "daemon vol. / op | daemon invol. / op | client vol. / op | client invol. / op | "
              "mean upcall latency |",
              "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for cr in self.count_rows():
            for side, rec in cr["sides"].items():
                head = f"| {cr['row']} | {side} |"
                ops_cell = f"{rec['ios']:,} {cr['per']}" if rec and "ios" in rec else ""
                if rec is None:
                    L.append(head + " not run |" + " — |" * 8)
                elif "error" in rec:
                    L.append(head + " FAILED |" + " — |" * 8)
                elif "counters" not in rec:
                    L.append(head + f" {ops_cell} | not counted: telemetry unavailable |"
                             + " — |" * 7)
                else:
                    c, ios = rec["counters"], rec["ios"] or 1
                    ops = sorted(c["upcalls"].items(), key=lambda kv: -kv[1])
                    top = ops if len(ops) <= 5 else ops[:4]
                    shown = ", ".join(f"{op} {fmt_per(n / ios)}" for op, n in top)
                    if len(top) < len(ops):
                        shown += (f", {len(ops) - 4} others "
                                  f"{fmt_per(sum(n for _, n in ops[4:]) / ios)}")
                    sw = [fmt_per(c["switches"][f"{sd} {kd}"] / ios) for sd in ("daemon", "client")
                          for kd in ("voluntary", "involuntary")]
                    lat = c["upcall_latency_mean_us"]
                    L.append(head + f" {ops_cell} | {c['upcalls_total']:,} | "
                             f"{fmt_per(c['upcalls_total'] / ios)} | "
                             f"{shown or '—'} | " + " | ".join(sw)
                             + f" | {'—' if lat is None else f'{lat:.1f} µs'} |")
        L += [f"\n{side} FAILED in the counted run of {cr['row']}: {mdesc(rec['error'])}"
              for cr in self.count_rows() for side, rec in cr["sides"].items()
              if rec and "error" in rec]
        dropped: dict[str, int] = {}
        for cr in self.count_rows():
            for rec in cr["sides"].values():
                for k, v in (rec or {}).get("counters", {}).get("events_dropped", {}).items():
                    dropped[k] = dropped.get(k, 0) + v
        if dropped:
            L += ["", "Warning: during the counted runs the telemetry could not account some "
                  "events of the host's FUSE mounts (`efuse_bpf_events_dropped_total`, any mount): "
                  + ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items()))
                  + "; the counts above may miss at most that many requests."]
        return L

    def render_cost_md(self) -> list[str]:
        rows = self.cost_rows()
        L = ["", "## eBPF telemetry cost: efused with telemetry on ÷ off", "",
             "`efused` runs with efused's eBPF telemetry attached during each of its timed runs, "
             "`efused-nobpf` is the same efused mount with no telemetry attached anywhere by the bench; "
             "they run back to back in every repetition, on the same mount and files. A throughput ratio (for time rows, "
             "off's time ÷ on's): 1.00x = no cost, 0.97x = 3% slower with telemetry. *Other telemetry* counts the timed runs (of "
             "both sides) during which copies of efused's telemetry that the bench did not start "
             "were loaded (another efused on the host): those runs all paid for them.", ""]
        if not rows:
            return L + ["No row ran on both sides."]
        if self.telemetry.unavailable:
            L += [f"**eBPF telemetry unavailable** ({mdesc(self.telemetry.unavailable)}): the "
                  "`efused` runs below without telemetry too, so the ratio measures nothing but "
                  "noise.", ""]
        L += ["| row | metric | efused, telemetry on | efused-nobpf, off | on ÷ off | "
              "per repetition | other telemetry |", "|---|---|---:|---:|---:|---|---|"]
        for r in rows:
            m = self.by_key[r["key"]]
            other = ("none" if not r["runs_with_foreign_telemetry"] else
                     f"**in {r['runs_with_foreign_telemetry']} of {r['runs']} runs**")
            if r["runs_unchecked"]:
                other += f" ({r['runs_unchecked']} unchecked: bpftool failed)"
            unit = "IOPS" if r["unit"] == "IOPS" else f"{r['metric']} ({r['unit']})"
            L.append(f"| {r['row']} | {unit} | {self.cell(m, 'efused')} | {self.cell(m, 'efused-nobpf')} | "
                     f"{fmt_ratio(r['on/off'])} | "
                     f"{', '.join(fmt_ratio(x) for x in r['per_rep_on/off']) or '—'} | {other} |")
        ratios = [(r["on/off"], r["row"]) for r in rows if r["on/off"] is not None]
        if ratios:
            lo = min(ratios)
            L += ["", f"Median on ÷ off over these {len(ratios)} rows: "
                  f"**{fmt_ratio(statistics.median(r for r, _ in ratios))}**; lowest: "
                  f"{fmt_ratio(lo[0])} ({lo[1]})."]
        return L

    def render_md(self):
        g = git_info()
        L = ["# efuse benchmark: native vs libfuse passthrough_ll vs efused", "",
             f"- date: {self.started:%Y-%m-%d %H:%M}, status: **{self.status}**, "
             f"mode: {'quick' if self.quick else 'full'}, repetitions per cell: {self.reps} "
             f"(median shown), fio runtime {self.runtime}s",
             f"- git: {g['sha']}{' (dirty tree)' if g['dirty'] else ''}; efused: "
             f"`{self.efused_version}`, args: `{self.args.efused_args or '(none)'}`",
             f"- load average before the run (1/5/15 min): "
             f"{' / '.join(f'{v:.2f}' for v in self.loadavg)}"
             + (" — **other work was running on the machine; expect noise**"
                if self.loadavg[0] > 0.5 else ""),
             "- libfuse: 3.14 `passthrough_ll` example with default options "
             "(`-f -o source=SRC MNT`)",
             "- sides take turns in every repetition; repetitions 2k and 2k+1 run the side "
             "order rotated by k, forwards then backwards (native, libfuse, efused, "
             "efused-nobpf; efused-nobpf, efused, libfuse, native; libfuse, ...; "
             "`efused-nobpf` in fio, tree and cat rows only); every FUSE side serves a fresh ext4 "
             "directory, data lives inside the mount. Machine: [machine.md](machine.md)",
             "- efused's eBPF telemetry (it observes every FUSE mount on the host) is attached "
             "only during `efused`'s timed runs and the counted runs: `native`, `libfuse` and "
             "`efused-nobpf` run without it (*eBPF telemetry cost* below compares `efused` with "
             "`efused-nobpf`)",
             "- **ratios**: for IOPS and MB/s rows a ratio is a throughput ratio "
             "(efused ÷ other; **higher is better**, 1.00x = parity); for time rows it is a time "
             "ratio (efused ÷ other; **lower is better**, 0.50x = twice as fast). "
             "The `better` column says which way each metric goes.", "",
             "| row | metric | better | native | libfuse | efused | efused/native | efused/libfuse |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
        for m in self.metrics:
            r1, r2 = self.ratio(m, "efused", "native"), self.ratio(m, "efused", "libfuse")
            unit = f" ({m.unit})" if m.unit not in ("IOPS", "MB/s") else ""
            L.append(f"| {m.row} | {m.label}{unit} | {'↑ higher' if m.better == 'higher' else '↓ lower'} | "
                     f"{self.cell(m, 'native')} | {self.cell(m, 'libfuse')} | {self.cell(m, 'efused')} | "
                     f"{fmt_ratio(r1)} | {fmt_ratio(r2)} |")
        if self.counted_rows:
            L += self.render_counts_md()
        L += self.render_floor_md()
        if {"efused", "efused-nobpf"} <= set(self.side_names) and set(COST_GROUPS) & set(self.groups):
            L += self.render_cost_md()
        fails = [(m, s, e) for m in self.metrics for s, e in m.errors.items()]
        unav = [s for s in self.sides if s.unavailable]
        notes = [(s.name, n) for s in self.sides for n in getattr(s, "notes", [])]
        notes += [("eBPF telemetry", n) for n in self.telemetry.notes]
        if self.telemetry.unavailable:
            notes.append(("eBPF telemetry", f"unavailable: {self.telemetry.unavailable}"))
        for side, t in self.foreign.items():
            if t["disturbed"]:
                notes.append((side, f"during {t['disturbed']} of {t['runs']} timed runs, copies of "
                              "efused's eBPF telemetry that the bench did not start were loaded "
                              "(they observe every FUSE mount and every context switch, so those "
                              f"runs paid for them): {', '.join(sorted(t['holders']))}"))
            if t["unknown"]:
                notes.append((side, f"{t['unknown']} of {t['runs']} timed runs could not be checked "
                              "for other eBPF telemetry (`bpftool -j prog show` failed)"))
        if fails or unav or notes:
            L += ["", "## Failures and notes", ""]
            for s in unav:
                L.append(f"- **{s.name} unavailable**: {mdesc(s.unavailable)}")
            seen = set()
            for m, s, e in fails:
                if (s, m.group, e) in seen:
                    continue
                seen.add((s, m.group, e))
                L.append(f"- **{s}** failed in `{m.group}`: {mdesc(e)}")
            for s, n in notes:
                L.append(f"- {s}: {mdesc(n)}")
        L += ["", "## Repetitions", "",
              "| row | metric | " + " | ".join(SIDES) + " |", "|---|---|" + "---|" * len(SIDES)]
        for m in self.metrics:
            cells = [", ".join(fmt(v, m.unit) for v in m.reps.get(s, [])) or "—" for s in SIDES]
            L.append(f"| {m.row} | {m.label} | " + " | ".join(cells) + " |")
        return "\n".join(L) + "\n"


def mdesc(s: str) -> str:
    s = " ".join(str(s).split()).replace("|", "\\|")
    return s if len(s) < 600 else s[:600] + " …"


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "IOPS":
        return f"{v:,.0f}"
    if unit == "MB/s":
        return f"{v:,.1f}"
    return f"{v:#.4g}" if v < 1000 else f"{v:,.0f}"


def describe_counts(extra: dict) -> str:
    """One log line's worth of a counted run (operations: fio I/Os, files, entries)."""
    c, ios = extra.get("counters"), extra["ios"] or 1
    if c is None:
        return f"{extra['ios']:,} operations, not counted (eBPF telemetry unavailable)"
    sw = c["switches"]
    return (f"{extra['ios']:,} operations, upcalls/op {fmt_per(c['upcalls_total'] / ios)}, context "
            f"switches/op daemon {fmt_per((sw['daemon voluntary'] + sw['daemon involuntary']) / ios)}"
            f", client {fmt_per((sw['client voluntary'] + sw['client involuntary']) / ios)}")


def fmt_per(v: float) -> str:
    """A count per operation."""
    if v == 0:
        return "0"
    return f"{v:.1e}" if v < 0.001 else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def fmt_ratio(r):
    if r is None:
        return "—"
    return f"{r:.3f}x" if r < 0.1 else (f"{r:.2f}x" if r < 10 else f"{r:.1f}x")


_GIT = None


def git_info():
    global _GIT
    if _GIT is None:
        def g(*a):
            r = subprocess.run(["git", "-C", str(REPO)] + list(a), capture_output=True, text=True)
            return r.stdout.strip() if r.returncode == 0 else ""
        _GIT = {"sha": g("rev-parse", "--short", "HEAD") or "nogit",
                "dirty": bool(g("status", "--porcelain", "--untracked-files=no"))}
    return _GIT


# --------------------------------------------------------------------------- machine.md

def sh(cmd: str) -> str:
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV)
    return (r.stdout + r.stderr).strip()


def write_machine(bench: Bench):
    lscpu_keys = ("Architecture", "Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
                  "Socket(s)", "CPU max MHz", "BogoMIPS", "Hypervisor vendor", "Virtualization type",
                  "L1d cache", "L2 cache", "L3 cache", "NUMA node(s)")
    lscpu = [ln for ln in sh("lscpu").splitlines() if ln.split(":")[0].strip() in lscpu_keys]
    fusep = sh("for f in /sys/module/fuse/parameters/*; do echo \"$(basename $f) = $(cat $f)\"; done")
    g = git_info()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    t = [
        "# Machine", "",
        f"- date: {bench.started:%Y-%m-%d %H:%M:%S}",
        f"- git: {g['sha']}{' (dirty tree)' if g['dirty'] else ''}", "",
        "## Kernel", "", "```", sh("uname -a"), "```", "",
        "## CPU (lscpu)", "", "```", "\n".join(lscpu), "```", "",
        "## Memory", "", "```", sh("grep -E '^(MemTotal|MemFree|MemAvailable|SwapTotal):' /proc/meminfo"),
        sh("sysctl vm.dirty_ratio vm.dirty_background_ratio vm.swappiness 2>/dev/null"), "```", "",
        "## Kernel FUSE", "", "```", fusep or "(no /sys/module/fuse/parameters)",
        sh("grep -w fuse /proc/filesystems"), "```", "",
        "## Wait floor (bench/pingpong.c)", "", "```",
        json.dumps(bench.wait_floor) if bench.wait_floor else "(not measured)", "```", "",
        "## Work directory", "", "```",
        f"{WORK}: " + sh(f"findmnt -n -o SOURCE,FSTYPE,OPTIONS -T {shlex.quote(str(WORK))}"),
        sh(f"df -h {shlex.quote(str(WORK))} | tail -1"), "```", "",
        "## Packages", "", "```",
        sh("dpkg-query -W fio fuse3 libfuse3-3 libfuse3-dev tar coreutils findutils linux-source-6.1 2>&1"),
        sh("fio --version"), "```", "",
        "## Sides", "",
        f"- native: plain ext4 directory under `{RUN}/native`",
        f"- libfuse: `{shlex.join(LibfuseSide(bench).argv(Path('SRC'), Path('MNT')))}` "
        f"(built from `{EXAMPLES}/passthrough_ll.c` with `gcc -O2 $(pkg-config --cflags --libs fuse3)`)",
        f"- efused: `{bench.efused_src}` (run from a private copy, sha256 "
        f"`{bench.efused_sha256[:16]}`), version `{bench.efused_version}`, args: "
        f"`{bench.args.efused_args or '(none)'}`, environment `EFUSE_BPF=0`; its eBPF telemetry "
        f"is attached around each of its timed runs by the telemetry efused "
        f"`{shlex.join(bench.telemetry.argv(RUN / 'telemetry.yaml'))}` (config: `mounts: []`)",
        "- efused-nobpf (fio, tree and cat rows): the efused side's daemon, mount and files, measured with no "
        "telemetry attached (back to back with efused in every repetition)",
        f"- RLIMIT_NOFILE for every process: {soft}/{hard}",
        "",
        "## Run parameters", "",
        f"- mode: {'quick' if bench.quick else 'full'}, repetitions: {bench.reps}, fio runtime: "
        f"{bench.runtime}s, sides: {', '.join(bench.side_names)}, groups: {', '.join(bench.groups)}",
        f"- command line: `{shlex.join(sys.argv)}`",
    ]
    (bench.out / "machine.md").write_text("\n".join(t) + "\n")


# --------------------------------------------------------------------------- lifecycle

def acquire_lock():
    WORK.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("bench: another bench run holds bench/work/.lock; refusing to start")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def clean_leftovers() -> list[str]:
    """Stops daemons and unmounts file systems a previous (crashed) run left behind."""
    found = []
    if DAEMONS.exists():
        try:
            old = json.loads(DAEMONS.read_text() or "{}")
        except ValueError:
            old = {}
        # Measured commands first (they may hold the mounts busy), then the daemons.
        for pid, info in sorted(old.items(), key=lambda kv: not kv[1].get("group")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:
                continue
            if [c.decode(errors="replace") for c in cmd] == info.get("cmdline"):
                found.append(f"{'command' if info.get('group') else 'daemon'} pid {pid}: "
                             f"{shlex.join(info['cmdline'])}")
                try:
                    if info.get("group"):  # a measured command: its own process group
                        os.killpg(int(pid), signal.SIGKILL)
                        continue
                    os.kill(int(pid), signal.SIGTERM)
                    for _ in range(100):
                        if not Path(f"/proc/{pid}").exists():
                            break
                        time.sleep(0.1)
                    else:
                        os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        DAEMONS.unlink()
    for m in sorted(mounts_under(WORK), key=lambda m: -len(m.mountpoint)):
        found.append(f"mount {m.mountpoint} ({m.fstype})")
        force_unmount(Path(m.mountpoint))
    return found


def final_cleanup(keep: bool):
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    REG.kill_cmds()
    for d in list(REG.daemons.values()):
        try:
            d.stop()
        except Exception as e:  # noqa: BLE001
            log(f"warning: stopping {d.side}: {e}")
    for m in sorted(mounts_under(WORK), key=lambda m: -len(m.mountpoint)):
        log(f"unmounting leftover {m.mountpoint}")
        force_unmount(Path(m.mountpoint))
    if DAEMONS.exists() and not REG.daemons:
        DAEMONS.unlink()
    if not keep:
        try:
            safe_rmtree(RUN)
        except BenchError as e:
            log(f"warning: {e}")


def parse_args(argv):
    # Allow `--efused-args "--threads 2"` (argparse would take the value for an option).
    fixed, i = [], 0
    while i < len(argv):
        if argv[i] == "--efused-args" and i + 1 < len(argv):
            fixed.append(f"--efused-args={argv[i + 1]}")
            i += 2
        else:
            fixed.append(argv[i])
            i += 1
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 repetition, 5 s fio runs, smaller files, no full kernel tar (a few minutes)")
    ap.add_argument("--out", help="output directory (default bench/results/<date>-<sha>/)")
    ap.add_argument("--efused-args", default="", help="extra efused flags, e.g. \"--threads 2\"")
    ap.add_argument("--efused", help="efused binary (default build/bin/efused; built if missing)")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma list of sides: {','.join(SIDES)} (default all; "
                    "efused-nobpf runs in fio, tree and cat rows only)")
    ap.add_argument("--rows", default="", help=f"comma list of row groups: {','.join(GROUPS)} "
                    "(default all; --quick leaves out tar-full)")
    ap.add_argument("--reps", type=int, help="repetitions per cell (default 3, quick 1)")
    ap.add_argument("--runtime", type=int, help="fio runtime in seconds (default 15, quick 5)")
    ap.add_argument("--skip-deps", action="store_true", help="do not run scripts/install-deps.sh")
    ap.add_argument("--keep-work", action="store_true", help="keep bench/work/run data after the run")
    a = ap.parse_args(fixed)
    a.sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    a.rows = [s.strip() for s in a.rows.split(",") if s.strip()]
    for s in a.sides:
        if s not in SIDES:
            ap.error(f"unknown side {s!r}")
    for r in a.rows:
        if r not in GROUPS:
            ap.error(f"unknown row group {r!r}")
    return a


def main(argv=None):
    global LOGF
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: must run as root (mounts, drop_caches)")
    # Installed explicitly: a shell starts background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    lock = acquire_lock()
    left = clean_leftovers()
    if left:
        print("bench: found leftovers of an earlier run under bench/work and cleaned them up:\n  "
              + "\n  ".join(left) + "\nrefusing to start; run again.", file=sys.stderr)
        return 2
    safe_rmtree(RUN)
    RUN.mkdir(parents=True)

    # passthrough_ll keeps one O_PATH fd per inode the kernel knows (83k for the kernel tar):
    # every side runs with the same, raised open-file limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        resource.setrlimit(resource.RLIMIT_NOFILE, (nr_open, nr_open))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(f"bench: note: RLIMIT_NOFILE stays at hard limit {hard} (no CAP_SYS_RESOURCE); "
              "see bench/README.md", file=sys.stderr)

    bench = Bench(args)
    g = git_info()
    out = Path(args.out) if args.out else BENCH / "results" / f"{bench.started:%Y-%m-%d}-{g['sha']}"
    if not args.out and out.exists():
        n = 2
        while Path(f"{out}-{n}").exists():
            n += 1
        out = Path(f"{out}-{n}")
    out.mkdir(parents=True, exist_ok=True)
    bench.out = out.resolve()
    LOGF = open(bench.out / "log.txt", "a")
    log(f"bench: output in {bench.out}")
    rc = 0
    try:
        bench.setup()
        write_machine(bench)
        bench.run_all()
        bench.status = "complete"
    except (KeyboardInterrupt, Interrupted) as e:
        bench.status = "interrupted"
        log(f"interrupted ({str(e) or 'SIGINT'}); cleaning up")
        rc = 130
    except BaseException as e:
        bench.status = f"aborted: {e}"
        log(f"aborted: {e!r}")
        rc = 1
        if not isinstance(e, (SystemExit, BenchError)):
            import traceback
            traceback.print_exc()
    finally:
        final_cleanup(args.keep_work)
        bench.finished = datetime.datetime.now()
        try:
            bench.write_results()
        except Exception as e:  # noqa: BLE001
            log(f"warning: writing results: {e}")
        os.close(lock)
    took = (bench.finished - bench.started).total_seconds()
    log(f"bench: {bench.status} in {took / 60:.1f} min; results: {bench.out / 'results.md'}")
    if rc == 0:
        sys.stdout.write((bench.out / "results.md").read_text())
    return rc


if __name__ == "__main__":
    sys.exit(main())
