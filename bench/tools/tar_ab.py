#!/usr/bin/env python3
"""Hand-made A/B of the tar-subset row: extracts the bench's subset archive into fresh
mounts of several FUSE servers, alternating them (order reversed every other repetition),
and prints each run's time, medians and each variant's ratio to the first.

    bench/tools/tar_ab.py [--reps N] [--rt PRIO] [--perf] [--scrape URL] [--settle S] NAME='CMD' ...

CMD is the server's command line with SRC and MNT for the backing directory and the
mountpoint, e.g.

    bench/tools/tar_ab.py --reps 6 --rt 10 \\
        lib='bench/work/bin/passthrough_ll -f -o source=SRC MNT' \\
        efused='build/bin/efused --mount SRC:MNT' \\
        classic='build/bin/efused --mount SRC:MNT --transport classic'

efused runs with EFUSE_BPF=0 (no telemetry) unless the environment says otherwise. Backing
directories live under bench/work/tar-ab/ (ext4 here, like the bench's) and are never
deleted between runs, only moved aside: on an ext4 without a journal new inodes are
checked against recently deleted ones (see efuse_bench/mounts.py, retire()), which made
the run after a deletion slower. Delete bench/work/tar-ab/ yourself when done.

--rt PRIO runs tar and every thread of each server at SCHED_FIFO PRIO (also the threads
efused makes SCHED_BATCH: `chrt -a -p` after the mount is up). On a host where other jobs
run at normal or nice priority this gives the measured processes the CPUs as if the host
were quiet, and the times become repeatable (spread ~2 % instead of 2-3x); scheduling is
not CFS's, so confirm a finding without it on a quiet host.
--perf prints each server's CPU time, context switches and migrations during the run
(perf stat). --scrape URL reads a telemetry efused's /metrics before and after each run
and prints the upcalls per opcode of the measured mount (efuse_kernel_requests_total) with
their kernel-side mean latency (from the sampled requests; start one with
`efused --mount memory:/tmp/t --metrics 127.0.0.1:PORT --telemetry requests`)."""
import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
TAR = BENCH / "work" / "linux-source-6.1-subset.tar"
BASE = BENCH / "work" / "tar-ab"


def mounted(mnt: str) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == mnt for line in f)


