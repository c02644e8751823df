"""The Bench: sides, the group framework (run_group, timed), setup (builds, wait floor, tar
archives). Row groups come from Rows and FioRows, output from Report."""
from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import resource
import shlex
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Callable

from .common import BENCH, BIN, COUNTED_GROUPS, COUNTED_SIDES, EXAMPLES, GROUPS, GiB, KiB, \
    LINUX_TAR, LINUX_TAR_SUBSET, LINUX_TXZ, MiB, QUICK_GROUPS, REPO, RUN, SIDES, \
    SUBSET_TAR_DIRS, BenchError, log, tail
from .fio import FioRows
from .model import Ctx, Metric, Phase
from .mounts import retire
from .procs import build_c
from .report import Report, describe_counts, fmt
from .rows import Rows
from .sides import SIDE_CLASSES, EfusedSide, Side
from .telemetry import Telemetry, counter_deltas, counters_of, describe_pid, telemetry_copies


class Bench(Rows, FioRows, Report):
    def __init__(self, args):
        self.args = args
        self.run_fs = ""  # how the run's file system was made (mounts.make_run_fs)
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
        self.efused_base_bin = Path(args.efused_base) if getattr(args, "efused_base", None) else None
        self.efused_base_sha256 = "n/a"
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
            # adaptive I/O path rows: hot (files, size, passes), cold (files, size)
            "io_hot": (200, 16 * KiB, 10 if self.quick else 50),
            "io_cold": (4, 16 * MiB) if self.quick else (8, 64 * MiB),
            "skew_stats": 2000 if self.quick else 20000,  # stats timed in the queue-skew row
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
        attached = (side.telemetry or bool(phase.counted)) and \
            self.telemetry.start(exact=bool(phase.counted))
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
            if side.name in ("libfuse", "libfuse-xattr"):
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
        self.efused_src = self.efused_bin
        self.efused_bin, self.efused_sha256 = private_copy(self.efused_bin, "efused")
        if "efused-base" in self.side_names:
            src = Path(self.args.efused_base)
            try:
                self.efused_base_bin, self.efused_base_sha256 = private_copy(src, "efused-base")
            except OSError as e:  # only that side goes without
                for side in self.sides:
                    if side.name == "efused-base":
                        side.unavailable = f"--efused-base {src}: {e.strerror or e}"
                log(f"efused-base unavailable: {e}")
        if "efuse-run" in self.side_names:
            try:
                self.copy_intercept()
            except BenchError as e:  # only that side goes without
                for side in self.sides:
                    if side.name == "efuse-run":
                        side.unavailable = " ".join(str(e).split())
                log(f"efuse-run unavailable: {e}")
        try:
            r = subprocess.run([str(self.efused_bin), "--version"], capture_output=True, text=True,
                               timeout=5)
            v = (r.stdout + r.stderr).strip().splitlines()
            self.efused_version = v[0] if r.returncode == 0 and v else f"unknown (--version exit {r.returncode})"
        except (OSError, subprocess.TimeoutExpired) as e:
            self.efused_version = f"unknown ({e})"

    def copy_intercept(self):
        """Private copies of libefuse_intercept.so and efuse-run, beside efused's (the build's
        are in build/lib/ and build/bin/ next to the efused it came from)."""
        build = self.efused_src.resolve().parent.parent
        lib, script = build / "lib" / "libefuse_intercept.so", build / "bin" / "efuse-run"
        if not lib.exists() or not script.exists():
            raise BenchError(f"{lib} or {script} missing: cmake --build {build} --target efuse_run")
        for src, name in ((lib, "libefuse_intercept.so"), (script, "efuse-run")):
            tmp = BIN / f"{name}.tmp"
            tmp.write_bytes(src.read_bytes())
            tmp.chmod(0o755)
            tmp.replace(BIN / name)

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


def private_copy(src: Path, name: str) -> tuple[Path, str]:
    """Copy an efused binary to bench/work/bin/NAME (atomically) and return the copy and the
    binary's sha256: the bench runs the copy, so a rebuild during the run changes nothing."""
    data = src.read_bytes()
    copy, tmp = BIN / name, BIN / f"{name}.tmp"
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(copy)
    return copy, hashlib.sha256(data).hexdigest()
