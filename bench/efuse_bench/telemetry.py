"""efused's eBPF telemetry as the bench uses it: the telemetry-only efused, its /metrics
counters per mount, and copies of the telemetry the bench did not start."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from .common import REPO, RUN, TELEMETRY_ENV, TELEMETRY_PROG, BenchError, log, tail
from .procs import Daemon

sys.path.insert(0, str(REPO / "tests" / "integration"))
import prom_text  # noqa: E402  (the /metrics parser the integration tests use too)

if TYPE_CHECKING:
    from .bench import Bench


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

    def start(self, exact: bool = False) -> bool:
        """Attaches the telemetry; False when it cannot run (self.unavailable says why, and
        later calls return False at once). Timed runs get efused's defaults, what an operator
        pays for (the latency of 1 in telemetry_sample_every requests); `exact` (the counted
        runs) times every request, so that the mean upcall latency and the clients' context
        switches per operation are over all requests, not a sample (docs/bpf.md, Sampling)."""
        if self.unavailable:
            return False
        config = RUN / "telemetry.yaml"
        config.write_text("# telemetry-only efused of bench/run (bench/efuse_bench): no mounts\n"
                          + ("telemetry_sample_every: 1\n" if exact else "") + "mounts: []\n")
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
        # Attaching leaves the kernel slower for about a second (measured: a cat loop right
        # after attach 14 % slower than with telemetry attached 2 s earlier; bench/README.md):
        # an operator's efused attaches once at start, so let that pass before timing.
        time.sleep(self.bench.args.telemetry_settle)
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

