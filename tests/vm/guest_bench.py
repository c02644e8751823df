#!/usr/bin/env python3
"""Issue 19 point 7's bench, run INSIDE the 6.12 guest (bench/run --vm; standard library
only). Three sides on the same guest and the same data: native ext4 (the data disk), efused
on the kernel's own FUSE (`--kernel-module off`), efused on efuse.ko (`--kernel-module on`,
the shipped handlers attached). Every side has its own copy of the data, made on the host
(tests/vm/run_vm_tests.py, bench_data()).

Both efused run at once, each with its own copy of the data, started afresh for each
workload with that workload's entry and attr timeouts (TIMEOUTS: 3600 s, so warm means
warm; stat-tree STAT_TIMEOUT, 1 s, so the kernel revalidates). Workloads, each after one
untimed warm-up pass per side, then timed in `REPS` rounds that run the three sides one
after the other, each round starting one side further on (median):
  stat-tree   lstat of every entry of a 10,000-entry tree, after waiting (untimed) until
              the kernel's cached entries and attributes have expired: every name the pass
              looks at is revalidated (LOOKUP, GETATTR), which the module side's handlers
              answer from the maps efused keeps beyond the kernel's validity
  cat         one 4 KiB file opened, read and closed CATS times by `xargs -n 200 cat` (as
              bench/'s host cat row: CATS / 200 processes, so fork and exec do not drown
              the open/read/close under TCG)
  tar         extraction of a small tar (BENCH_TAR: a subset of the sources) into a fresh
              directory (removed, untimed, between repetitions)
  fio         4 KiB random 70/30 read/write on one 16 MiB file, psync, FIO_SECONDS

For the efused sides, the requests per operation that reached efused, by opcode
(efuse_requests_total), and those answered in the kernel (efuse_kernel_answered_total),
are taken around each timed part and summed over the repetitions. Writes JSON to /mnt/data/out/bench.json, which the host
turns into the table (run_vm_tests.py, write_bench()). Times compare sides inside this
guest only: the guest runs under TCG on a shared host, so absolute numbers mean little.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from prom_text import parse, scrape  # noqa: E402

DATA = "/mnt/data"
EFUSED = os.environ.get("efuse_efused", os.path.join(REPO, "build", "bin", "efused"))
OUT = f"{DATA}/out/bench.json"
REPS = int(os.environ.get("efuse_bench_reps", "3"))
CATS = int(os.environ.get("efuse_bench_cats", "2000"))
CATS_PER_PROCESS = 200
FIO_SECONDS = 5
SIDES = (  # name, data directory, mountpoint (None: native), efused flags
    ("native", f"{DATA}/bench-native", None, None),
    ("stock", f"{DATA}/bench-stock", "/mnt/bstock", ["--kernel-module", "off"]),
    ("module", f"{DATA}/bench-module", "/mnt/bmodule", ["--kernel-module", "on"]),
)
PORT = 19590
# Entry and attr timeouts (s) of both efused sides, per workload: warm means warm (3600),
# except for stat-tree, which measures the kernel's revalidation of expired entries: short
# timeouts, and a wait of STAT_TIMEOUT + 1 s before each timed pass.
TIMEOUT = 3600
STAT_TIMEOUT = int(os.environ.get("efuse_bench_stat_timeout", "1"))
TIMEOUTS = {"stat-tree": STAT_TIMEOUT}


def log(msg):
    print(f"bench: {msg}", flush=True)


def requests(port, name):
    """({opcode: served by efused}, {opcode: answered in the kernel}) now."""
    served, kernel = {}, {}
    for n, labels, v in parse(scrape(port)):
        if labels.get("mount") != name:
            continue
        if n == "efuse_requests_total":
            served[labels["opcode"]] = served.get(labels["opcode"], 0) + v
        elif n == "efuse_kernel_answered_total":
            kernel[labels["opcode"]] = kernel.get(labels["opcode"], 0) + v
    return served, kernel


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


# Each workload returns (operations, seconds of the timed part); snap() is taken right
# before and after that part (the requests counted).

def stat_tree(root, snap):
    paths = [os.path.join(d, e) for d, dirs, files in os.walk(f"{root}/tree")
             for e in dirs + files]
    time.sleep(STAT_TIMEOUT + 1)  # untimed: every entry the walk refreshed has expired
    snap()
    t = time.monotonic()
    for p in paths:
        os.lstat(p)
    seconds = time.monotonic() - t
    snap()
    return len(paths), seconds


def cat(root, snap):
    listing = f"/tmp/cat-list-{abs(hash(root))}"
    with open(listing, "w") as f:
        f.write(f"{root}/small.txt\n" * CATS)
    snap()
    t = time.monotonic()
    subprocess.run(["xargs", "-d", "\n", "-n", str(CATS_PER_PROCESS), "-a", listing, "cat"],
                   stdout=subprocess.DEVNULL, check=True)
    seconds = time.monotonic() - t
    snap()
    return CATS, seconds


def tar(root, snap):
    out = f"{root}/tar-out"
    if os.path.exists(out):
        shutil.rmtree(out)
    os.mkdir(out)
    snap()
    t = time.monotonic()
    subprocess.run(["tar", "-xf", f"{DATA}/bench.tar", "-C", out], check=True)
    seconds = time.monotonic() - t
    snap()
    return sum(len(d) + len(f) for _, d, f in os.walk(out)), seconds


def fio(root, snap):
    snap()
    r = subprocess.run(["fio", "--name=mix", f"--filename={root}/fio.file", "--size=16M",
                        "--bs=4k", "--rw=randrw", "--rwmixread=70", "--ioengine=psync",
                        f"--runtime={FIO_SECONDS}", "--time_based", "--invalidate=0",
                        "--output-format=json"], capture_output=True, text=True, check=True)
    snap()
    job = json.loads(r.stdout)["jobs"][0]
    # fio's own I/O time (its start-up is not the file system's): ops / seconds = its IOPS
    return int(job["read"]["total_ios"] + job["write"]["total_ios"]), job["job_runtime"] / 1000


WORKLOADS = (("stat-tree", stat_tree), ("cat", cat), ("tar", tar), ("fio", fio))
# A subset by name (bench/run --vm --rows cat,tar): EFUSE_BENCH_WORKLOADS on the host.
ONLY = [w for w in os.environ.get("efuse_bench_workloads", "").split(",") if w]


def timeouts(wname):
    t = str(TIMEOUTS.get(wname, TIMEOUT))
    return ["--entry-timeout", t, "--attr-timeout", t]


def start(side, src, mnt, flags, port, wname):
    os.makedirs(mnt, exist_ok=True)
    logf = open(f"/tmp/bench-{side}.log", "wb")
    p = subprocess.Popen([EFUSED, "--mount", f"{src}:{mnt}", "--metrics", f"127.0.0.1:{port}",
                          "--telemetry", "off", *timeouts(wname), *flags], stdout=logf,
                         stderr=logf, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while "efused: ready" not in open(f"/tmp/bench-{side}.log", errors="replace").read():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(open(f"/tmp/bench-{side}.log", errors="replace").read()[-1500:])
        time.sleep(0.2)
    return p


def run_workload(wname, fn, sides):
    """One workload on every side: a warm-up pass each, then REPS rounds that run the sides
    one after the other (so a change of the host's load hits every side alike), each round
    starting one side further on (no side always runs first, or right after another)."""
    rows = {}
    for side, root, port, name in sides:
        fn(root, lambda: None)  # warm-up: caches (and maps) as a warm run finds them
        rows[side] = {"times": [], "ops": 0, "rates": [], "served": {}, "kernel": {}}
    for i in range(REPS):
        for side, root, port, name in sides[i % len(sides):] + sides[:i % len(sides)]:
            snaps = []
            snap = (lambda: snaps.append(requests(port, name))) if port else (lambda: None)
            ops, seconds = fn(root, snap)
            r = rows[side]
            r["times"].append(seconds)
            r["ops"] += ops
            r["rates"].append(ops / seconds if seconds else 0)
            if port:
                (b_served, b_kernel), (a_served, a_kernel) = snaps[-2], snaps[-1]
                for acc, d in ((r["served"], delta(a_served, b_served)),
                               (r["kernel"], delta(a_kernel, b_kernel))):
                    for k, v in d.items():
                        acc[k] = acc.get(k, 0) + v
    out = {}
    for side, root, port, name in sides:
        r = rows[side]
        row = {"seconds": statistics.median(r["times"]), "all_seconds": r["times"],
               "ops": r["ops"] // REPS}
        if wname == "fio":  # the median round's rate; every round's, for the spread
            row["iops"] = statistics.median(r["rates"])
            row["all_iops"] = r["rates"]
        if port:
            row["upcalls_per_op"] = {k: v / r["ops"] for k, v in sorted(r["served"].items())}
            row["kernel_per_op"] = {k: v / r["ops"] for k, v in sorted(r["kernel"].items())}
        out[side] = row
        log(f"{side} {wname}: {row['seconds']:.3f} s, {row['ops']} ops")
    return out


def main():
    if os.environ.get("efuse_kmod") != "1":
        log("efuse.ko was not built for this guest")
        return 1
    subprocess.run(["insmod", f"{DATA}/efuse.ko"], check=True, capture_output=True)
    result = {"kernel": os.uname().release, "reps": REPS, "cats": CATS,
              "fio_seconds": FIO_SECONDS, "cpus": os.cpu_count(),
              "timeouts": {}, "sides": {side: {} for side, *_ in SIDES}}
    unknown = set(ONLY) - {w for w, _ in WORKLOADS}
    if unknown:
        log(f"unknown workloads {sorted(unknown)}; known: {[w for w, _ in WORKLOADS]}")
        return 2
    for wname, fn in WORKLOADS:
        if ONLY and wname not in ONLY:
            continue
        procs, sides = [], []
        try:
            for i, (side, src, mnt, flags) in enumerate(SIDES):
                if mnt:
                    procs.append(start(side, src, mnt, flags, PORT + i, wname))
                    sides.append((side, mnt, PORT + i, os.path.basename(mnt)))
                else:
                    sides.append((side, src, None, None))
            result["timeouts"][wname] = TIMEOUTS.get(wname, TIMEOUT)
            for side, row in run_workload(wname, fn, sides).items():
                result["sides"][side][wname] = row
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=120)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    log(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
