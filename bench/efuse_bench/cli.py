"""bench/run: options, the lock, leftovers of an earlier run, and the run from start to
cleanup."""
from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import __doc__ as DESCRIPTION
from . import common
from .bench import Bench
from .common import BENCH, DAEMONS, GROUPS, LOCK, OPT_IN_SIDES, RUN, SIDES, WORK, BenchError, Interrupted, \
    _on_signal, log
from .machine import write_machine
from .mounts import drop_run_fs, force_unmount, make_run_fs, mounts_under, mount_at, safe_rmtree
from .procs import REG
from .report import git_info


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
        if m.mountpoint == str(RUN) and m.fstype == "ext4":
            continue  # the run's own file system, dropped below
        log(f"unmounting leftover {m.mountpoint}")
        force_unmount(Path(m.mountpoint))
    if DAEMONS.exists() and not REG.daemons:
        DAEMONS.unlink()
    drop_run_fs(keep)


# The workloads of tests/vm/guest_bench.py, which --rows picks from with --vm.
VM_WORKLOADS = ("stat-tree", "cat", "tar", "fio")


def run_vm(args):
    """bench/run --vm: tests/vm/run_vm_tests.py --bench boots the 6.12 guest (building
    efuse.ko as DKMS would) and writes the table under bench/results/."""
    g = git_info()
    out = Path(args.out) if args.out else BENCH / "results" / f"{time.strftime('%Y-%m-%d')}-{g['sha']}-vm"
    efused = args.efused or str(BENCH.parent / "build" / "bin" / "efused")
    if not args.skip_deps:
        subprocess.run(["bash", str(BENCH.parent / "scripts" / "install-deps.sh"), "--vm", "--kmod"],
                       check=True)
    env = dict(os.environ)
    if args.reps:
        env["EFUSE_BENCH_REPS"] = str(args.reps)
    if args.rows:  # the guest's workloads (VM_WORKLOADS)
        env["EFUSE_BENCH_WORKLOADS"] = ",".join(args.rows)
    return subprocess.run([sys.executable, str(BENCH.parent / "tests" / "vm" / "run_vm_tests.py"),
                           "--kernel", "6.12", "--efused", efused, "--bench", str(out)],
                          env=env).returncode


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
    ap = argparse.ArgumentParser(prog="bench/run", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 repetition, 5 s fio runs, smaller files, no full kernel tar (a few minutes)")
    ap.add_argument("--out", help="output directory (default bench/results/<date>-<sha>/)")
    ap.add_argument("--efused-args", default="", help="extra efused flags, e.g. \"--threads 2\"")
    ap.add_argument("--efused", help="efused binary (default build/bin/efused; built if missing)")
    ap.add_argument("--efused-base", metavar="BINARY",
                    help="a second efused binary (e.g. an earlier commit's build/bin/efused), measured "
                    "without telemetry as side efused-base in the tree, cat, fio and tar rows; the "
                    "report adds efused-nobpf ÷ efused-base (before/after in one run)")
    ap.add_argument("--sides", default=None, help=f"comma list of sides: {','.join(SIDES)} (default all "
                    "but efused-base, which --efused-base adds, and libfuse-xattr, passthrough_ll -o xattr "
                    "in the tar rows, asked for by name; "
                    "efused-nobpf = efused without telemetry, in every row: efused ÷ efused-nobpf is the "
                    "telemetry's cost, efused-nobpf ÷ libfuse is efused without telemetry against libfuse)")
    ap.add_argument("--rows", default="", help=f"comma list of row groups: {','.join(GROUPS)} "
                    "(default all; --quick leaves out tar-full)")
    ap.add_argument("--reps", type=int, help="repetitions per cell (default 3, quick 1)")
    ap.add_argument("--runtime", type=int, help="fio runtime in seconds (default 15, quick 5)")
    ap.add_argument("--telemetry-settle", type=float, default=2.0, metavar="SECONDS",
                    help="wait this long after attaching the eBPF telemetry before a timed run (default 2; "
                    "runs started at once measured several %% slower for about a second, see bench/README.md)")
    ap.add_argument("--skip-deps", action="store_true", help="do not run scripts/install-deps.sh")
    ap.add_argument("--keep-work", action="store_true", help="keep bench/work/run data after the run")
    ap.add_argument("--vm", action="store_true",
                    help="the kernel module tier's bench instead: native, efused on stock FUSE and efused "
                    "on efuse.ko inside one Debian 6.12 QEMU guest (tests/vm/guest_bench.py; --out, "
                    "--efused and --reps apply; see bench/README.md)")
    a = ap.parse_args(fixed)
    if a.sides is None:
        a.sides = ",".join(s for s in SIDES if s not in OPT_IN_SIDES or (s == "efused-base" and a.efused_base))
    a.sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    a.rows = [s.strip() for s in a.rows.split(",") if s.strip()]
    if not 0 <= a.telemetry_settle <= 60:
        ap.error("--telemetry-settle must be between 0 and 60 seconds")
    for s in a.sides:
        if s not in SIDES:
            ap.error(f"unknown side {s!r}")
    if "efused-base" in a.sides and not a.efused_base:
        ap.error("side efused-base needs --efused-base BINARY")
    if a.efused_base and "efused-base" not in a.sides:
        ap.error("--efused-base given but side efused-base is not in --sides")
    for r in a.rows:
        if r not in (VM_WORKLOADS if a.vm else GROUPS):
            ap.error(f"unknown row group {r!r}" + (f" (--vm: {', '.join(VM_WORKLOADS)})"
                                                   if a.vm else ""))
    return a


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: must run as root (mounts, drop_caches)")
    if args.vm:
        return run_vm(args)
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
    common.LOGF = open(bench.out / "log.txt", "a")
    log(f"bench: output in {bench.out}")
    rc = 0
    try:
        bench.run_fs = make_run_fs()
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


