"""Unit tests of the bench's report code (bench/efuse_bench/report.py and the numbers it reads):
formatting, medians and ratios, the tables of results.md, results.json. No root, no mounts:
a Bench is filled with the values a run would have measured.

Run: python3 -m unittest discover -s bench/tests -v   (ctest: unit.bench_report)"""
from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from efuse_bench import report  # noqa: E402
from efuse_bench.bench import Bench  # noqa: E402
from efuse_bench.cli import parse_args  # noqa: E402
from efuse_bench.report import describe_counts, fmt, fmt_per, fmt_ratio, mdesc  # noqa: E402
from efuse_bench.sides import SIDE_CLASSES  # noqa: E402
from efuse_bench.telemetry import counter_deltas, counters_of  # noqa: E402

CAT_ROW = "cat one 4 KiB file x 20,000 (xargs -n 200 cat), warm"
FIO_ROW = "fio randrw 70/30 1 x 256 MiB bs=4KiB, warm"
TAR_ROW = "tar -xf linux-source-6.1 subset (10,958 entries, 0.13 GB)"


def extra(foreign=0, attached=False, ios=1000):
    return {"ios": ios, "foreign_bpf_telemetry": foreign, "bpf_telemetry": attached}


def make_bench(sides="native,libfuse,efused,efused-nobpf", rows="fio-one,cat,tar-subset",
               more=()):
    """A Bench as a quick run of fio-one, cat and tar-subset would leave it: libfuse failed in
    cat, one efused run saw another copy of the telemetry, one could not be checked."""
    b = Bench(parse_args(["--quick", "--sides", sides, "--rows", rows, *more]))
    b.loadavg = [0.1, 0.2, 0.3]
    b.efused_version = "efused 0.1.0"
    b.sides = [SIDE_CLASSES[n](b) for n in b.side_names]
    b.wait_floor = {"same_cpu_us": 10.0, "cross_cpu_us": 20.0, "unpinned_us": 12.0}

    def fill(m, vals):
        for side, v in vals.items():
            if side not in b.side_names:
                continue
            if isinstance(v, str):
                m.errors[side] = v
                continue
            m.reps[side] = list(v)
            m.extra[side] = [extra(attached=side == "efused") for _ in v]

    iops = b.declare("fio-one.warm.iops", "fio-one", FIO_ROW, "IOPS r+w", "IOPS", "higher")
    fill(iops, {"native": [1000, 1200, 1100], "libfuse": [100, 110, 120],
                "efused": [900, 950, 1000], "efused-nobpf": [1000, 1000, 1000],
                "efused-base": [800, 1000, 1250]})
    if "efused" in b.side_names:
        iops.extra["efused"][1]["foreign_bpf_telemetry"] = 1
        iops.extra["efused"][2]["foreign_bpf_telemetry"] = None
    cat = b.declare("cat.warm", "cat", CAT_ROW, "time", "s", "lower")
    fill(cat, {"native": [1.0, 1.2, 1.1], "libfuse": "exit 1: boom | pipe\n  broken",
               "efused": [2.0, 2.2, 2.4], "efused-nobpf": [2.0, 2.0, 2.0],
               "efuse-run": [1.1, 1.0, 1.2], "efused-base": [2.5, 2.0, 2.0]})
    tar = b.declare("tar-subset.extract", "tar-subset", TAR_ROW, "time excl. sync", "s", "lower")
    fill(tar, {"native": [0.5], "libfuse": [3.0], "efused": [2.0], "efused-nobpf": [1.9],
               "libfuse-xattr": [4.0]})

    key = b.counted("cat", "warm", CAT_ROW, "files")
    if key:
        upcalls = {"OPEN": 20000, "FLUSH": 20000, "RELEASE": 20000, "GETATTR": 10, "LOOKUP": 5,
                   "READ": 3}
        switches = {"daemon voluntary": 60000, "daemon involuntary": 100,
                    "client voluntary": 40000, "client involuntary": 20}
        if "efused" in b.side_names:
            b.counts[key]["efused"] = {"ios": 20000, "counters": {
                "ios": 20000, "upcalls": upcalls, "upcalls_total": sum(upcalls.values()),
                "switches": switches, "upcall_latency_mean_us": 12.345,
                "events_dropped": {"ringbuf": 7}}}
        if "libfuse" in b.side_names:
            b.counts[key]["libfuse"] = {"error": "libfuse died"}
    return b


