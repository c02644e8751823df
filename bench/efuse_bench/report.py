"""results.md and results.json: tables, ratios, the counted runs, the wait floor, the
telemetry cost, failures and notes."""
from __future__ import annotations

import json
import shlex
import statistics
import subprocess
from pathlib import Path

from .common import COST_GROUPS, COUNTED_GROUPS, COUNTED_SIDES, IO_PATH_GROUPS, REPO, SIDES, \
    SKEW_GROUPS
from .sides import SIDE_CLASSES, LibfuseSide


class Report:
    """Bench's output (a mixin of Bench)."""

    def meta(self):
        return {
            "started": self.started.isoformat(timespec="seconds"),
            "finished": self.finished.isoformat(timespec="seconds") if self.finished else None,
            "status": self.status,
            "git": git_info(),
            "quick": self.quick, "reps": self.reps, "fio_runtime_s": self.runtime,
            "sides": self.side_names, "groups": self.groups,
            "efused_bin": str(self.efused_src), "efused_sha256": self.efused_sha256,
            "efused_args": self.args.efused_args,
            "efused_version": self.efused_version,
            "efused_base_bin": self.args.efused_base if "efused-base" in self.side_names else None,
            "efused_base_sha256": self.efused_base_sha256,
            "libfuse_cmd": shlex.join(LibfuseSide(self).argv(Path("SRC"), Path("MNT"))),
            "config": {k: v for k, v in self.cfg.items()},
            "tar_entries": self.tar_entries,
            "side_notes": {s.name: (([f"unavailable: {s.unavailable}"] if s.unavailable else [])
                                    + list(getattr(s, "notes", []))) for s in self.sides},
            "telemetry": {
                "cmd": shlex.join(self.telemetry.argv(Path("CONFIG"))),
                "measured_efused_env": "EFUSE_BPF=0",
                "settle_seconds": self.args.telemetry_settle,
                "attached_for_sides": [s.name for s in self.sides if s.telemetry],
                "counted_groups": [g for g in COUNTED_GROUPS if g in self.groups],
                "unavailable": self.telemetry.unavailable,
                "notes": self.telemetry.notes,
                "foreign_telemetry": {side: dict(t, holders=sorted(t["holders"]))
                                      for side, t in self.foreign.items()},
            },
            "setup_notes": self.setup_notes,
            "wait_floor": self.wait_floor,
            "loadavg_before_run": self.loadavg,
        }

    def write_results(self):
        if not self.out.exists():
            return
        rows = []
        for m in self.metrics:
            rows.append({
                "key": m.key, "group": m.group, "row": m.row, "metric": m.label, "unit": m.unit,
                "better": m.better,
                "sides": {s: {"reps": m.reps.get(s, []), "median": m.median(s),
                              "error": m.errors.get(s), "details": m.extra.get(s, [])}
                          for s in self.side_names},
                "ratios": {"efused/native": self.ratio(m, "efused", "native"),
                           "efused/libfuse": self.ratio(m, "efused", "libfuse"),
                           "libfuse/native": self.ratio(m, "libfuse", "native"),
                           "efused/efused-nobpf": self.ratio(m, "efused", "efused-nobpf"),
                           "efused-nobpf/libfuse": self.ratio(m, "efused-nobpf", "libfuse"),
                           "efuse-run/native": self.ratio(m, "efuse-run", "native"),
                           "efuse-run/efused": self.ratio(m, "efuse-run", "efused"),
                           "efused-nobpf/efused-base": self.ratio(m, "efused-nobpf", "efused-base"),
                           "memory/tmpfs": self.ratio(m, "memory", "tmpfs")},
            })
        doc = {"meta": self.meta(), "rows": rows,
               "upcalls_ctxsw_per_io": self.count_rows(),
               "wait_floor": self.floor_rows(),
               "telemetry_cost": self.cost_rows(),
               "adaptive_vs_fixed": self.adaptive_rows(),
               "queue_balancing": self.balancing_rows(),
               "nobpf_vs_libfuse": self.pair_rows("efused-nobpf", "libfuse"),
               "nobpf_vs_base": self.pair_rows("efused-nobpf", "efused-base"),
               "efused_vs_libfuse_xattr": self.pair_rows("efused", "libfuse-xattr"),
               "memory_vs_tmpfs": self.pair_rows("memory", "tmpfs")}
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.out / "results.json")
        (self.out / "results.md").write_text(self.render_md())

    def ratio(self, m, a, b):
        if m.errors.get(a) or m.errors.get(b):
            return None
        va, vb = m.median(a), m.median(b)
        if va is None or vb is None or vb == 0:
            return None
        return va / vb

    def count_rows(self) -> list[dict]:
        """The counted runs: per counted phase, per COUNTED_SIDES side, the run's details and the
        counter deltas (None = not run)."""
        return [{"key": key, "row": row, "per": per,
                 "sides": {s: self.counts[key].get(s) for s in COUNTED_SIDES if s in self.side_names}}
                for key, (row, per) in self.counted_rows.items()]

    def floor_rows(self) -> list[dict]:
        """Per counted time row (cat, tar): how far the client's waits alone put any FUSE
        server above native if each cost only the machine's wait floor."""
        floor, rows = self.floor_us(), []
        for cr in self.count_rows():
            m = self.by_key.get(cr["key"])
            rec = cr["sides"].get("efused")
            native = m.median("native") if m and not m.errors.get("native") else None
            if (m is None or m.unit != "s" or floor is None or native is None
                    or not rec or "counters" not in rec or not rec.get("ios")):
                continue
            per_op_us = native / rec["ios"] * 1e6
            waits = rec["counters"]["switches"]["client voluntary"] / rec["ios"]
            rows.append({"key": cr["key"], "row": cr["row"], "per": cr["per"],
                         "native_per_op_us": per_op_us, "waits_per_op": waits,
                         "floor_us": floor,
                         "lowest_ratio": (per_op_us + waits * floor) / per_op_us,
                         "efused/native": self.ratio(m, "efused", "native")})
        return rows

    def render_floor_md(self) -> list[str]:
        L = ["", "## Wait floor", "",
             "What one blocking request and reply between two processes costs on this machine "
             "(`bench/pingpong.c`: a pipe each way, median of 5 x 10,000 round trips): "]
        if "error" in self.wait_floor or not self.wait_floor:
            L[-1] += f"not measured ({mdesc(self.wait_floor.get('error', 'not run'))})."
            return L
        w = self.wait_floor
        L[-1] += (f"**{w['same_cpu_us']:.1f} µs** with both on one CPU, "
                  + (f"{w['cross_cpu_us']:.1f} µs on two CPUs, " if w.get("cross_cpu_us") else "")
                  + f"{w['unpinned_us']:.1f} µs where the scheduler puts them. A request the "
                  "caller waits for (the client's voluntary context switches above) has the same "
                  "shape, so with the cheapest of these per wait no FUSE server gets below the "
                  "`lowest ratio` here with that many waits per operation:")
        rows = self.floor_rows()
        if not rows:
            return L + ["", "(no counted time row with a native median and efused's counts)"]
        L += ["", "| row | native per op | efused's waits per op | floor per wait | "
              "lowest ratio with those waits | efused/native |", "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            L.append(f"| {r['row']} | {r['native_per_op_us']:.1f} µs | "
                     f"{fmt_per(r['waits_per_op'])} | {r['floor_us']:.1f} µs | "
                     f"{fmt_ratio(r['lowest_ratio'])} | {fmt_ratio(r['efused/native'])} |")
        return L

    def cost_rows(self) -> list[dict]:
        """efused (telemetry on) ÷ efused-nobpf (off), per IOPS or time row both sides ran, as a
        throughput ratio (for time rows: off's time ÷ on's): 1.00x = free, below = slower."""
        rows = []
        for m in self.metrics:
            if m.unit not in ("IOPS", "s") or not {"efused", "efused-nobpf"} <= set(m.reps):
                continue
            on, off = m.reps["efused"], m.reps["efused-nobpf"]
            runs = [e for s in ("efused", "efused-nobpf") for e in m.extra.get(s, [])]
            if m.better == "higher":
                ratio, per_rep = self.ratio(m, "efused", "efused-nobpf"), [a / b for a, b in zip(on, off) if b]
            else:
                ratio, per_rep = self.ratio(m, "efused-nobpf", "efused"), [b / a for a, b in zip(on, off) if a]
            rows.append({
                "key": m.key, "row": m.row, "metric": m.label, "unit": m.unit,
                "on": m.median("efused"), "off": m.median("efused-nobpf"),
                "on/off": ratio, "per_rep_on/off": per_rep,
                "telemetry_attached_on": [e["bpf_telemetry"] for e in m.extra.get("efused", [])],
                "runs": len(runs),
                "runs_with_foreign_telemetry": sum(1 for e in runs if e["foreign_bpf_telemetry"]),
                "runs_unchecked": sum(1 for e in runs if e["foreign_bpf_telemetry"] is None)})
        return rows

    def pair_rows(self, a: str, b: str) -> list[dict]:
        """Side a against side b, per row both ran, in the main table's orientation (a ÷ b),
        with the per-repetition ratios (the two sides' runs of the same repetition)."""
        rows = []
        for m in self.metrics:
            if not {a, b} <= set(m.reps):
                continue
            ra, rb = m.reps[a], m.reps[b]
            rows.append({"key": m.key, "row": m.row, "metric": m.label, "unit": m.unit,
                         "better": m.better, a: m.median(a), b: m.median(b),
                         f"{a}/{b}": self.ratio(m, a, b),
                         "per_rep": [x / y for x, y in zip(ra, rb) if y]})
        return rows

    def render_pair_md(self, a: str, b: str, title: str, blurb: str) -> list[str]:
        rows = self.pair_rows(a, b)
        L = ["", f"## {title}", "", blurb + " Oriented like the main table (IOPS: higher is "
             "better; time: lower is better). *Per repetition* pairs the two sides' runs of the "
             "same repetition.", ""]
        if not rows:
            return L + ["No row ran on both sides."]
        L += [f"| row | metric | better | {b} | {a} | {a} ÷ {b} | per repetition |",
              "|---|---|---|---:|---:|---:|---|"]
        for r in rows:
            m = self.by_key[r["key"]]
            unit = f" ({m.unit})" if m.unit not in ("IOPS", "MB/s") else ""
            L.append(f"| {r['row']} | {r['metric']}{unit} | "
                     f"{'↑ higher' if m.better == 'higher' else '↓ lower'} | "
                     f"{self.cell(m, b)} | {self.cell(m, a)} | "
                     f"{fmt_ratio(r[f'{a}/{b}'])} | "
                     f"{', '.join(fmt_ratio(x) for x in r['per_rep']) or '—'} |")
        return L

    def adaptive_rows(self) -> list[dict]:
        """The adaptive I/O path rows: efused with io_path auto (side `efused`) against each
        fixed path (`efused-cache`, `efused-passthrough`), as a speed ratio auto ÷ the best
        fixed path that ran (for time rows: best fixed time ÷ auto's time): 1.00x = as fast as
        the best fixed path, above = faster. None where auto or every fixed path is missing."""
        rows = []
        for m in self.metrics:
            if m.group not in IO_PATH_GROUPS:
                continue

            def ok(side):
                return None if m.errors.get(side) else m.median(side)
            auto = ok("efused")
            fixed = {s: ok(s) for s in ("efused-cache", "efused-passthrough")}
            ran = {s: v for s, v in fixed.items() if v}
            best = None
            if ran:
                best = (min if m.better == "lower" else max)(ran, key=ran.get)
            speed = None
            if auto and best:
                speed = ran[best] / auto if m.better == "lower" else auto / ran[best]
            rows.append({"key": m.key, "row": m.row, "metric": m.label, "unit": m.unit,
                         "native": ok("native"), "auto": auto, **fixed, "best_fixed": best,
                         "auto_speed/best_fixed": speed,
                         "beats_every_fixed": bool(speed and len(ran) == 2 and speed > 1)})
        return rows

    def balancing_rows(self) -> list[dict]:
        """queue-skew: efused (queue balancing on) against efused-nobalance (off), as
        off ÷ on (above 1.00x: balancing made the stats faster)."""
        rows = []
        for m in self.metrics:
            if m.group not in SKEW_GROUPS:
                continue
            rows.append({"key": m.key, "row": m.row, "metric": m.label, "unit": m.unit,
                         "native": None if m.errors.get("native") else m.median("native"),
                         "on": None if m.errors.get("efused") else m.median("efused"),
                         "off": None if m.errors.get("efused-nobalance") else m.median("efused-nobalance"),
                         "off/on": self.ratio(m, "efused-nobalance", "efused")})
        return rows

    def render_balancing_md(self) -> list[str]:
        L = ["", "## Queue balancing on ÷ off", "",
             "`efused` (queue balancing on: an FSYNC may be served off its queue) against "
             "`efused-nobalance` (`EFUSE_QUEUE_BALANCING=0`: always on the queue that read it) "
             "while one process fsyncs in a loop and another stats, both on CPU 0. "
             "*off ÷ on* above 1.00x: balancing made the stats faster.", ""]
        rows = self.balancing_rows()
        if not rows:
            return L + ["The queue-skew row did not run."]
        L += ["| row | metric | native | on | off | off ÷ on |", "|---|---|---:|---:|---:|---:|"]
        for r in rows:
            m = self.by_key[r["key"]]
            L.append(f"| {r['row']} | {r['metric']} ({m.unit}) | {self.cell(m, 'native')} | "
                     f"{self.cell(m, 'efused')} | {self.cell(m, 'efused-nobalance')} | "
                     f"{fmt_ratio(r['off/on'])} |")
        return L

    def render_adaptive_md(self) -> list[str]:
        rows = self.adaptive_rows()
        L = ["", "## Adaptive I/O path ÷ fixed paths", "",
             "efused with `io_path: auto` (`efused`) against the same efused with `io_path` fixed "
             "to `cache` (`efused-cache`) and to `passthrough` (`efused-passthrough`). "
             "*auto speed ÷ best fixed*: the best fixed path's time ÷ auto's time (1.00x = as "
             "fast as the best fixed path, above = faster).", ""]
        if not rows:
            return L + ["No adaptive I/O path row ran."]
        L += ["| row | metric | native | cache | passthrough | auto | best fixed | "
              "auto speed ÷ best fixed |", "|---|---|---:|---:|---:|---:|---|---:|"]
        for r in rows:
            m = self.by_key[r["key"]]
            L.append(f"| {r['row']} | {r['metric']} ({m.unit}) | {self.cell(m, 'native')} | "
                     f"{self.cell(m, 'efused-cache')} | {self.cell(m, 'efused-passthrough')} | "
                     f"{self.cell(m, 'efused')} | {r['best_fixed'] or '—'} | "
                     f"{fmt_ratio(r['auto_speed/best_fixed'])} |")
        return L

    def render_intercept_md(self) -> list[str]:
        """The rows measured under efuse-run (the interception library) beside native and
        efused."""
        L = ["", "## efuse-run: the interception library", "",
             "`efuse-run`: efused with `--intercept`, the row's commands run under `efuse-run`, "
             "so `libefuse_intercept.so` serves their opens, reads and stats from the backing "
             "directory (README, *Interception library*). Ratios as in the main table.", "",
             "| row | metric | native | efused | efuse-run | efuse-run/native | efuse-run/efused |",
             "|---|---|---:|---:|---:|---:|---:|"]
        for m in self.metrics:
            if m.group not in SIDE_CLASSES["efuse-run"].groups:
                continue
            unit = f" ({m.unit})" if m.unit not in ("IOPS", "MB/s") else ""
            L.append(f"| {m.row} | {m.label}{unit} | {self.cell(m, 'native')} | "
                     f"{self.cell(m, 'efused')} | {self.cell(m, 'efuse-run')} | "
                     f"{fmt_ratio(self.ratio(m, 'efuse-run', 'native'))} | "
                     f"{fmt_ratio(self.ratio(m, 'efuse-run', 'efused'))} |")
        return L

    def cell(self, m, side):
        if side not in self.side_names or m.group not in SIDE_CLASSES[side].groups:
            return "not run"
        if m.errors.get(side):
            return "FAILED"
        v = m.median(side)
        return fmt(v, m.unit) if v is not None else "—"

    def render_counts_md(self) -> list[str]:
        L = ["", "## Upcalls and context switches per operation", "",
             "Counted by efused's eBPF telemetry (`efuse_kernel_requests_total`, "
             "`efuse_context_switches_total`, `efuse_kernel_request_duration_seconds`; "
             "`docs/bpf.md`) over one extra run per side and variant, "
             "same workload and state as the repetitions above: the telemetry efused is attached "
             "for that run only, and /metrics is scraped right before and after it; the deltas of "
             "the measured mount are divided by the run's operations: fio's I/Os (reads + writes "
             "completed), the files catted, the archive entries extracted. "
             "Upcalls = requests the kernel sent to the FUSE server; FORGET and BATCH_FORGET "
             "are not counted (they are not `fuse_req`s). Context switches: `daemon` = the "
             "server's threads, `client` = threads while they wait on a request of the mount "
             "(fio, cat, tar); `vol.` = blocked, `invol.` = preempted.", ""]
        if self.telemetry.unavailable and not any(self.counts.values()):
            return L + [f"**eBPF telemetry unavailable, nothing counted**: "
                        f"{mdesc(self.telemetry.unavailable)}"]
        L += ["| row | side | operations | upcalls | upcalls / op | by opcode, per op | "
              "daemon vol. / op | daemon invol. / op | client vol. / op | client invol. / op | "
              "mean upcall latency |",
              "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for cr in self.count_rows():
            for side, rec in cr["sides"].items():
                head = f"| {cr['row']} | {side} |"
                ops_cell = f"{rec['ios']:,} {cr['per']}" if rec and "ios" in rec else ""
                if rec is None:
                    L.append(head + " not run |" + " — |" * 8)
                elif "error" in rec:
                    L.append(head + " FAILED |" + " — |" * 8)
                elif "counters" not in rec:
                    L.append(head + f" {ops_cell} | not counted: telemetry unavailable |"
                             + " — |" * 7)
                else:
                    c, ios = rec["counters"], rec["ios"] or 1
                    ops = sorted(c["upcalls"].items(), key=lambda kv: -kv[1])
                    top = ops if len(ops) <= 5 else ops[:4]
                    shown = ", ".join(f"{op} {fmt_per(n / ios)}" for op, n in top)
                    if len(top) < len(ops):
                        shown += (f", {len(ops) - 4} others "
                                  f"{fmt_per(sum(n for _, n in ops[4:]) / ios)}")
                    sw = [fmt_per(c["switches"][f"{sd} {kd}"] / ios) for sd in ("daemon", "client")
                          for kd in ("voluntary", "involuntary")]
                    lat = c["upcall_latency_mean_us"]
                    L.append(head + f" {ops_cell} | {c['upcalls_total']:,} | "
                             f"{fmt_per(c['upcalls_total'] / ios)} | "
                             f"{shown or '—'} | " + " | ".join(sw)
                             + f" | {'—' if lat is None else f'{lat:.1f} µs'} |")
        L += [f"\n{side} FAILED in the counted run of {cr['row']}: {mdesc(rec['error'])}"
              for cr in self.count_rows() for side, rec in cr["sides"].items()
              if rec and "error" in rec]
        dropped: dict[str, int] = {}
        for cr in self.count_rows():
            for rec in cr["sides"].values():
                for k, v in (rec or {}).get("counters", {}).get("events_dropped", {}).items():
                    dropped[k] = dropped.get(k, 0) + v
        if dropped:
            L += ["", "Warning: during the counted runs the telemetry could not account some "
                  "events of the host's FUSE mounts (`efuse_bpf_events_dropped_total`, any mount): "
                  + ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items()))
                  + "; the counts above may miss at most that many requests."]
        return L

    def render_cost_md(self) -> list[str]:
        rows = self.cost_rows()
        L = ["", "## eBPF telemetry cost: efused with telemetry on ÷ off", "",
             "`efused` runs with efused's eBPF telemetry attached during each of its timed runs, "
             "`efused-nobpf` is the same efused mount with no telemetry attached anywhere by the bench; "
             "they run back to back in every repetition, on the same mount and files. A throughput ratio (for time rows, "
             "off's time ÷ on's): 1.00x = no cost, 0.97x = 3% slower with telemetry. *Other telemetry* counts the timed runs (of "
             "both sides) during which copies of efused's telemetry that the bench did not start "
             "were loaded (another efused on the host): those runs all paid for them.", ""]
        if not rows:
            return L + ["No row ran on both sides."]
        if self.telemetry.unavailable:
            L += [f"**eBPF telemetry unavailable** ({mdesc(self.telemetry.unavailable)}): the "
                  "`efused` runs below without telemetry too, so the ratio measures nothing but "
                  "noise.", ""]
        L += [f"{self.reps} repetitions per side and row; *spread* is the lowest and highest "
              "per-repetition ratio (each repetition's on run ÷ its off run).", "",
              "| row | metric | efused, telemetry on | efused-nobpf, off | on ÷ off | spread | "
              "per repetition | other telemetry |", "|---|---|---:|---:|---:|---|---|---|"]
        for r in rows:
            m = self.by_key[r["key"]]
            other = ("none" if not r["runs_with_foreign_telemetry"] else
                     f"**in {r['runs_with_foreign_telemetry']} of {r['runs']} runs**")
            if r["runs_unchecked"]:
                other += f" ({r['runs_unchecked']} unchecked: bpftool failed)"
            unit = "IOPS" if r["unit"] == "IOPS" else f"{r['metric']} ({r['unit']})"
            L.append(f"| {r['row']} | {unit} | {self.cell(m, 'efused')} | {self.cell(m, 'efused-nobpf')} | "
                     f"{fmt_ratio(r['on/off'])} | "
                     + (f"{fmt_ratio(min(r['per_rep_on/off']))}–{fmt_ratio(max(r['per_rep_on/off']))}"
                        if r['per_rep_on/off'] else "—") + " | "
                     f"{', '.join(fmt_ratio(x) for x in r['per_rep_on/off']) or '—'} | {other} |")
        ratios = [(r["on/off"], r["row"]) for r in rows if r["on/off"] is not None]
        if ratios:
            lo = min(ratios)
            L += ["", f"Median on ÷ off over these {len(ratios)} rows: "
                  f"**{fmt_ratio(statistics.median(r for r, _ in ratios))}**; lowest: "
                  f"{fmt_ratio(lo[0])} ({lo[1]})."]
        return L

    def render_md(self):
        g = git_info()
        L = ["# efuse benchmark: native vs libfuse passthrough_ll vs efused", "",
             f"- date: {self.started:%Y-%m-%d %H:%M}, status: **{self.status}**, "
             f"mode: {'quick' if self.quick else 'full'}, repetitions per cell: {self.reps} "
             f"(median shown), fio runtime {self.runtime}s",
             f"- git: {g['sha']}{' (dirty tree)' if g['dirty'] else ''}; efused: "
             f"`{self.efused_version}`, args: `{self.args.efused_args or '(none)'}`",
             f"- load average before the run (1/5/15 min): "
             f"{' / '.join(f'{v:.2f}' for v in self.loadavg)}"
             + (" — **other work was running on the machine; expect noise**"
                if self.loadavg[0] > 0.5 else ""),
             "- libfuse: 3.14 `passthrough_ll` example with default options "
             "(`-f -o source=SRC MNT`)",
             "- sides take turns in every repetition; repetitions 2k and 2k+1 run the side "
             "order rotated by k, forwards then backwards (native, libfuse, efused, "
             "efused-nobpf; efused-nobpf, efused, libfuse, native; libfuse, ...); every FUSE side "
             "serves a fresh ext4 "
             "directory, data lives inside the mount. Machine: [machine.md](machine.md)",
             "- efused's eBPF telemetry (it observes every FUSE mount on the host) is attached "
             "only during `efused`'s timed runs and the counted runs: `native`, `libfuse` and "
             "`efused-nobpf` run without it (*eBPF telemetry cost* below compares `efused` with "
             "`efused-nobpf`)",
             "- **ratios**: for IOPS and MB/s rows a ratio is a throughput ratio "
             "(efused ÷ other; **higher is better**, 1.00x = parity); for time rows it is a time "
             "ratio (efused ÷ other; **lower is better**, 0.50x = twice as fast). "
             "The `better` column says which way each metric goes.", "",
             "| row | metric | better | native | libfuse | efused | efused/native | efused/libfuse |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
        for m in self.metrics:
            r1, r2 = self.ratio(m, "efused", "native"), self.ratio(m, "efused", "libfuse")
            unit = f" ({m.unit})" if m.unit not in ("IOPS", "MB/s") else ""
            L.append(f"| {m.row} | {m.label}{unit} | {'↑ higher' if m.better == 'higher' else '↓ lower'} | "
                     f"{self.cell(m, 'native')} | {self.cell(m, 'libfuse')} | {self.cell(m, 'efused')} | "
                     f"{fmt_ratio(r1)} | {fmt_ratio(r2)} |")
        if self.counted_rows:
            L += self.render_counts_md()
        L += self.render_floor_md()
        if set(IO_PATH_GROUPS) & set(self.groups):
            L += self.render_adaptive_md()
        if set(SKEW_GROUPS) & set(self.groups):
            L += self.render_balancing_md()
        if {"efused", "efused-nobpf"} <= set(self.side_names) and set(COST_GROUPS) & set(self.groups):
            L += self.render_cost_md()
        if "efuse-run" in self.side_names:
            L += self.render_intercept_md()
        if {"libfuse", "efused-nobpf"} <= set(self.side_names):
            L += self.render_pair_md("efused-nobpf", "libfuse", "efused without telemetry ÷ libfuse",
                                     "`efused-nobpf` (efused, no eBPF telemetry attached) against "
                                     "`libfuse` on every row both ran.")
        if {"libfuse-xattr", "efused"} <= set(self.side_names):
            L += self.render_pair_md("efused", "libfuse-xattr", "efused ÷ libfuse serving xattrs",
                                     "`efused` (defaults, telemetry on) against `libfuse-xattr` "
                                     "(`passthrough_ll -o xattr`): both serve extended attributes, "
                                     "so the kernel asks both for security.capability before a "
                                     "file's first write and at every chown.")
        if {"efused-base", "efused-nobpf"} <= set(self.side_names):
            L += self.render_pair_md("efused-nobpf", "efused-base", "This efused ÷ the base efused",
                                     f"`efused-nobpf` (this build, {self.efused_sha256[:12]}) "
                                     f"against `efused-base` (`{self.args.efused_base}`, "
                                     f"{self.efused_base_sha256[:12]}), both without telemetry, "
                                     "same host, data and repetitions: the change's cost or gain.")
        if {"memory", "tmpfs"} <= set(self.side_names):
            L += self.render_pair_md("memory", "tmpfs", "Memory backend ÷ tmpfs",
                                     "`memory` (efused's memory backend, `--mount memory:MNT`, no "
                                     "telemetry) against a `tmpfs`, on the tree and one-file fio "
                                     "rows (issue 22's goals: fio warm >= 0.80x, find and stat "
                                     "<= 1.20x).")
        fails = [(m, s, e) for m in self.metrics for s, e in m.errors.items()]
        unav = [s for s in self.sides if s.unavailable]
        notes = [(s.name, n) for s in self.sides for n in getattr(s, "notes", [])]
        notes += [("eBPF telemetry", n) for n in self.telemetry.notes]
        if self.telemetry.unavailable:
            notes.append(("eBPF telemetry", f"unavailable: {self.telemetry.unavailable}"))
        for side, t in self.foreign.items():
            if t["disturbed"]:
                notes.append((side, f"during {t['disturbed']} of {t['runs']} timed runs, copies of "
                              "efused's eBPF telemetry that the bench did not start were loaded "
                              "(they observe every FUSE mount and every context switch, so those "
                              f"runs paid for them): {', '.join(sorted(t['holders']))}"))
            if t["unknown"]:
                notes.append((side, f"{t['unknown']} of {t['runs']} timed runs could not be checked "
                              "for other eBPF telemetry (`bpftool -j prog show` failed)"))
        if fails or unav or notes:
            L += ["", "## Failures and notes", ""]
            for s in unav:
                L.append(f"- **{s.name} unavailable**: {mdesc(s.unavailable)}")
            seen = set()
            for m, s, e in fails:
                if (s, m.group, e) in seen:
                    continue
                seen.add((s, m.group, e))
                L.append(f"- **{s}** failed in `{m.group}`: {mdesc(e)}")
            for s, n in notes:
                L.append(f"- {s}: {mdesc(n)}")
        L += ["", "## Repetitions", "",
              "| row | metric | " + " | ".join(self.side_names) + " |",
              "|---|---|" + "---|" * len(self.side_names)]
        for m in self.metrics:
            cells = [", ".join(fmt(v, m.unit) for v in m.reps.get(s, [])) or "—"
                     for s in self.side_names]
            L.append(f"| {m.row} | {m.label} | " + " | ".join(cells) + " |")
        return "\n".join(L) + "\n"


def mdesc(s: str) -> str:
    s = " ".join(str(s).split()).replace("|", "\\|")
    return s if len(s) < 600 else s[:600] + " …"


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "IOPS":
        return f"{v:,.0f}"
    if unit == "MB/s":
        return f"{v:,.1f}"
    return f"{v:#.4g}" if v < 1000 else f"{v:,.0f}"


def describe_counts(extra: dict) -> str:
    """One log line's worth of a counted run (operations: fio I/Os, files, entries)."""
    c, ios = extra.get("counters"), extra["ios"] or 1
    if c is None:
        return f"{extra['ios']:,} operations, not counted (eBPF telemetry unavailable)"
    sw = c["switches"]
    return (f"{extra['ios']:,} operations, upcalls/op {fmt_per(c['upcalls_total'] / ios)}, context "
            f"switches/op daemon {fmt_per((sw['daemon voluntary'] + sw['daemon involuntary']) / ios)}"
            f", client {fmt_per((sw['client voluntary'] + sw['client involuntary']) / ios)}")


def fmt_per(v: float) -> str:
    """A count per operation."""
    if v == 0:
        return "0"
    return f"{v:.1e}" if v < 0.001 else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def fmt_ratio(r):
    if r is None:
        return "—"
    return f"{r:.3f}x" if r < 0.1 else (f"{r:.2f}x" if r < 10 else f"{r:.1f}x")


_GIT = None


def git_info():
    global _GIT
    if _GIT is None:
        def g(*a):
            r = subprocess.run(["git", "-C", str(REPO)] + list(a), capture_output=True, text=True)
            return r.stdout.strip() if r.returncode == 0 else ""
        _GIT = {"sha": g("rev-parse", "--short", "HEAD") or "nogit",
                "dirty": bool(g("status", "--porcelain", "--untracked-files=no"))}
    return _GIT

