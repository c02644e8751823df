#!/usr/bin/env python3
"""A/B of efused's telemetry on the bench's cat workload (20,000 cats of one 4 KiB file in an
efused mount, xargs -n 200 cat), alternating variants (order reversed every other
repetition), each attached 2 s before its run:

    bench/tools/cat_telemetry_ab.py REPS VARIANT...
        (VARIANT: off, empty, requests, full, requests:N, full:N, any of those @BINARY)

off: nothing attached by this script; empty: two programs that do nothing on the same two
tracepoints (bench/tools/empty_tp, built into bench/work/empty_tp on first use with clang and
libbpf); requests / full: a second efused (memory mount) with --telemetry LEVEL and its
default sampling; LEVEL:N also with --telemetry-sample-every N (requests timed in windows
covering 1 in N of the time);
LEVEL[:N]@BINARY with that efused binary instead (e.g. an earlier build's). cat and
every thread of the measured efused run at SCHED_FIFO 10 (`chrt`, RT=... to change; RT=""
for none), which makes the times repeatable on a host busy with nice'd builds (see
bench/README.md, "A/B by hand"). With STATS=1 it also prints each program's run time per
event from kernel.bpf_stats_enabled, which must then be 1 (set it, and restore it after:
it costs every BPF program of the host a little). Other efused instances' telemetry copies
see the same requests: `bpftool prog show | grep -c efuse_request_send` before you start.
EFUSED (default build/bin/efused) is the efused to measure.

RELOAD=1: no second efused. The measured efused runs from a config file and each variant
(off, requests, full, LEVEL:N; no `empty`, no @BINARY) is applied to it by editing the file
and a SIGHUP, as `systemctl reload efused` does, 2 s before its run: the telemetry as an
operator switches it, in one process."""
import os, re, signal, subprocess, sys, time, statistics, shlex, json
from pathlib import Path
def valid(v):
    v, _, binary = v.partition("@")
    if binary and not os.access(binary, os.X_OK):
        return False
    level, _, every = v.partition(":")
    if level in ("off", "empty"):
        return not every
    return level in ("requests", "full") and (not every or every.isdigit())
RELOAD = os.environ.get("RELOAD") == "1"
if len(sys.argv) < 3 or not all(valid(v) and not (RELOAD and ("@" in v or v == "empty"))
                                for v in sys.argv[2:]):
    sys.exit(__doc__)
reps = int(sys.argv[1]); variants = sys.argv[2:]
REPO = Path(__file__).resolve().parent.parent.parent
E = os.environ.get("EFUSED", str(REPO / "build" / "bin" / "efused"))
BASE = str(REPO / "bench" / "work" / "cat-ab")
RT = shlex.split(os.environ.get("RT", "chrt -f 10"))
EMPTY = REPO / "bench" / "work" / "empty_tp"
if "empty" in variants and not (EMPTY / "loader").exists():
    EMPTY.mkdir(parents=True, exist_ok=True)
    src = REPO / "bench" / "tools" / "empty_tp"
    subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
                   stdout=open(EMPTY / "vmlinux.h", "w"), check=True)
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I{EMPTY}", "-c", str(src / "empty.bpf.c"),
                    "-o", str(EMPTY / "empty.bpf.o")], check=True)
    subprocess.run(["cc", "-O2", "-o", str(EMPTY / "loader"), str(src / "loader.c"), "-lbpf"], check=True)
os.makedirs(f"{BASE}/src", exist_ok=True); os.makedirs(f"{BASE}/mnt", exist_ok=True)
os.makedirs(f"{BASE}/tmnt", exist_ok=True)
CONFIG = f"{BASE}/mounts.yaml"
def configure(level, every):
    open(CONFIG, "w").write(f"metrics:\n  listen: ''\ntelemetry: {level}\n"
                            f"telemetry_sample_every: {every}\nmounts:\n  - name: ab\n"
                            f"    mountpoint: {BASE}/mnt\n    backend: passthrough\n"
                            f"    source: {BASE}/src\n")
if RELOAD:
    configure("off", 16)
    env = {k: x for k, x in os.environ.items() if k != "EFUSE_BPF"}
    env["LC_ALL"] = "C"
    srv = subprocess.Popen([E, "--config", CONFIG, "--bus", "none"], stdout=open(f"{BASE}/srv.log", "w"),
                           stderr=subprocess.STDOUT, env=env)
else:
    env = dict(os.environ, EFUSE_BPF="0", LC_ALL="C")
    srv = subprocess.Popen([E, "--mount", f"{BASE}/src:{BASE}/mnt"], stdout=open(f"{BASE}/srv.log", "w"), stderr=subprocess.STDOUT, env=env)
time.sleep(2)
if RT:  # every thread, also the io_uring ones efused made SCHED_BATCH
    subprocess.run(["chrt", "-a", "-p"] + RT[1:] + [str(srv.pid)], stdout=subprocess.DEVNULL, check=True)