def table_rows(md: str, heading: str) -> list[list[str]]:
    """The cells of the first table after `heading` (## level), header rows dropped."""
    part = md.split(f"## {heading}\n", 1)[1] if heading else md
    rows, started = [], False
    for line in part.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
        elif started:
            break
    return rows[2:]


def row_of(rows, first, second=None):
    for r in rows:
        if r[0] == first and (second is None or r[1] == second):
            return r
    raise AssertionError(f"no row {first!r} / {second!r} in {rows}")


class FormattingTest(unittest.TestCase):
    def test_values_by_unit(self):
        self.assertEqual(fmt(None, "s"), "—")
        self.assertEqual(fmt(1234.4, "IOPS"), "1,234")
        self.assertEqual(fmt(12.34, "MB/s"), "12.3")
        self.assertEqual(fmt(0.012345, "s"), "0.01235")
        self.assertEqual(fmt(2.0, "s"), "2.000")
        self.assertEqual(fmt(1500.0, "s"), "1,500")

    def test_ratios(self):
        self.assertEqual(fmt_ratio(None), "—")
        self.assertEqual(fmt_ratio(0.05), "0.050x")
        self.assertEqual(fmt_ratio(0.5), "0.50x")
        self.assertEqual(fmt_ratio(12.0), "12.0x")

    def test_counts_per_operation(self):
        self.assertEqual(fmt_per(0), "0")
        self.assertEqual(fmt_per(0.0005), "5.0e-04")
        self.assertEqual(fmt_per(2.5), "2.500")
        self.assertEqual(fmt_per(12.0), "12.0")

    def test_markdown_cell_text(self):
        self.assertEqual(mdesc("a |b\n   c"), "a \\|b c")
        long = mdesc("x" * 700)
        self.assertEqual(long, "x" * 600 + " …")

    def test_describe_counts(self):
        c = counter_deltas({}, {"upcalls:OPEN": 4, "switches:daemon voluntary": 2,
                                "switches:client voluntary": 6}, 2)
        self.assertEqual(describe_counts({"ios": 2, "counters": c}),
                         "2 operations, upcalls/op 2.000, context switches/op daemon 1.000, "
                         "client 3.000")
        self.assertIn("not counted", describe_counts({"ios": 5, "counters": None}))


class CountersTest(unittest.TestCase):
    def test_counters_of_keeps_the_measured_mount_and_host_wide_drops(self):
        samples = [("efuse_kernel_requests_total", {"mount": "/m", "opcode": "OPEN"}, 3.0),
                   ("efuse_kernel_requests_total", {"mount": "/other", "opcode": "OPEN"}, 9.0),
                   ("efuse_context_switches_total", {"mount": "/m", "side": "client",
                                                     "kind": "voluntary"}, 5.0),
                   ("efuse_kernel_request_duration_seconds_sum", {"mount": "/m"}, 0.5),
                   ("efuse_bpf_events_dropped_total", {"reason": "ringbuf"}, 2.0)]
        self.assertEqual(counters_of(samples, "/m"),
                         {"upcalls:OPEN": 3.0, "switches:client voluntary": 5.0,
                          "latency_sum_s": 0.5, "dropped:ringbuf": 2.0})

    def test_deltas(self):
        before = {"upcalls:OPEN": 10, "upcalls:READ": 4, "latency_sum_s": 1.0}
        after = {"upcalls:OPEN": 13, "upcalls:READ": 4, "upcalls:FLUSH": 1, "latency_sum_s": 1.004,
                 "dropped:ringbuf": 1}
        d = counter_deltas(before, after, 2)
        self.assertEqual(d["upcalls"], {"FLUSH": 1, "OPEN": 3})  # READ did not move
        self.assertEqual(d["upcalls_total"], 4)
        self.assertAlmostEqual(d["upcall_latency_mean_us"], 1000.0)
        self.assertEqual(d["switches"]["client voluntary"], 0)
        self.assertEqual(d["events_dropped"], {"ringbuf": 1})
        self.assertIsNone(counter_deltas({}, {}, 0)["upcall_latency_mean_us"])


