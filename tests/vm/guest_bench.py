#!/usr/bin/env python3
"""Issue 19 point 7's bench, run INSIDE the 6.12 guest (bench/run --vm; standard library
only). Three sides on the same guest and the same data: native ext4 (the data disk), efused
on the kernel's own FUSE (`--kernel-module off`), efused on efuse.ko (`--kernel-module on`,
the shipped handlers attached). Every side has its own copy of the data, made on the host
(tests/vm/run_vm_tests.py, bench_data()).

Workloads, each timed `REPS` times (median), after one untimed warm-up pass:
  stat-tree   lstat of every entry of a 10,000-entry tree (warm: the pass before loaded it)
  cat         /bin/cat of one 4 KiB file, CATS times
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
CATS = int(os.environ.get("efuse_bench_cats", "100"))
FIO_SECONDS = 5
SIDES = (  # name, data directory, mountpoint (None: native), efused flags
    ("native", f"{DATA}/bench-native", None, None),
    ("stock", f"{DATA}/bench-stock", "/mnt/bstock", ["--kernel-module", "off"]),
    ("module", f"{DATA}/bench-module", "/mnt/bmodule", ["--kernel-module", "on"]),
)
PORT = 19590


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
    snap()
    t = time.monotonic()
    for p in paths:
        os.lstat(p)
    seconds = time.monotonic() - t
    snap()
    return len(paths), seconds


def cat(root, snap):
    snap()
    t = time.monotonic()
    for _ in range(CATS):
        subprocess.run(["cat", f"{root}/small.txt"], stdout=subprocess.DEVNULL, check=True)
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
    t = time.monotonic()
    r = subprocess.run(["fio", "--name=mix", f"--filename={root}/fio.file", "--size=16M",
                        "--bs=4k", "--rw=randrw", "--rwmixread=70", "--ioengine=psync",
                        f"--runtime={FIO_SECONDS}", "--time_based", "--invalidate=0",
                        "--output-format=json"], capture_output=True, text=True, check=True)
    seconds = time.monotonic() - t
    snap()
    job = json.loads(r.stdout)["jobs"][0]
    fio.iops = job["read"]["iops"] + job["write"]["iops"]
    return int(job["read"]["total_ios"] + job["write"]["total_ios"]), seconds


WORKLOADS = (("stat-tree", stat_tree), ("cat", cat), ("tar", tar), ("fio", fio))


def start(side, src, mnt, flags, port):
    os.makedirs(mnt, exist_ok=True)
    logf = open(f"/tmp/bench-{side}.log", "wb")
    p = subprocess.Popen([EFUSED, "--mount", f"{src}:{mnt}", "--metrics", f"127.0.0.1:{port}",
                          "--telemetry", "off", *flags], stdout=logf, stderr=logf,
                         stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while "efused: ready" not in open(f"/tmp/bench-{side}.log", errors="replace").read():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(open(f"/tmp/bench-{side}.log", errors="replace").read()[-1500:])
        time.sleep(0.2)
    return p


def run_side(side, src, mnt, flags, port):
    root = mnt or src
    proc = start(side, src, mnt, flags, port) if mnt else None
    name = os.path.basename(mnt) if mnt else None
    rows = {}
    try:
        for wname, fn in WORKLOADS:
            fn(root, lambda: None)  # warm-up: caches (and maps) as a warm run finds them
            snaps = []
            snap = (lambda: snaps.append(requests(port, name))) if proc else (lambda: None)
            times, ops, total_ops = [], 0, 0
            served, kernel = {}, {}
            for _ in range(REPS):
                ops, seconds = fn(root, snap)
                times.append(seconds)
                total_ops += ops
                if proc:
                    (b_served, b_kernel), (a_served, a_kernel) = snaps[-2], snaps[-1]
                    for acc, d in ((served, delta(a_served, b_served)),
                                   (kernel, delta(a_kernel, b_kernel))):
                        for k, v in d.items():
                            acc[k] = acc.get(k, 0) + v
            row = {"seconds": statistics.median(times), "all_seconds": times, "ops": ops}
            if wname == "fio":
                row["iops"] = fio.iops
            if proc:
                row["upcalls_per_op"] = {k: v / total_ops for k, v in sorted(served.items())}
                row["kernel_per_op"] = {k: v / total_ops for k, v in sorted(kernel.items())}
            rows[wname] = row
            log(f"{side} {wname}: {row['seconds']:.3f} s, {ops} ops")
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    return rows


def main():
    if os.environ.get("efuse_kmod") != "1":
        log("efuse.ko was not built for this guest")
        return 1
    subprocess.run(["insmod", f"{DATA}/efuse.ko"], check=True, capture_output=True)
    result = {"kernel": os.uname().release, "reps": REPS, "cats": CATS,
              "fio_seconds": FIO_SECONDS, "cpus": os.cpu_count(), "sides": {}}
    for i, (side, src, mnt, flags) in enumerate(SIDES):
        result["sides"][side] = run_side(side, src, mnt, flags, PORT + i)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    log(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
