"""The row groups other than fio (tree, cat, tar-subset, tar-full), counted runs, and the
order the groups run in."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from .common import BENCH, COUNTED_GROUPS, COUNTED_SIDES, ENV, KiB, LINUX_TAR, LINUX_TAR_SUBSET, \
    MiB, RUN, SUBSET_TAR_DIRS, BenchError
from .model import Ctx, Phase
from .mounts import retire
from .procs import drop_caches, run, sync


class Rows:
    """Bench's row groups (a mixin of Bench); group_fio comes from FioRows."""

    def group_tree(self):
        nd, nf, walks = self.cfg["tree_dirs"], self.cfg["tree_files"], self.cfg["tree_walks"]
        n = nd * nf + nd + 1
        row = f"tree {nd} dirs x {nf} files ({n:,} entries)"
        mk = lambda k, r, l: self.declare(f"tree.{k}", "tree", r, l, "s", "lower")  # noqa: E731
        # A warm walk takes milliseconds, about what one scheduling hiccup costs here: each
        # warm repetition times `walks` walks back to back and reports the time per walk.
        per = f"time per walk ({walks} walks)"
        fw = mk("find.warm", f"find, warm: {row}", per)
        sw = mk("stat.warm", f"find -printf (lstat each), warm: {row}", per)
        fc = mk("find.cold", f"find, cold: {row}", "time")
        sc = mk("stat.cold", f"find -printf (lstat each), cold: {row}", "time")
        metrics = [fw, sw, fc, sc]
        pad = len(str(max(nd, nf) - 1))
        fmt_ = "%i %s %m %n %T@ %p\n"

        def prepare(ctx):
            t = ctx.data / "tree"
            run(f"mkdir {shlex.quote(str(t))} && cd {shlex.quote(str(t))} && "
                f"for d in $(seq -f %0{pad}.0f 0 {nd - 1}); do mkdir d$d && "
                f"(cd d$d && touch $(seq -f f%0{pad}.0f 0 {nf - 1})) || exit 1; done",
                timeout=900, what="create tree")
            cnt = run(["find", t], stdout=subprocess.PIPE, timeout=600)[1].count(b"\n")
            if cnt != n:
                raise BenchError(f"tree has {cnt} entries, expected {n}")
            sync()

        def find(ctx, warm, stat):
            argv = ctx.side.prefix() + ["find", ctx.data / "tree"] + \
                (["-printf", fmt_] if stat else [])
            if not warm:
                return run(argv, timeout=900)[0]
            run(argv, timeout=900)
            loop = f'for i in $(seq {walks}); do "$@" || exit; done'
            return run(["bash", "-c", loop, "walk"] + argv, timeout=900,
                       what=f"{walks} x {shlex.join(map(str, argv))}")[0] / walks

        phases = [
            Phase([fw], lambda c, r: {fw.key: find(c, True, False)}),
            Phase([sw], lambda c, r: {sw.key: find(c, True, True)}),
            Phase([fc], lambda c, r: {fc.key: find(c, False, False)}, lambda c: drop_caches()),
            Phase([sc], lambda c, r: {sc.key: find(c, False, True)}, lambda c: drop_caches()),
        ]
        self.run_group("tree", metrics, prepare, phases)

    def group_cat(self):
        count, batch, size = self.cfg["cat_count"], self.cfg["cat_batch"], self.cfg["cat_size"]
        m = self.declare("cat.warm", "cat",
                         f"cat one {size // KiB} KiB file x {count:,} (xargs -n {batch} cat), warm",
                         "time", "s", "lower")
        lists = RUN / "lists"

        def prepare(ctx):
            f = ctx.data / "small.dat"
            run(["dd", "if=/dev/urandom", f"of={f}", f"bs={size}", "count=1", "status=none"],
                timeout=60)
            lists.mkdir(parents=True, exist_ok=True)
            (lists / f"cat-{ctx.side.name}.txt").write_text(f"{f}\n" * count)
            got = run(["cat", f], stdout=subprocess.PIPE, timeout=60)[1]
            if len(got) != size:
                raise BenchError(f"read back {len(got)} bytes, expected {size}")
            sync()

        def measure(ctx, rep):
            f = ctx.data / "small.dat"
            run(ctx.side.prefix() + ["cat", f], timeout=60)  # warm-up
            owner = getattr(ctx.side, "shared", None) or ctx.side  # whose data this is
            lst = lists / f"cat-{owner.name}.txt"
            return {m.key: run(ctx.side.prefix() + ["xargs", "-d", "\\n", "-n", str(batch), "-a",
                                                    lst, "cat"], timeout=1800)[0],
                    "_extra": {"ios": count}}

        phases = [Phase([m], measure)]
        key = self.counted("cat", "warm", m.row, "files")
        if key:
            phases.append(Phase([], measure, counted=key))
        self.run_group("cat", [m], prepare, phases)

    def group_tar(self, gid: str, path: Path, name: str):
        n = self.tar_entries[str(path)]
        row = f"tar -xf {name} ({n:,} entries, {path.stat().st_size / 1e9:.2f} GB)"
        mt = self.declare(f"{gid}.extract", gid, row, "time excl. sync", "s", "lower")
        ms = self.declare(f"{gid}.extract_sync", gid, row, "time incl. sync", "s", "lower")

        def before(ctx):
            # A fresh mount (and fresh source directory) for every extraction: the kernel then
            # holds no inodes of earlier extractions, and every side starts from the same state.
            self.restart(ctx, gid)
            run(["cat", path], timeout=600)  # keep the archive in the page cache
            sync()

        def measure(ctx, rep):
            dest = ctx.data / "x"
            run(["mkdir", dest], timeout=60)
            t1 = run(["tar", "-xf", path, "-C", dest], timeout=7200)[0]
            t2 = run(["sync"], timeout=3600)[0]
            return {mt.key: t1, ms.key: t1 + t2, "_extra": {"ios": n}}

        phases = [Phase([mt, ms], measure, before)]
        key = self.counted(gid, "extract", row, "entries")
        if key:
            phases.append(Phase([], measure, before, counted=key))
        self.run_group(gid, [mt, ms], None, phases)

    def group_io(self, gid: str):
        """The adaptive I/O path rows: io-hot re-reads small files (warm), io-cold reads large
        files once after dropping caches, io-mix does both at the same time (cold)."""
        hot_n, hot_size, passes = self.cfg["io_hot"]
        cold_n, cold_size = self.cfg["io_cold"]
        hot_desc = f"{hot_n} x {hot_size // KiB} KiB files re-read {passes} times"
        cold_desc = f"one pass over {cold_n} x {cold_size // MiB} MiB files"
        row = {"io-hot": f"I/O path, page cache wins: {hot_desc} (xargs cat), warm",
               "io-cold": f"I/O path, passthrough wins: {cold_desc} (cat), cold",
               "io-mix": f"I/O path, mixed: {hot_desc} while {cold_desc}, cold"}[gid]
        m = self.declare(f"{gid}.time", gid, row, "time", "s", "lower")
        lists = RUN / "lists"

        def hot_list(ctx):
            owner = getattr(ctx.side, "shared", None) or ctx.side
            return lists / f"{gid}-{owner.name}.txt"

        def prepare(ctx):
            lists.mkdir(parents=True, exist_ok=True)
            paths = []
            if gid in ("io-hot", "io-mix"):
                (ctx.data / "hot").mkdir()
                for i in range(hot_n):
                    p = ctx.data / "hot" / f"h{i:04d}"
                    p.write_bytes(os.urandom(hot_size))
                    paths.append(str(p))
                hot_list(ctx).write_text("\n".join(paths * passes) + "\n")
            if gid in ("io-cold", "io-mix"):
                (ctx.data / "cold").mkdir()
                for i in range(cold_n):
                    run(["dd", "if=/dev/urandom", f"of={ctx.data / 'cold' / f'c{i:02d}'}",
                         f"bs={MiB}", f"count={cold_size // MiB}", "status=none"], timeout=600)
            sync()

        def before(ctx):
            if gid == "io-hot":
                run(["xargs", "-d", "\\n", "-n", "200", "-a", hot_list(ctx), "cat"],
                    timeout=1800)  # warm: one pass first
            else:
                drop_caches()

        def measure(ctx, rep):
            hot = shlex.join(["xargs", "-d", "\\n", "-n", "200", "-a", str(hot_list(ctx)), "cat"])
            cold = f"cat {shlex.quote(str(ctx.data / 'cold'))}/c* >/dev/null"
            cmd = {"io-hot": f"{hot} >/dev/null", "io-cold": cold,
                   "io-mix": f"{hot} >/dev/null & {cold}; s=$?; wait $! || exit; exit $s"}[gid]
            return {m.key: run(cmd, timeout=3600, what=f"{gid} on {ctx.side.name}")[0]}

        self.run_group(gid, [m], prepare, [Phase([m], measure, before)])

    def group_skew(self):
        """queue-skew: bench/fsync_loop.py writes and fsyncs one file in a loop while
        bench/stat_latency.py times stat() of absent names (each a LOOKUP), both pinned to
        CPU 0, so that with FUSE over io_uring their requests share one queue."""
        n = self.cfg["skew_stats"]
        row = f"queue skew: {n:,} stats of absent names while another process fsyncs (CPU 0)"
        p99 = self.declare("queue-skew.p99", "queue-skew", row, "p99 stat latency", "µs", "lower")
        p50 = self.declare("queue-skew.p50", "queue-skew", row, "p50 stat latency", "µs", "lower")

        def prepare(ctx):
            (ctx.data / "skew").mkdir()
            sync()

        def measure(ctx, rep):
            d = ctx.data / "skew"
            loop = subprocess.Popen(["taskset", "-c", "0", sys.executable,
                                     str(BENCH / "fsync_loop.py"), str(d / "synced")],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=ENV, start_new_session=True)
            try:
                time.sleep(0.5)  # let the loop reach its steady state
                if loop.poll() is not None:
                    raise BenchError(f"fsync loop exited {loop.returncode}: "
                                     f"{loop.stderr.read().decode(errors='replace')[-300:]}")
                out = run(["taskset", "-c", "0", sys.executable, BENCH / "stat_latency.py", d,
                           str(n)], stdout=subprocess.PIPE, timeout=900)[1]
            finally:
                try:
                    os.killpg(loop.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                loop.wait()
                loop.stderr.close()
            try:
                r = json.loads(out)
                return {p99.key: r["p99_us"], p50.key: r["p50_us"], "_extra": {"ios": n, **r}}
            except (ValueError, KeyError) as e:
                raise BenchError(f"stat_latency.py printed {out[-300:]!r}: {e}") from e

        self.run_group("queue-skew", [p99, p50], prepare, [Phase([p99, p50], measure)])

    def counted(self, gid: str, variant: str, row: str, per: str) -> str | None:
        """Registers the counted run of a row group (per = what its operations are: "I/Os",
        "files", "entries"); its Phase key, or None when the group is not counted in this run."""
        if gid not in COUNTED_GROUPS or not set(COUNTED_SIDES) & set(self.side_names):
            return None
        key = f"{gid}.{variant}"
        self.counts[key] = {}
        self.counted_rows[key] = (row, per)
        return key

    def restart(self, ctx: Ctx, gid: str) -> None:
        ctx.side.end()
        retire(ctx.side.storage(gid))
        ctx.data = ctx.side.begin(gid)

    # ---- main
    def run_all(self):
        for g in self.groups:
            if g == "tree":
                self.group_tree()
            elif g == "cat":
                self.group_cat()
            elif g == "fio-one":
                self.group_fio("fio-one", *self.cfg["fio_one"])
            elif g == "fio-small":
                self.group_fio("fio-small", *self.cfg["fio_small"])
            elif g == "fio-large":
                self.group_fio("fio-large", *self.cfg["fio_large"])
            elif g == "tar-subset":
                self.group_tar(g, LINUX_TAR_SUBSET,
                               f"linux-source-6.1 subset {'+'.join(SUBSET_TAR_DIRS)}")
            elif g == "tar-full":
                self.group_tar(g, LINUX_TAR, "linux-source-6.1")
            elif g.startswith("io-"):
                self.group_io(g)
            elif g == "queue-skew":
                self.group_skew()