class ReportTest(unittest.TestCase):
    def setUp(self):
        self._git = report._GIT
        report._GIT = {"sha": "abc1234", "dirty": False}

    def tearDown(self):
        report._GIT = self._git

    def test_medians_and_ratios(self):
        b = make_bench()
        iops, cat = b.by_key["fio-one.warm.iops"], b.by_key["cat.warm"]
        self.assertEqual(iops.median("native"), 1100)
        self.assertAlmostEqual(b.ratio(iops, "efused", "native"), 950 / 1100)
        self.assertIsNone(b.ratio(cat, "efused", "libfuse"))  # libfuse failed
        self.assertIsNone(b.ratio(cat, "libfuse", "native"))
        iops.reps["native"] = [0.0]
        self.assertIsNone(b.ratio(iops, "efused", "native"))

    def test_main_table(self):
        md = make_bench().render_md()
        rows = table_rows(md, "")
        self.assertEqual(row_of(rows, FIO_ROW),
                         [FIO_ROW, "IOPS r+w", "↑ higher", "1,100", "110", "950", "0.86x", "8.64x"])
        self.assertEqual(row_of(rows, CAT_ROW),
                         [CAT_ROW, "time (s)", "↓ lower", "1.100", "FAILED", "2.200", "2.00x", "—"])
        self.assertEqual(len(rows), 3)
        self.assertIn("status: **running**, mode: quick", md)
        self.assertIn("git: abc1234; efused: `efused 0.1.0`", md)
        self.assertNotIn("expect noise", md)

    def test_sides_not_selected_are_not_run(self):
        rows = table_rows(make_bench(sides="native,efused").render_md(), "")
        self.assertEqual(row_of(rows, FIO_ROW)[3:], ["1,100", "not run", "950", "0.86x", "—"])
        reps = table_rows(make_bench().render_md(), "Repetitions")
        # efused-nobpf runs tar rows too (a fresh efused mount per repetition). The table has
        # a column per side selected (here not efuse-run).
        self.assertEqual(row_of(reps, TAR_ROW), [TAR_ROW, "time excl. sync", "0.5000", "3.000",
                                                 "2.000", "1.900"])
        cost = make_bench(sides="native,efused")
        self.assertEqual(cost.cell(cost.by_key["tar-subset.extract"], "efused-nobpf"), "not run")

    def test_telemetry_cost(self):
        b = make_bench()
        rows = {r["key"]: r for r in b.cost_rows()}
        self.assertEqual(set(rows), {"fio-one.warm.iops", "cat.warm", "tar-subset.extract"})
        fio = rows["fio-one.warm.iops"]
        self.assertAlmostEqual(fio["on/off"], 0.95)
        self.assertEqual([round(x, 2) for x in fio["per_rep_on/off"]], [0.9, 0.95, 1.0])
        self.assertEqual((fio["runs"], fio["runs_with_foreign_telemetry"], fio["runs_unchecked"]),
                         (6, 1, 1))
        # A time row's ratio is off's time ÷ on's: below 1 = slower with telemetry.
        cat = rows["cat.warm"]
        self.assertAlmostEqual(cat["on/off"], 2.0 / 2.2)
        self.assertEqual([round(x, 2) for x in cat["per_rep_on/off"]], [1.0, 0.91, 0.83])
        md = b.render_md()
        table = table_rows(md, "eBPF telemetry cost: efused with telemetry on ÷ off")
        self.assertEqual(row_of(table, FIO_ROW),
                         [FIO_ROW, "IOPS", "950", "1,000", "0.95x", "0.90x–1.00x",
                          "0.90x, 0.95x, 1.00x",
                          "**in 1 of 6 runs** (1 unchecked: bpftool failed)"])
        self.assertIn("Median on ÷ off over these 3 rows: **0.95x**; lowest: 0.91x "
                      f"({CAT_ROW}).", md)
        self.assertIn("1 repetitions per side and row; *spread*", md)

    def test_efused_without_telemetry_against_libfuse(self):
        b = make_bench()
        rows = {r["key"]: r for r in b.pair_rows("efused-nobpf", "libfuse")}
        # cat: libfuse failed, so not compared; tar: one repetition each.
        self.assertEqual(set(rows), {"fio-one.warm.iops", "tar-subset.extract"})
        self.assertAlmostEqual(rows["fio-one.warm.iops"]["efused-nobpf/libfuse"], 1000 / 110)
        self.assertAlmostEqual(rows["tar-subset.extract"]["efused-nobpf/libfuse"], 1.9 / 3.0)
        table = table_rows(b.render_md(), "efused without telemetry ÷ libfuse")
        self.assertEqual(row_of(table, TAR_ROW),
                         [TAR_ROW, "time excl. sync (s)", "↓ lower", "3.000", "1.900", "0.63x",
                          "0.63x"])
        self.assertNotIn("efused without telemetry ÷ libfuse",
                         make_bench(sides="native,efused").render_md())

    def test_efuse_run_rows(self):
        b = make_bench(sides="native,efused,efuse-run")
        table = table_rows(b.render_md(), "efuse-run: the interception library")
        # Only the rows efuse-run measures (tree, cat); cat here.
        self.assertEqual(table, [[CAT_ROW, "time (s)", "1.100", "2.200", "1.100", "1.00x", "0.50x"]])
        # The main table keeps its columns; fio and tar are not run on efuse-run.
        self.assertEqual(b.cell(b.by_key["fio-one.warm.iops"], "efuse-run"), "not run")
        self.assertNotIn("## efuse-run", make_bench().render_md())
        with tempfile.TemporaryDirectory() as d:
            b.out = Path(d)
            with contextlib.redirect_stdout(io.StringIO()):
                b.write_results()
            rows = {r["key"]: r for r in json.loads((Path(d) / "results.json").read_text())["rows"]}
        self.assertAlmostEqual(rows["cat.warm"]["ratios"]["efuse-run/native"], 1.0)
        self.assertAlmostEqual(rows["cat.warm"]["ratios"]["efuse-run/efused"], 0.5)

    def test_no_cost_section_without_both_efused_sides(self):
        self.assertNotIn("## eBPF telemetry cost", make_bench(sides="native,efused").render_md())

    def test_counted_runs(self):
        md = make_bench().render_md()
        rows = table_rows(md, "Upcalls and context switches per operation")
        self.assertEqual(row_of(rows, CAT_ROW, "libfuse")[2], "FAILED")
        ef = row_of(rows, CAT_ROW, "efused")
        self.assertEqual(ef[2:5], ["20,000 files", "60,018", "3.001"])
        # The four largest opcodes and the rest summed.
        self.assertEqual(ef[5], "OPEN 1.000, FLUSH 1.000, RELEASE 1.000, GETATTR 5.0e-04, "
                                "2 others 4.0e-04")
        self.assertEqual(ef[6:], ["3.000", "0.005", "2.000", "0.001", "12.3 µs"])
        self.assertIn(f"libfuse FAILED in the counted run of {CAT_ROW}: libfuse died", md)
        self.assertIn("ringbuf 7; the counts above may miss", md)

    def test_counted_runs_without_telemetry(self):
        b = make_bench()
        for rec in b.counts.values():
            rec.clear()
        b.telemetry.unavailable = "telemetry efused: efuse_bpf_up is 0"
        md = b.render_md()
        self.assertIn("**eBPF telemetry unavailable, nothing counted**: telemetry efused: "
                      "efuse_bpf_up is 0", md)
        self.assertIn("- eBPF telemetry: unavailable: telemetry efused: efuse_bpf_up is 0", md)

    def test_wait_floor(self):
        b = make_bench()
        self.assertEqual(b.floor_us(), 10.0)
        (row,) = b.floor_rows()
        self.assertAlmostEqual(row["native_per_op_us"], 55.0)
        self.assertAlmostEqual(row["waits_per_op"], 2.0)
        self.assertAlmostEqual(row["lowest_ratio"], (55.0 + 2 * 10.0) / 55.0)
        table = table_rows(b.render_md(), "Wait floor")
        self.assertEqual(table, [[CAT_ROW, "55.0 µs", "2.000", "10.0 µs", "1.36x", "2.00x"]])
        b.wait_floor = {"error": "gcc: not found"}
        self.assertEqual(b.floor_rows(), [])
        self.assertIn("not measured (gcc: not found).", b.render_md())

    def test_failures_and_notes(self):
        b = make_bench()
        b.foreign["efused"] = {"runs": 6, "disturbed": 1, "unknown": 1,
                               "holders": {"pid 42 (efused --mount a:b)"}}
        md = b.render_md()
        notes = md.split("## Failures and notes\n", 1)[1].split("\n## ", 1)[0]
        self.assertIn("- **libfuse** failed in `cat`: exit 1: boom \\| pipe broken", notes)
        self.assertEqual(notes.count("**libfuse** failed"), 1)
        self.assertIn("- efused: during 1 of 6 timed runs, copies of efused's eBPF telemetry", notes)
        self.assertIn("pid 42 (efused --mount a:b)", notes)
        self.assertIn("- efused: 1 of 6 timed runs could not be checked", notes)

    def test_busy_machine_is_flagged(self):
        b = make_bench()
        b.loadavg = [2.0, 1.0, 0.5]
        self.assertIn("2.00 / 1.00 / 0.50 — **other work was running", b.render_md())

    def test_write_results(self):
        b = make_bench()
        with tempfile.TemporaryDirectory() as d:
            b.out = Path(d)
            b.write_results()
            doc = json.loads((b.out / "results.json").read_text())
            self.assertEqual((b.out / "results.md").read_text(), b.render_md())
            self.assertFalse((b.out / "results.json.tmp").exists())
        self.assertEqual(doc["meta"]["status"], "running")
        self.assertEqual(doc["meta"]["sides"], ["native", "libfuse", "efused", "efused-nobpf"])
        self.assertEqual(doc["meta"]["git"], {"sha": "abc1234", "dirty": False})
        self.assertEqual(doc["meta"]["telemetry"]["settle_seconds"], 2.0)
        rows = {r["key"]: r for r in doc["rows"]}
        self.assertEqual(list(rows), ["fio-one.warm.iops", "cat.warm", "tar-subset.extract"])
        cat = rows["cat.warm"]
        self.assertEqual(cat["sides"]["libfuse"]["error"], "exit 1: boom | pipe\n  broken")
        self.assertEqual(cat["sides"]["efused"]["median"], 2.2)
        self.assertEqual(cat["sides"]["efused"]["reps"], [2.0, 2.2, 2.4])
        self.assertIsNone(cat["ratios"]["efused/libfuse"])
        self.assertAlmostEqual(cat["ratios"]["efused/native"], 2.0)
        self.assertAlmostEqual(rows["fio-one.warm.iops"]["ratios"]["efused/efused-nobpf"], 0.95)
        self.assertEqual([c["key"] for c in doc["upcalls_ctxsw_per_io"]], ["cat.warm"])
        self.assertEqual(doc["upcalls_ctxsw_per_io"][0]["sides"]["libfuse"], {"error": "libfuse died"})
        self.assertEqual(len(doc["wait_floor"]), 1)
        self.assertEqual([r["key"] for r in doc["telemetry_cost"]],
                         ["fio-one.warm.iops", "cat.warm", "tar-subset.extract"])
        self.assertEqual([r["key"] for r in doc["nobpf_vs_libfuse"]],
                         ["fio-one.warm.iops", "tar-subset.extract"])

    def test_efused_base_side(self):
        # efused-base runs only when asked for, and only with a binary.
        self.assertNotIn("efused-base", parse_args([]).sides)
        self.assertIn("efused-base", parse_args(["--efused-base", "/x/efused"]).sides)
        for bad in (["--sides", "native,efused-base"],
                    ["--sides", "native,efused", "--efused-base", "/x/efused"]):
            with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
                parse_args(bad)
        b = make_bench(sides="native,efused-nobpf,efused-base",
                       more=("--efused-base", "/old/efused"))
        b.efused_sha256, b.efused_base_sha256 = "a" * 64, "b" * 64
        rows = {r["key"]: r for r in b.pair_rows("efused-nobpf", "efused-base")}
        # tar: efused-base has no value there, so no row.
        self.assertEqual(set(rows), {"fio-one.warm.iops", "cat.warm"})
        self.assertAlmostEqual(rows["fio-one.warm.iops"]["efused-nobpf/efused-base"], 1.0)
        self.assertEqual(rows["cat.warm"]["per_rep"], [0.8, 1.0, 1.0])
        md = b.render_md()
        self.assertIn("`efused-base` (`/old/efused`, bbbbbbbbbbbb)", md)
        table = table_rows(md, "This efused ÷ the base efused")
        self.assertEqual(row_of(table, CAT_ROW),
                         [CAT_ROW, "time (s)", "↓ lower", "2.000", "2.000", "1.00x",
                          "0.80x, 1.00x, 1.00x"])
        self.assertNotIn("This efused ÷ the base efused", make_bench().render_md())

    def test_libfuse_xattr_side(self):
        # Asked for by name only; passthrough_ll with -o xattr; the tar rows only.
        self.assertNotIn("libfuse-xattr", parse_args([]).sides)
        b = make_bench(sides="native,libfuse,efused,libfuse-xattr")
        side = SIDE_CLASSES["libfuse-xattr"](b)
        argv = side.argv(Path("S"), Path("M"))
        self.assertEqual(argv[-3:], ["-o", "xattr", "M"])
        self.assertIn("source=S", argv)
        self.assertEqual(set(side.groups), {"tar-subset", "tar-full"})
        rows = b.pair_rows("efused", "libfuse-xattr")
        self.assertEqual([r["key"] for r in rows], ["tar-subset.extract"])
        self.assertAlmostEqual(rows[0]["efused/libfuse-xattr"], 0.5)
        table = table_rows(b.render_md(), "efused ÷ libfuse serving xattrs")
        self.assertEqual(row_of(table, TAR_ROW)[5], "0.50x")
        self.assertNotIn("libfuse serving xattrs", make_bench().render_md())

    def test_telemetry_settle_option(self):
        self.assertEqual(parse_args(["--telemetry-settle", "0.5"]).telemetry_settle, 0.5)
        for bad in ("-1", "61"):
            with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
                parse_args(["--telemetry-settle", bad])

    def test_write_results_needs_the_output_directory(self):
        b = make_bench()
        with tempfile.TemporaryDirectory() as d:
            b.out = Path(d) / "gone"
            b.write_results()  # an output directory that is not there: nothing written
            self.assertEqual(list(Path(d).iterdir()), [])


