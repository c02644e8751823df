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
import io
import os
import random
import shutil
import signal
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import guest  # noqa: E402
import kernels  # noqa: E402

RESULTS = "/out/results.txt"  # on the data disk, written by guest_smoke.py


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
    sample.tar, out/ (results)."""
    d = os.path.join(work, "data")
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("src", "native", "out"):
        os.makedirs(os.path.join(d, sub))
    for sub in ("src", "native"):
        with open(os.path.join(d, sub, "seed.txt"), "w") as f:
            f.write("present before the mount\n")
    sample_tar(os.path.join(d, "sample.tar"))
    return d


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
    disk = os.path.join(kdir, "data.img")
    guest.make_data_disk(data_dir(kdir), disk)
    prep = time.monotonic() - t0
    print(f"[{label}] kernel {k.release}; prepared in {prep:.1f} s; booting "
          f"(timeout {args.timeout} s)", flush=True)
    env = {"efuse_run": os.path.join(HERE, "guest_smoke.py"), "efuse_efused": efused,
           "efuse_profile": profile}
    console = os.path.join(kdir, "console.log")
    res = guest.boot(k, initramfs, disk, env, args.timeout, console,
                     echo=lambda line: print(f"[{label}] {line}", flush=True), accel=args.accel)
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
    where = f"(console: {console})"
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
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("EFUSE_VM_TIMEOUT", 600)),
                    help="seconds before a guest is killed and counted as failed (default 600)")
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"],
                    default=os.environ.get("EFUSE_VM_ACCEL", "auto"),
                    help="QEMU accelerator (default auto: KVM when /dev/kvm works, else TCG)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (initramfs, data disks, console logs)")
    ap.add_argument("--work-dir", help="work directory (default: a new one under /var/tmp)")
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
    tally = Tally()
    start = time.monotonic()
    try:
        for profile in (["6.12", "6.1"] if args.kernel == "all" else [args.kernel]):
            run_kernel(profile, args, work, efused, tally)
    except Interrupted as e:
        tally.fail("run", f"interrupted ({e})")
    finally:
        if args.keep or tally.failed:
            print(f"work directory kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    for t in tally.timings:
        print(f"time {t}")
    print(f"time total {time.monotonic() - start:.1f} s")
    if tally.failed:
        print("failed: " + ", ".join(tally.failed))
    print(f"{tally.passed} passed, {len(tally.failed)} failed", flush=True)
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
