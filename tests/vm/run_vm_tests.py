#!/usr/bin/env python3
"""efused in QEMU guests booting Debian's own kernels (run through scripts/test-vm.sh).

For each kernel (6.12, 6.1): fetch and unpack it (cached), build an initramfs, make a data
disk, boot the guest, let tests/vm/guest_smoke.py run efused's smoke tests on the stock
kernel FUSE inside it, read the results back from the disk. Prints one line per check
(`PASS 6.12 file_ops`), then `N passed, N failed`; exits 1 when anything failed (a guest
that hangs past the timeout, fails to boot or reports nothing is a failure too).
See tests/vm/README.md.
"""
import argparse
import glob
import io
import json
import lzma
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
KMOD = os.path.join(REPO, "kmod")
sys.path.insert(0, HERE)

import guest  # noqa: E402
import kernels  # noqa: E402

RESULTS = "/out/results.txt"  # on the data disk, written by guest_smoke.py
KMOD_PROFILES = ("6.12",)  # kernels kmod/ builds efuse.ko for (loaded in their guest)
KMOD_REFUSED = ("6.1",)  # kernels kmod/build.sh must refuse: the series does not apply


class Interrupted(BaseException):
    pass


def on_signal(signum, frame):
    raise Interrupted(f"signal {signum}")