HOT_ROW = "I/O path, page cache wins: 200 x 16 KiB files re-read 10 times (xargs cat), warm"
COLD_ROW = "I/O path, passthrough wins: one pass over 4 x 16 MiB files (cat), cold"
MIX_ROW = "I/O path, mixed: both, cold"


def make_io_bench(sides="native,efused,efused-cache,efused-passthrough"):
    """A Bench as a quick run of the adaptive I/O path rows would leave it: the cache wins the
    hot row, passthrough the cold one, auto beats both on the mix; efused-passthrough failed
    once in the mix."""
    b = Bench(parse_args(["--quick", "--sides", sides, "--rows", "io-hot,io-cold,io-mix"]))
    b.loadavg = [0.1, 0.2, 0.3]
    b.sides = [SIDE_CLASSES[n](b) for n in b.side_names]
    vals = {
        "io-hot": (HOT_ROW, {"native": [0.5], "efused-cache": [1.0], "efused-passthrough": [2.0],
                             "efused": [1.04]}),
        "io-cold": (COLD_ROW, {"native": [3.0], "efused-cache": [9.0],
                               "efused-passthrough": [3.2], "efused": [3.3]}),
        "io-mix": (MIX_ROW, {"native": [3.0], "efused-cache": [9.0],
                             "efused-passthrough": "exit 1: gone", "efused": [4.0]}),
    }
    for gid, (row, sides_vals) in vals.items():
        m = b.declare(f"{gid}.time", gid, row, "time", "s", "lower")
        for side, v in sides_vals.items():
            if side not in b.side_names:
                continue
            if isinstance(v, str):
                m.errors[side] = v
            else:
                m.reps[side] = v
                m.extra[side] = [extra() for _ in v]
    return b