def scrape(url: str, mnt: str) -> dict:
    """(opcode, "requests") -> upcalls (every request), (opcode, "sum" / "count") -> the
    latency histogram's sum and count (of the sampled requests: 1 in
    efuse_bpf_latency_sample_every)."""
    out = {}
    for line in urllib.request.urlopen(url).read().decode().splitlines():
        if f'mount="{mnt}"' not in line:
            continue
        m = re.match(r'efuse_kernel_request_duration_seconds_(sum|count)\{.*opcode="(\w+)".*\} (\S+)', line)
        if m:
            out[(m[2], m[1])] = float(m[3])
        m = re.match(r'efuse_kernel_requests_total\{.*opcode="(\w+)".*\} (\S+)', line)
        if m:
            out[(m[1], "requests")] = float(m[2])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--rt", type=int, default=0, help="SCHED_FIFO priority (0: off)")
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--scrape", default="")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds between the mount coming up and the timed run (a server that "
                         "attaches eBPF telemetry: 2, docs/bpf.md 'attach transient')")
    ap.add_argument("--tar", default=str(TAR))
    ap.add_argument("variants", nargs="+", metavar="NAME=CMD")
    a = ap.parse_args()
    variants = [v.split("=", 1) for v in a.variants]
    if any(len(v) != 2 for v in variants):
        ap.error("variants are NAME='CMD with SRC and MNT'")
    if not Path(a.tar).exists():
        ap.error(f"{a.tar} missing: a bench run with the tar-subset row builds it")
    rt = ["chrt", "-f", str(a.rt)] if a.rt else []
    retired = BASE / "retired"
    retired.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cat", a.tar], stdout=subprocess.DEVNULL, check=True)
    times = {n: [] for n, _ in variants}
    cpu, lats = {}, {}
    for rep in range(a.reps):
        for name, cmd in (variants if rep % 2 == 0 else variants[::-1]):
            src, mnt = BASE / f"src-{name}", BASE / f"mnt-{name}"
            if src.exists():
                src.rename(retired / str(time.time_ns()))
            src.mkdir()
            mnt.mkdir(exist_ok=True)
            argv = [x.replace("SRC", str(src)).replace("MNT", str(mnt)) for x in shlex.split(cmd)]
            env = dict(os.environ, LC_ALL="C")
            env.setdefault("EFUSE_BPF", "0")
            log = open(BASE / f"{name}.log", "w")
            srv = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                for _ in range(200):
                    if mounted(str(mnt)) or srv.poll() is not None:
                        break
                    time.sleep(0.05)
                if not mounted(str(mnt)):
                    print(f"{name}: did not mount (see {BASE / (name + '.log')})", file=sys.stderr)
                    return 1
                time.sleep(a.settle)
                if a.rt:
                    subprocess.run(["chrt", "-a", "-f", "-p", str(a.rt), str(srv.pid)],
                                   stdout=subprocess.DEVNULL, check=True)
                (mnt / "x").mkdir()
                os.sync()
                stat = None
                if a.perf:
                    stat = subprocess.Popen(["perf", "stat", "-x,", "-e",
                                             "task-clock,context-switches,cpu-migrations",
                                             "-p", str(srv.pid), "-o", str(BASE / "perf.txt")])
                    time.sleep(0.5)
                s0 = scrape(a.scrape, str(mnt)) if a.scrape else None
                t0 = time.perf_counter()
                subprocess.run(rt + ["tar", "-xf", a.tar, "-C", str(mnt / "x")], check=True)
                t = time.perf_counter() - t0
                times[name].append(t)
                extra = ""
                if stat:
                    stat.send_signal(2)
                    stat.wait()
                    c = {}
                    for line in open(BASE / "perf.txt"):
                        f = line.split(",")
                        if len(f) > 3 and f[0][:1].isdigit():
                            c[f[2]] = float(f[0])
                    cpu.setdefault(name, []).append(c.get("task-clock", 0) / 1e3)
                    extra += (f" server: cpu {c.get('task-clock', 0) / 1e3:.3f}s"
                              f" switches {c.get('context-switches', 0):.0f}"
                              f" migrations {c.get('cpu-migrations', 0):.0f}")
                if s0 is not None:
                    time.sleep(0.2)
                    s1 = scrape(a.scrape, str(mnt))
                    for op in sorted({k[0] for k in s1}):
                        n = s1.get((op, "requests"), 0) - s0.get((op, "requests"), 0)
                        timed = s1.get((op, "count"), 0) - s0.get((op, "count"), 0)
                        if n > 100 and timed > 0:
                            lat = (s1[(op, "sum")] - s0.get((op, "sum"), 0)) / timed * 1e6
                            lats.setdefault((name, op), []).append(lat)
                            extra += f" {op} {n:.0f}x{lat:.1f}us"
                        elif n > 100:
                            extra += f" {op} {n:.0f}"
                print(f"{name} rep {rep}: {t:.3f} s{extra} (load {os.getloadavg()[0]:.2f})",
                      flush=True)
            finally:
                if subprocess.run(["fusermount3", "-u", str(mnt)], stderr=subprocess.DEVNULL).returncode:
                    subprocess.run(["umount", "-l", str(mnt)], stderr=subprocess.DEVNULL)
                srv.terminate()
                try:
                    srv.wait(10)
                except subprocess.TimeoutExpired:
                    srv.kill()
                    srv.wait()
                if src.exists():
                    src.rename(retired / str(time.time_ns()))
    for n, v in times.items():
        print(f"{n}: median {statistics.median(v):.3f} s, min {min(v):.3f}, max {max(v):.3f}, n={len(v)}"
              + (f"; server cpu median {statistics.median(cpu[n]):.3f} s" if n in cpu else ""))
    for k in sorted(lats):
        print(f"{k[0]} {k[1]}: mean kernel-side latency, median of runs {statistics.median(lats[k]):.1f} us")
    base = variants[0][0]
    for n, v in times.items():
        if n != base:
            r = [x / y for x, y in zip(v, times[base])]
            print(f"{n} / {base}: median {statistics.median(r):.3f}, per repetition "
                  + ", ".join(f"{x:.3f}" for x in r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