with open(f"{BASE}/mnt/f", "wb") as f: f.write(os.urandom(4096))
open(f"{BASE}/list", "w").write((f"{BASE}/mnt/f\n") * 20000)
def catrun():
    t0 = time.perf_counter()
    subprocess.run(RT + ["sh", "-c", f"xargs -n 200 cat < {BASE}/list > /dev/null"], check=True)
    return time.perf_counter() - t0
catrun()
class Reloaded:
    """The measured efused itself, switched to a variant by a reload."""
    own_ids = None
    def terminate(self): pass
    def wait(self): pass
running = ["off"]  # the measured efused's level
def reload(v):
    level, _, every = v.partition(":")
    ons = lambda: re.findall(r"telemetry on:.*prog show id ([0-9,]+)", open(f"{BASE}/srv.log").read())
    seen = len(ons())
    configure(level, every or 16)
    srv.send_signal(signal.SIGHUP)
    r = Reloaded()
    # From off the programs load again (a new "telemetry on" line, new ids); between the
    # other levels and rates they stay.
    deadline = time.monotonic() + 10
    while level != "off" and time.monotonic() < deadline:
        lines = ons()
        if lines and (running[0] != "off" or len(lines) > seen):
            r.own_ids = [int(i) for i in lines[-1].split(",")]
            break
        time.sleep(0.05)
    running[0] = level
    time.sleep(2)
    return r
def attach(v):
    if RELOAD: return reload(v)
    if v == "off": return None
    if v == "empty":
        p = subprocess.Popen([str(EMPTY / "loader"), str(EMPTY / "empty.bpf.o")], stdout=subprocess.PIPE)
        p.stdout.readline()
    else:
        e = {k: x for k, x in os.environ.items() if k != "EFUSE_BPF"}
        spec, _, binary = v.partition("@")
        level, _, every = spec.partition(":")
        p = subprocess.Popen([binary or E, "--mount", f"memory:{BASE}/tmnt", "--telemetry", level, "--metrics", "127.0.0.1:19893"]
                             + (["--telemetry-sample-every", every] if every else []),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=e)
        for l in p.stdout:
            if b"telemetry on" in l:
                print("   ", l.decode().strip()[:160])
                m = re.search(rb"prog show id ([0-9,]+)", l)
                p.own_ids = [int(i) for i in m[1].split(b",")] if m else []
            if b"efused: ready" in l: break
    time.sleep(2)  # settle (docs/bpf.md: the kernel is slower for ~1 s after an attach)
    return p
res = {v: [] for v in variants}
stats = {}
current = None
try:  # the measured mount goes away whatever happens (it was started by this script)
    for rep in range(reps):
        vs = variants if rep % 2 == 0 else variants[::-1]
        for v in vs:
            p = current = attach(v)
            ids = []
            if p is not None and os.environ.get("STATS"):
                # Only this variant's programs: other engineers' efused load programs of the
                # same names (their ids are in efused's "telemetry on" line).
                ids = getattr(p, "own_ids", None)
                if ids is None:
                    ids = [prog["id"] for prog in json.loads(subprocess.run(
                               ["bpftool", "-j", "prog", "show"], capture_output=True).stdout)
                           if prog.get("name", "").startswith("empty_")]
            foreign = sum(1 for prog in json.loads(subprocess.run(
                              ["bpftool", "-j", "prog", "show"], capture_output=True).stdout)
                          if prog.get("name") == "efuse_request_send") - (1 if v not in ("off", "empty") else 0)
            def snap():
                out = {}
                for i in ids:
                    j = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(i)], capture_output=True).stdout)
                    out[j["name"]] = (j.get("run_time_ns", 0), j.get("run_cnt", 0))
                return out
            s0 = snap()
            t = catrun()
            s1 = snap()
            extra = ""
            for k in s1:
                dt, dn = s1[k][0] - s0[k][0], s1[k][1] - s0[k][1]
                if dn: extra += f" {k}: {dn} runs {dt/dn:.0f} ns/run"; stats.setdefault((v, k), []).append(dt/dn)
            res[v].append(t)
            print(f"{v} rep{rep} {t:.3f}s{extra} load={open('/proc/loadavg').read().split()[0]} "
                  f"other_telemetry_copies={foreign}", flush=True)
            if p is not None:
                p.terminate(); p.wait()
            current = None
finally:
    if current is not None:  # a variant's efused (or loader) still attached
        current.terminate(); current.wait()
    srv.terminate(); srv.wait()
    subprocess.run(["umount", "-l", f"{BASE}/mnt"], stderr=subprocess.DEVNULL)
for v, x in res.items(): print(f"{v}: median {statistics.median(x):.3f} min {min(x):.3f} max {max(x):.3f}")
for v in variants[1:]:
    r = [a / b for a, b in zip(res[variants[0]], res[v])]
    print(f"{variants[0]} / {v} (throughput ratio, <1 = {v} slower): median {statistics.median(r):.3f} range {min(r):.3f}-{max(r):.3f}")
for k in sorted(stats): print(f"{k}: median {statistics.median(stats[k]):.0f} ns/run")