class AdaptiveIoPathTest(unittest.TestCase):
    def setUp(self):
        self._git = report._GIT
        report._GIT = {"sha": "abc1234", "dirty": False}

    def tearDown(self):
        report._GIT = self._git

    def test_sides_and_groups(self):
        self.assertEqual(SIDE_CLASSES["efused-cache"].groups, ("io-hot", "io-cold", "io-mix"))
        self.assertNotIn("io-hot", SIDE_CLASSES["libfuse"].groups)
        self.assertNotIn("io-hot", SIDE_CLASSES["efused-nobpf"].groups)
        self.assertIn("io-mix", SIDE_CLASSES["efused"].groups)
        b = make_io_bench()
        argv = {s.name: s.argv(Path("S"), Path("M")) for s in b.sides if s.name != "native"}
        self.assertEqual(argv["efused-cache"][-2:], ["--io-path", "cache"])
        self.assertEqual(argv["efused-passthrough"][-2:], ["--io-path", "passthrough"])
        self.assertNotIn("--io-path", argv["efused"])

    def test_adaptive_rows(self):
        rows = {r["key"]: r for r in make_io_bench().adaptive_rows()}
        hot, cold, mix = rows["io-hot.time"], rows["io-cold.time"], rows["io-mix.time"]
        self.assertEqual(hot["best_fixed"], "efused-cache")
        self.assertAlmostEqual(hot["auto_speed/best_fixed"], 1.0 / 1.04)
        self.assertFalse(hot["beats_every_fixed"])
        self.assertEqual(cold["best_fixed"], "efused-passthrough")
        self.assertAlmostEqual(cold["auto_speed/best_fixed"], 3.2 / 3.3)
        # A failed fixed side is left out of "best", and "beats every fixed path" needs both.
        self.assertIsNone(mix["efused-passthrough"])
        self.assertEqual(mix["best_fixed"], "efused-cache")
        self.assertAlmostEqual(mix["auto_speed/best_fixed"], 9.0 / 4.0)
        self.assertFalse(mix["beats_every_fixed"])
        b = make_io_bench()
        b.by_key["io-mix.time"].errors.clear()
        b.by_key["io-mix.time"].reps["efused-passthrough"] = [5.0]
        mix = {r["key"]: r for r in b.adaptive_rows()}["io-mix.time"]
        self.assertTrue(mix["beats_every_fixed"])
        self.assertAlmostEqual(mix["auto_speed/best_fixed"], 5.0 / 4.0)

    def test_no_auto_no_ratio(self):
        rows = make_io_bench(sides="native,efused-cache,efused-passthrough").adaptive_rows()
        self.assertTrue(all(r["auto_speed/best_fixed"] is None for r in rows))

    def test_adaptive_table(self):
        md = make_io_bench().render_md()
        rows = table_rows(md, "Adaptive I/O path ÷ fixed paths")
        self.assertEqual(row_of(rows, HOT_ROW),
                         [HOT_ROW, "time (s)", "0.5000", "1.000", "2.000", "1.040",
                          "efused-cache", "0.96x"])
        self.assertEqual(row_of(rows, MIX_ROW),
                         [MIX_ROW, "time (s)", "3.000", "9.000", "FAILED", "4.000",
                          "efused-cache", "2.25x"])
        reps = table_rows(md, "Repetitions")
        self.assertEqual(row_of(reps, COLD_ROW), [COLD_ROW, "time", "3.000", "3.300", "9.000",
                                                  "3.200"])
        self.assertNotIn("Adaptive I/O path", make_bench().render_md())

    def test_results_json(self):
        b = make_io_bench()
        with tempfile.TemporaryDirectory() as d:
            b.out = Path(d)
            b.write_results()
            doc = json.loads((b.out / "results.json").read_text())
        self.assertEqual([r["key"] for r in doc["adaptive_vs_fixed"]],
                         ["io-hot.time", "io-cold.time", "io-mix.time"])
        self.assertEqual(doc["meta"]["config"]["io_hot"], [200, 16384, 10])
        self.assertEqual(doc["meta"]["config"]["io_cold"], [4, 16 * 1024 * 1024])


