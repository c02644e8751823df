"""Processes the harness starts: timed commands in their own session (run), daemons tracked by
PID (Daemon, Registry), C helpers built with gcc (build_c)."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from .common import DAEMONS, ENV, WORK, BenchError, log, tail
from .mounts import force_unmount, mount_at


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