def sample_tar(path):
    """A small deterministic tar for the extract-and-compare check: part of this
    repository's sources plus entries git cannot express (symlinks, a hard link, odd modes,
    an empty directory, a 1 MiB file)."""
    rnd = random.Random(19)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for top in ("service/src", "config"):
            tar.add(os.path.join(REPO, top), arcname="tree/" + top,
                    filter=lambda ti: None if "__pycache__" in ti.name else ti)

        def add(name, data=b"", **kw):
            ti = tarfile.TarInfo("tree/extra/" + name)
            ti.mtime = 1700000000
            for k, v in kw.items():
                setattr(ti, k, v)
            ti.size = len(data) if ti.type == tarfile.REGTYPE else 0
            tar.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)

        add("empty", type=tarfile.DIRTYPE, mode=0o755)
        add("private", b"secret\n", mode=0o600)
        add("script.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
        add("big.bin", rnd.randbytes(1 << 20), mode=0o644)
        add("link-to-big", type=tarfile.SYMTYPE, linkname="big.bin")
        add("dangling", type=tarfile.SYMTYPE, linkname="no/such/file")
        add("hard-private", type=tarfile.LNKTYPE, linkname="tree/extra/private")


def data_dir(work):
    """The data disk's tree: src/ (efused's source directory), native/ (its native twin),
    ksrc/ and knative/ (the same for efused on the kernel module tier), sample.tar, out/
    (results)."""
    d = os.path.join(work, "data")
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("src", "native", "ksrc", "knative", "out"):
        os.makedirs(os.path.join(d, sub))
    for sub in ("src", "native", "ksrc", "knative"):
        with open(os.path.join(d, sub, "seed.txt"), "w") as f:
            f.write("present before the mount\n")
    sample_tar(os.path.join(d, "sample.tar"))
    return d


BENCH_TREE = 10000  # entries of the stat-tree workload's tree, per side


def bench_data(d):
    """What tests/vm/guest_bench.py needs on the data disk, made here on the host: per side
    (bench-native, bench-stock, bench-module) a BENCH_TREE-entry tree (100 directories of
    99 files), a 4 KiB file for cat; and bench.tar, the tar workload's input (service/src of
    this repository: a few hundred small sources in a few directories)."""
    for side in ("bench-native", "bench-stock", "bench-module"):
        root = os.path.join(d, side)
        for i in range(BENCH_TREE // 100):
            sub = os.path.join(root, "tree", f"d{i:03}")
            os.makedirs(sub)
            for j in range(99):
                with open(os.path.join(sub, f"f{j:02}"), "w") as f:
                    f.write(f"{i} {j}\n")
        with open(os.path.join(root, "small.txt"), "wb") as f:
            f.write(bytes(range(256)) * 16)
    with tarfile.open(os.path.join(d, "bench.tar"), "w") as tar:
        tar.add(os.path.join(REPO, "service", "src"), arcname="src",
                filter=lambda ti: None if "__pycache__" in ti.name else ti)


def bench_table(result):
    """The markdown table of a guest_bench.py result."""
    sides = result["sides"]
    native = sides["native"]
    t = ["| workload | side | median s | x native | " + "requests to efused per op | "
         "answered in the kernel per op | share in the kernel |",
         "|---|---|---:|---:|---|---|---:|"]
    fmt = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.items() if v >= 0.005) or "0"  # noqa
    for w in ("stat-tree", "cat", "tar", "fio"):
        if w not in native:  # not run (EFUSE_BENCH_WORKLOADS)
            continue
        for side in ("native", "stock", "module"):
            row = sides[side][w]
            ratio = row["seconds"] / native[w]["seconds"] if native[w]["seconds"] else 0
            if w == "fio":  # time-based: compare operations per second instead
                ratio = native[w]["iops"] / row["iops"] if row["iops"] else 0
            up, kern = row.get("upcalls_per_op"), row.get("kernel_per_op")
            if up is None:
                cells = ["", "", ""]
            else:
                su, sk = sum(up.values()), sum(kern.values())
                share = f"{100 * sk / (su + sk):.0f} %" if su + sk else "-"
                cells = [fmt(up), fmt(kern), share]
            secs = f"{row['seconds']:.3f}" + (f" ({row['iops']:.0f} IOPS)" if w == "fio" else "")
            if w == "fio" and row.get("all_iops"):  # every round's, for the spread
                secs += " [" + ", ".join(f"{x:.0f}" for x in row["all_iops"]) + "]"
            tmo = result.get("timeouts", {}).get(w)
            label = f"{w} ({row['ops']} ops" + (f", timeouts {tmo} s)" if tmo else ")")
            t.append(f"| {label} | {side} | {secs} | {ratio:.2f} | " +
                     " | ".join(cells) + " |")
    return "\n".join(t)


def write_bench(result, out, k, timing):
    """bench/results/DIR: results.json, results.md (the table), machine.md."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    sha = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(f"# efused on stock FUSE and on efuse.ko, inside one guest\n\n"
                f"`bench/run --vm` at {sha}: guest kernel {result['kernel']} under QEMU "
                f"({timing}), {result['cpus']} vCPUs; every side on the same guest and data "
                f"disk; per workload a warm-up pass per side, then {result['reps']} rounds running "
                f"the sides one after the other (median). stock = efused `--kernel-module off`, "
                f"module = efused `--kernel-module on` with the shipped handlers, both "
                f"`--telemetry off` and started afresh per workload with `--entry-timeout T "
                f"--attr-timeout T`, T the workload's timeouts in the table (stat-tree waits T + 1 s "
                f"before each timed pass, so the kernel revalidates every entry). x native: time ÷ "
                f"native time (fio: native IOPS ÷ IOPS, from fio's own runtime). Requests per op: efuse_requests_total (reached efused) and "
                f"efuse_kernel_answered_total (answered by the handlers) over the timed "
                f"parts, by opcode.\n\n{bench_table(result)}\n")
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    with open(os.path.join(out, "machine.md"), "w") as f:
        f.write(f"# Machine\n\n- host: {os.uname().release}, {os.cpu_count()} CPUs\n"
                f"- guest: Debian kernel {k.release} ({result['kernel']}), QEMU {timing}, "
                f"`-m 4G -smp 2`\n- data: ext4 image made on the host (mkfs.ext4 -d)\n\n"
                f"```\n{lscpu}```\n")


def run_bench(args, work, efused):
    """bench/run --vm: tests/vm/guest_bench.py in the 6.12 guest; the table goes to
    args.bench. Returns an exit status."""
    k = kernels.prepare("6.12", log=lambda m: print(f"[bench] {m}", flush=True))
    kdir = os.path.join(work, "bench")
    os.makedirs(kdir, exist_ok=True)
    initramfs = guest.build_initramfs(k, kdir)
    d = os.path.join(kdir, "data")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "out"))
    bench_data(d)
    ko, why = kmod_build(k.release, os.path.join(kdir, "kmod"))
    if ko is None:
        print(f"bench: efuse.ko did not build: {why}", file=sys.stderr)
        return 1
    opener = lzma.open if ko.endswith(".xz") else open
    with opener(ko, "rb") as f, open(os.path.join(d, "efuse.ko"), "wb") as dst:
        shutil.copyfileobj(f, dst)
    disk = os.path.join(kdir, "data.img")
    guest.make_data_disk(d, disk, size_mb=1024, inodes=131072)
    env = {"efuse_run": os.path.join(HERE, "guest_bench.py"), "efuse_efused": efused,
           "efuse_profile": "6.12", "efuse_kmod": 1,
           "efuse_bench_reps": os.environ.get("EFUSE_BENCH_REPS", "3"),
           "efuse_bench_cats": os.environ.get("EFUSE_BENCH_CATS", "2000"),
           "efuse_bench_workloads": os.environ.get("EFUSE_BENCH_WORKLOADS", ""),
           "efuse_bench_stat_timeout": os.environ.get("EFUSE_BENCH_STAT_TIMEOUT", "1"),
           "efuse_keep": ":".join(sorted({REPO, os.path.dirname(efused)}))}
    res = guest.boot(k, initramfs, disk, env, args.timeout, os.path.join(kdir, "console.log"),
                     echo=lambda line: print(f"[bench] {line}", flush=True), accel=args.accel)
    text = guest.read_from_disk(disk, "/out/bench.json")
    if not text:
        print(f"bench: no results (guest exit {res.status}, timed out {res.timed_out})",
              file=sys.stderr)
        return 1
    write_bench(json.loads(text), args.bench, k, res.accel)
    print(f"bench: wrote {args.bench}", flush=True)
    return 0


def kmod_build(release, out):
    """Build efuse.ko for `release` the way DKMS does on a host: kmod/build.sh fetches and
    unpacks the kernel's headers and fs/fuse (cached), then `dkms add` and `dkms build`, with
    private source and DKMS trees under `out` (nothing in /usr/src or /var/lib/dkms), run
    kmod/dkms.conf against them. Returns (path of efuse.ko or None, what went wrong)."""
    r = subprocess.run(["bash", os.path.join(KMOD, "build.sh"), "--release", release,
                        "--print-inputs"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        return None, f"kmod/build.sh --print-inputs exited {r.returncode}: {r.stderr[-1500:]}"
    kdir, fuse_src = r.stdout.strip().splitlines()[-1].split("\t")
    with open(os.path.join(KMOD, "dkms.conf")) as f:
        version = re.search(r'^PACKAGE_VERSION="([^"]+)"', f.read(), re.M).group(1)
    srctree, dkmstree = os.path.join(out, "src"), os.path.join(out, "dkms")
    shutil.rmtree(out, ignore_errors=True)
    pkg = os.path.join(srctree, f"efuse-{version}")
    shutil.copytree(os.path.join(KMOD, "patches"), os.path.join(pkg, "patches"))
    for f in ("build.sh", "dkms.conf"):
        shutil.copy2(os.path.join(KMOD, f), pkg)
    os.makedirs(dkmstree)
    trees = ["-m", "efuse", "-v", version, "--sourcetree", srctree, "--dkmstree", dkmstree]
    env = dict(os.environ, EFUSE_LINUX_SOURCE=fuse_src)
    for cmd in (["dkms", "add", *trees],
                ["dkms", "build", *trees, "-k", release, "--kernelsourcedir", kdir]):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=env)
        if r.returncode != 0:
            log = os.path.join(dkmstree, "efuse", version, "build", "make.log")
            text = open(log, errors="replace").read() if os.path.exists(log) else ""
            return None, f"{' '.join(cmd[:2])} exited {r.returncode}: {r.stdout[-800:]}\n" \
                         f"make.log: {text[-1500:]}"
    built = glob.glob(os.path.join(dkmstree, "efuse", version, release, "*", "module",
                                   "efuse.ko*"))
    if not built:
        return None, f"dkms build left no efuse.ko in {dkmstree}"
    return built[0], ""


def run_kernel(profile, args, work, efused, tally):
    label = profile
    t0 = time.monotonic()
    try:
        k = kernels.prepare(profile, log=lambda m: print(f"[{label}] {m}", flush=True))
    except Exception as e:  # no kernel, no guest: that is a failure, not a skip
        tally.fail(f"{label} kernel", f"preparing the kernel failed: {e}")
        return
    kdir = os.path.join(work, profile)
    os.makedirs(kdir, exist_ok=True)
    initramfs = guest.build_initramfs(k, kdir)
    data = data_dir(kdir)
    kmod = profile in KMOD_PROFILES and not args.no_kmod
    if profile in KMOD_REFUSED and not args.no_kmod:
        ko, why = kmod_build(k.release, os.path.join(kdir, "kmod"))
        if ko is None and "refusing to build for this kernel" in why:
            tally.ok(f"{label} kmod_refused")
        else:
            tally.fail(f"{label} kmod_refused", f"not refused: built {ko}" if ko else why)
    if kmod:
        t = time.monotonic()
        ko, why = kmod_build(k.release, os.path.join(kdir, "kmod"))
        if ko:
            opener = lzma.open if ko.endswith(".xz") else open
            with opener(ko, "rb") as f, open(os.path.join(data, "efuse.ko"), "wb") as dst:
                shutil.copyfileobj(f, dst)
            tally.ok(f"{label} kmod_build")
            tally.timings.append(f"{label}: efuse.ko by dkms build {time.monotonic() - t:.1f} s")
        else:
            tally.fail(f"{label} kmod_build", why)
            kmod = False
    disk = os.path.join(kdir, "data.img")
    guest.make_data_disk(data, disk)
    prep = time.monotonic() - t0
    print(f"[{label}] kernel {k.release}; prepared in {prep:.1f} s; booting "
          f"(timeout {args.timeout} s)", flush=True)
    env = {"efuse_run": os.path.join(HERE, "guest_smoke.py"), "efuse_efused": efused,
           "efuse_profile": profile, "efuse_kmod": int(kmod),
           "efuse_keep": ":".join(sorted({REPO, os.path.dirname(efused)}))}
    if os.environ.get("EFUSE_VM_ONLY"):  # e.g. "swap": only those checks (iterating on them)
        env["efuse_only"] = os.environ["EFUSE_VM_ONLY"]
    console = os.path.join(kdir, "console.log")
    res = guest.boot(k, initramfs, disk, env, args.timeout, console,
                     echo=lambda line: print(f"[{label}] {line}", flush=True), accel=args.accel)
    if (res.seconds_to_init is None and res.status is None and not res.timed_out
            and not res.init_failed):
        # The guest kernel died before init ran (nothing of efuse had run yet): once, a 6.12
        # guest under TCG panicked 3 s into boot in sched_clock_idle_wakeup_event. Boot it
        # once more on a fresh data disk; a second failure is reported as usual.
        tally.timings.append(f"{label}: the first boot ended before init (QEMU exit "
                             f"{res.qemu_status}); booted again")
        print(f"[{label}] the guest ended before init ran; booting once more", flush=True)
        guest.make_data_disk(data, disk)
        res = guest.boot(k, initramfs, disk, env, args.timeout, console,
                         echo=lambda line: print(f"[{label}] {line}", flush=True),
                         accel=args.accel)
    timing = (f"boot to test {res.seconds_to_init:.1f} s, " if res.seconds_to_init else "") + \
        f"whole guest {res.seconds:.1f} s ({res.accel})"
    print(f"[{label}] {timing}", flush=True)
    tally.timings.append(f"{label}: prepare {prep:.1f} s, {timing}")

    results = guest.read_from_disk(disk, RESULTS)
    seen = failed = 0
    for line in (results or "").splitlines():
        verdict, _, rest = line.partition(" ")
        name, _, why = rest.partition(": ")
        if verdict == "PASS":
            tally.ok(f"{label} {name}")
            seen += 1
        elif verdict == "FAIL":
            tally.fail(f"{label} {name}", why)
            seen += 1
            failed += 1
    where = "(console above" + (f", and in {console})" if args.keep else ")")
    if res.timed_out:
        tally.fail(f"{label} guest", f"killed after {args.timeout} s without powering off {where}")
    elif res.init_failed:
        tally.fail(f"{label} guest", f"{res.init_failed} {where}")
    elif res.status is None:
        tally.fail(f"{label} guest", f"the guest stopped without reporting an exit status {where}")
    elif seen == 0:
        tally.fail(f"{label} guest", f"no results on the data disk (exit status {res.status}) {where}")
    elif res.status != 0 and failed == 0:
        tally.fail(f"{label} guest", f"guest_smoke.py exited {res.status} with no failed check {where}")


class Tally:
    def __init__(self):
        self.passed, self.failed, self.timings = 0, [], []

    def ok(self, name):
        self.passed += 1
        print(f"PASS {name}", flush=True)

    def fail(self, name, why=""):
        self.failed.append(name)
        print(f"FAIL {name}" + (f": {why}" if why else ""), flush=True)


def main():
    ap = argparse.ArgumentParser(
        description="Boot Debian kernels in QEMU and run efused's smoke tests inside.")
    ap.add_argument("--kernel", choices=["6.12", "6.1", "all"], default="all",
                    help="which guest kernel(s) to boot (default: all)")
    ap.add_argument("--efused", default=os.path.join(REPO, "build", "bin", "efused"),
                    help="efused binary, run inside the guest from the host's / over 9p")
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("EFUSE_VM_TIMEOUT", 1500)),
                    help="seconds before a guest is killed and counted as failed (default 1500)")
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"],
                    default=os.environ.get("EFUSE_VM_ACCEL", "auto"),
                    help="QEMU accelerator (default auto: KVM when /dev/kvm works, else TCG)")
    ap.add_argument("--no-kmod", action="store_true",
                    help="do not build kmod/'s efuse.ko nor load it in the 6.12 guest")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (initramfs, data disks, console logs)")
    ap.add_argument("--work-dir", help="work directory (default: a new one under /var/tmp)")
    ap.add_argument("--bench", metavar="DIR",
                    help="instead of the tests, run tests/vm/guest_bench.py in the 6.12 guest "
                         "and write its table to DIR (bench/run --vm)")
    ap.add_argument("--check-args", action="store_true",
                    help=argparse.SUPPRESS)  # scripts/test-vm.sh: validate, do nothing
    args = ap.parse_args()
    if args.check_args:
        return 0

    efused = os.path.abspath(args.efused)
    if not os.access(efused, os.X_OK):
        print(f"test-vm: {efused} is not an executable (build first)", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    work = args.work_dir or tempfile.mkdtemp(prefix="efuse-vm-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    if args.bench:
        try:
            return run_bench(args, work, efused)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    tally = Tally()
    start = time.monotonic()
    try:
        for profile in (["6.12", "6.1"] if args.kernel == "all" else [args.kernel]):
            try:
                run_kernel(profile, args, work, efused, tally)
            except Exception:  # a broken setup step fails this kernel, not the whole run
                tally.fail(f"{profile} setup", traceback.format_exc())
    except Interrupted as e:
        tally.fail("run", f"interrupted ({e})")
    finally:
        if args.keep:
            print(f"work directory kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
            if tally.failed:
                print("(the console is above; --keep keeps the work directory: initramfs, "
                      "data disks, console logs)", flush=True)
    for t in tally.timings:
        print(f"time {t}")
    print(f"time total {time.monotonic() - start:.1f} s")
    if tally.failed:
        print("failed: " + ", ".join(tally.failed))
    print(f"{tally.passed} passed, {len(tally.failed)} failed", flush=True)
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