SKEW_ROW = "queue skew: 2,000 stats of absent names while another process fsyncs (CPU 0)"


class QueueBalancingTest(unittest.TestCase):
    def setUp(self):
        self._git = report._GIT
        report._GIT = {"sha": "abc1234", "dirty": False}

    def tearDown(self):
        report._GIT = self._git

    def make(self, sides="native,efused,efused-nobalance"):
        b = Bench(parse_args(["--quick", "--sides", sides, "--rows", "queue-skew"]))
        b.loadavg = [0.1, 0.2, 0.3]
        b.sides = [SIDE_CLASSES[n](b) for n in b.side_names]
        p99 = b.declare("queue-skew.p99", "queue-skew", SKEW_ROW, "p99 stat latency", "µs", "lower")
        for side, v in {"native": [8.0], "efused": [40.0], "efused-nobalance": [2000.0]}.items():
            if side in b.side_names:
                p99.reps[side] = v
                p99.extra[side] = [extra()]
        return b

    def test_side(self):
        side = SIDE_CLASSES["efused-nobalance"]
        self.assertEqual(side.groups, ("queue-skew",))
        self.assertEqual(side.env["EFUSE_QUEUE_BALANCING"], "0")
        self.assertEqual(side.env["EFUSE_BPF"], "0")
        self.assertNotIn("EFUSE_QUEUE_BALANCING", SIDE_CLASSES["efused"].env)
        self.assertIn("queue-skew", SIDE_CLASSES["efused"].groups)
        self.assertEqual(self.make().cfg["skew_stats"], 2000)

    def test_rows_and_table(self):
        b = self.make()
        rows = b.balancing_rows()
        self.assertEqual(len(rows), 1)
        self.assertAlmostEqual(rows[0]["off/on"], 50.0)
        md = b.render_md()
        t = table_rows(md, "Queue balancing on ÷ off")
        self.assertEqual(row_of(t, SKEW_ROW),
                         [SKEW_ROW, "p99 stat latency (µs)", "8.000", "40.00", "2,000", "50.0x"])
        self.assertNotIn("Queue balancing on", make_bench().render_md())
        off = self.make(sides="native,efused").balancing_rows()
        self.assertIsNone(off[0]["off/on"])
        with tempfile.TemporaryDirectory() as d:
            b.out = Path(d)
            b.write_results()
            doc = json.loads((b.out / "results.json").read_text())
        self.assertEqual(doc["queue_balancing"][0]["on"], 40.0)


if __name__ == "__main__":
    unittest.main()
