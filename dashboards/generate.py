#!/usr/bin/env python3
"""Writes dashboards/efuse.json, the Grafana dashboard for efused, from the panel list below.

Edit this file, run it (`python3 dashboards/generate.py`), commit both. Every panel target
is PromQL over efused's metrics (docs/metrics.md: daemon side; docs/bpf.md: kernel side via
eBPF); tests/integration/test_dashboards.py evaluates each of them against a real
Prometheus that scraped a real efused under fio load and fails on any that returns nothing.

Variables: $datasource (a Prometheus data source), $instance (efused instances), $mount
(efused's own mounts: configured names, which never contain "/" or ":") and $other (every
other FUSE mount on those hosts, seen only by the eBPF telemetry and labelled by mountpoint
or "connection:MAJOR:MINOR"). Annotations mark reloads, failed reloads and restarts.
Python standard library only.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance", mount=~"$mount"'
OTHER = 'instance=~"$instance", mount=~"$other"'
INST = 'instance=~"$instance"'
RATE = "$__rate_interval"
# efused's mount names match [A-Za-z0-9_.-]{1,64}; the eBPF telemetry labels every other
# FUSE mount by its mountpoint ("/...") or "connection:MAJOR:MINOR". These regexes are the
# "All" values of $mount and $other, so the two never overlap.
OWN_MOUNTS = "[A-Za-z0-9_.-]+"
OTHER_MOUNTS = ".*[/:].*"
REFRESH = "30s"  # at least Prometheus's scrape_interval (prometheus.yml: 15s)

_next_id = [1]
_y = [0]


def _id():
    _next_id[0] += 1
    return _next_id[0] - 1


def target(expr, legend="", ref="A", fmt=None, instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref,
         "range": not instant, "instant": instant}
    if fmt:
        t["format"] = fmt
    return t


def row(title):
    p = {"type": "row", "title": title, "id": _id(), "collapsed": False, "panels": [],
         "gridPos": {"h": 1, "w": 24, "x": 0, "y": _y[0]}}
    _y[0] += 1
    return p


def place(panels, h=8):
    """Lays panels out left to right on one grid row (24 columns)."""
    w = 24 // len(panels)
    for i, p in enumerate(panels):  # the last panel takes what division leaves over
        width = 24 - i * w if i == len(panels) - 1 else w
        p["gridPos"] = {"h": h, "w": width, "x": i * w, "y": _y[0]}
    _y[0] += h
    return panels


def timeseries(title, targets, unit="short", description="", stack=False, right=()):
    """right: refIds drawn on a right-hand axis with unit "short" (counts beside a ratio)."""
    overrides = [{"matcher": {"id": "byFrameRefID", "options": ref},
                  "properties": [{"id": "custom.axisPlacement", "value": "right"},
                                 {"id": "unit", "value": "short"}]} for ref in right]
    return {
        "type": "timeseries", "title": title, "id": _id(), "datasource": DS,
        "description": description, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"}}},
            "overrides": overrides},
        "options": {"legend": {"displayMode": "table", "placement": "right",
                               "calcs": ["mean", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def heatmap(title, expr, description=""):
    return {
        "type": "heatmap", "title": title, "id": _id(), "datasource": DS,
        "description": description,
        "targets": [target(expr, "{{le}}", fmt="heatmap")],
        "options": {"calculate": False, "yAxis": {"unit": "s"},
                    "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges",
                                            "exponent": 0.5, "steps": 64},
                    "rowsFrame": {"layout": "auto"}, "tooltip": {"show": True,
                                                                 "yHistogram": True}},
        "fieldConfig": {"defaults": {}, "overrides": []},
    }


GOOD_AT_1 = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
NEUTRAL = [{"color": "blue", "value": None}]


def stat(title, targets, description="", mappings=None, unit="short", steps=GOOD_AT_1):
    return {
        "type": "stat", "title": title, "id": _id(), "datasource": DS,
        "description": description, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                     "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"colorMode": "background", "graphMode": "none", "textMode": "value_and_name",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }


def table(title, targets, description=""):
    return {
        "type": "table", "title": title, "id": _id(), "datasource": DS,
        "description": description, "targets": targets,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "transformations": [{"id": "labelsToFields", "options": {"mode": "columns"}},
                            {"id": "merge", "options": {}}],
        "options": {"showHeader": True},
    }


def quantiles(metric, by, sel=SEL):
    return [target(f'histogram_quantile({q}, sum by ({by}, le) '
                   f'(rate({metric}_bucket{{{sel}}}[{RATE}])))',
                   f"p{int(q * 100)} " + " ".join("{{%s}}" % b for b in by.split(", ")),
                   ref=r)
            for q, r in ((0.5, "A"), (0.99, "B"))]


UP_MAP = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                        "1": {"text": "UP", "color": "green"}}}]
OK_MAP = [{"type": "value", "options": {"0": {"text": "FAILED", "color": "red"},
                                        "1": {"text": "OK", "color": "green"}}}]


def mean_in_flight(metric, sel, legend, ref):
    """Little's law: the seconds of requests that ended in the window, per second of window,
    are the mean number in flight over it. Every request counts for as long as it lasted,
    however short the burst, where a gauge sampled every scrape sees only the instant."""
    return target(f"sum by (mount) (rate({metric}_sum{{{sel}}}[{RATE}]))", legend, ref)


def mean_latency(metric, sel):
    return (f"sum by (mount, opcode) (rate({metric}_sum{{{sel}}}[{RATE}])) / "
            f"sum by (mount, opcode) (rate({metric}_count{{{sel}}}[{RATE}]))")


def kernel_mean_in_flight(sel, legend, ref):
    """Little's law on the kernel side, whose latency is sampled (the requests sent in
    windows covering 1 in efuse_bpf_latency_sample_every of the time, docs/bpf.md): the
    samples' mean latency per opcode times the exact request rate, not rate(_sum), which is
    about 1/N of it."""
    return target(
        f"sum by (mount) ({mean_latency('efuse_kernel_request_duration_seconds', sel)} "
        f"* on (mount, opcode) {upcalls(sel)})", legend, ref)


def upcalls(sel):
    return f"sum by (mount, opcode) (rate(efuse_kernel_requests_total{{{sel}}}[{RATE}]))"


def switches_per_upcall(sel):
    """Client switches are counted over the sampled requests (divide by the samples, the
    latency histogram's _count), the servers' over all of them (divide by the requests)."""
    return (f"sum by (mount, side, kind) (rate(efuse_context_switches_total"
            f"{{{sel}, side=\"client\"}}[{RATE}]))"
            f" / on (mount) group_left "
            f"sum by (mount) (rate(efuse_kernel_request_duration_seconds_count{{{sel}}}[{RATE}]))"
            f" or sum by (mount, side, kind) (rate(efuse_context_switches_total"
            f"{{{sel}, side=\"daemon\"}}[{RATE}]))"
            f" / on (mount) group_left "
            f"sum by (mount) (rate(efuse_kernel_requests_total{{{sel}}}[{RATE}]))")


def health_rows():
    out = [row("Health")]
    out += place([
        stat("Mount health", [target(f"efuse_mount_up{{{SEL}}}", "{{mount}}")],
             "efuse_mount_up: 1 while the mount is live and serving, 0 for a configured mount "
             "that failed to start or was unmounted (docs/metrics.md). `efusectl status NAME` "
             "and the log say why.", UP_MAP),
        timeseries("Mount start failures", [target(
            f"sum by (mount) (increase(efuse_mount_start_failures_total{{{SEL}}}[{RATE}]))",
            "{{mount}}")],
            "short", "Failed attempts to start a mount (mount(2), INIT, transport set-up), per "
            "interval (efuse_mount_start_failures_total). A start, a reload and `efusectl "
            "mount` each try once; the error is in the log and in `efusectl status NAME`."),
        stat("eBPF telemetry", [
            target(f"efuse_bpf_up{{{INST}}}", "up {{instance}}"),
            target(f"efuse_bpf_programs_attached{{{INST}}}", "programs {{instance}}", "B"),
            target(f"efuse_bpf_latency_sample_every{{{INST}}}", "1 in N timed {{instance}}", "C")],
            "efuse_bpf_up and programs in service (2: fuse_request_end, attached while up, and "
            "fuse_request_send, attached in sampling windows). 0 means off: "
            "efuse_bpf_off_reason and efused's log say why (docs/bpf.md). 1 in N timed: "
            "efuse_bpf_latency_sample_every, the windows' share of the time in which requests "
            "are timed for the kernel-side latency (counts are exact)."),
        table("Transport and I/O path: configured and in effect", [target(
            f"efuse_mount_info{{{SEL}}}", "", fmt="table", instant=True)],
            "efuse_mount_info per mount: transport (classic = /dev/fuse, uring = FUSE over "
            "io_uring; empty when not live), io_path as configured and io_path_effective, the "
            "one new opens get (cache when the kernel did not grant passthrough: not root, "
            "writeback cache, old kernel, EFUSE_MASK_KERNEL_FEATURES), kernel_module as "
            "configured and the tier in effect (module = efuse.ko through /dev/efuse, stock = "
            "the kernel's FUSE)."),
    ], h=6)

    out.append(row("Daemon process and configuration"))
    out += place([
        timeseries("Daemon CPU", [
            target(f"rate(efuse_process_cpu_seconds_total{{{INST}}}[{RATE}])", "{{instance}}")],
            "percentunit", "CPU seconds per second used by efused, user plus system "
            "(efuse_process_cpu_seconds_total); 1 = one CPU."),
        timeseries("Daemon memory (RSS)", [
            target(f"efuse_process_resident_memory_bytes{{{INST}}}", "{{instance}}")],
            "bytes", "Resident set size of efused (efuse_process_resident_memory_bytes, VmRSS). "
            "io_uring queues hold about CPUs x queue_depth x 1 MiB of payload buffers per "
            "mount; the passthrough backend a few hundred bytes per inode the kernel holds."),
        timeseries("Open descriptors against the limit", [
            target(f"efuse_process_open_fds{{{INST}}} / efuse_process_max_fds{{{INST}}}",
                   "{{instance}} share of RLIMIT_NOFILE"),
            target(f"efuse_process_open_fds{{{INST}}}", "{{instance}} open (right axis)", "B"),
            target(f"sum by (instance) (efuse_inode_fds{{{SEL}}})",
                   "{{instance}} of which inode descriptors (right axis)", "C")],
            "percentunit", "Open descriptors of efused as a share of its soft RLIMIT_NOFILE "
            "(efuse_process_open_fds / efuse_process_max_fds), and the counts. Inode "
            "descriptors stay within half of the limit (beyond it inodes are held by file "
            "handle); the rest is /dev/fuse clones, io_uring rings, open files. Near 1 opens "
            "fail with EMFILE: raise LimitNOFILE=.", right=("B", "C")),
        stat("Last reload", [
            target(f"efuse_config_last_reload_success{{{INST}}}", "{{instance}}")],
            "Whether the last configuration reload (systemctl reload efused, efusectl reload, "
            "SIGHUP) succeeded (efuse_config_last_reload_success; OK before any reload). A "
            "failed reload changed nothing; the log and `efusectl reload` give FILE:LINE:COLUMN.",
            OK_MAP),
        timeseries("Reloads", [
            target(f"sum by (instance, result) (increase(efuse_config_reloads_total{{{INST}}}"
                   f"[{RATE}]))", "{{instance}} {{result}}"),
            target(f"efuse_config_last_reload_duration_seconds{{{INST}}}",
                   "{{instance}} last took (s, right axis)", "B")],
            "short", "Reloads per interval by result (efuse_config_reloads_total) and how long "
            "the last one took, remounts included (efuse_config_last_reload_duration_seconds). "
            "The annotations mark each reload and restart.", right=("B",)),
    ], h=6)
    return out


def request_rows():
    out = [row("Requests")]
    out += place([
        timeseries("Request rate by opcode (daemon)", [target(
            f"sum by (opcode) (rate(efuse_requests_total{{{SEL}}}[{RATE}]))", "{{opcode}}")],
            "reqps", "Requests efused handled per second (efuse_requests_total), FORGET and "
            "INTERRUPT included. Passthrough reads and writes never reach efused.", stack=True),
        timeseries("Upcalls by opcode (kernel, eBPF)", [target(upcalls(SEL), "{{mount}} {{opcode}}")],
            "reqps", "Requests the kernel sent to efused's mounts (efuse_kernel_requests_total, "
            "eBPF on fuse_request_send). Other FUSE mounts are in the last row.", stack=True),
    ])
    out += place([
        timeseries("Daemon errors by errno", [target(
            f"sum by (mount, opcode, errno) (rate(efuse_request_errors_total{{{SEL}}}[{RATE}]))",
            "{{mount}} {{opcode}} {{errno}}")],
            "reqps", "Requests efused answered with an error, per second, by opcode and errno "
            "name (efuse_request_errors_total). ENOENT on lookup is rare: a missing name is "
            "answered with a negative entry while negative_timeout > 0."),
        timeseries("Errors by opcode (kernel)", [target(
            f"sum by (mount, opcode) (rate(efuse_kernel_request_errors_total{{{SEL}}}[{RATE}]))",
            "{{mount}} {{opcode}}")],
            "reqps", "Replies with out.h.error != 0 per second, as the kernel saw them "
            "(efuse_kernel_request_errors_total), including errors the kernel set itself "
            "(ENOTCONN, ECONNABORTED)."),
    ])
    out += place([
        timeseries("Requests in flight (mean over the interval)", [
            kernel_mean_in_flight(SEL, "{{mount}} sent, not answered (kernel)", "A"),
            mean_in_flight("efuse_request_duration_seconds", SEL,
                           "{{mount}} being handled by efused", "B"),
            target(f"sum by (mount) (efuse_kernel_requests_in_flight{{{SEL}}})",
                   "{{mount}} at the scrape (stuck requests)", "C")],
            "short", "Mean number of requests in flight over each interval (Little's law: "
            "request rate times mean latency; the kernel's latency from its samples), so bursts "
            "shorter than the scrape interval count for as long as they lasted. Kernel: fuse_request_send to fuse_request_end; "
            "efused: decode to reply. The difference waited in the kernel's queues or for a "
            "worker. 'At the scrape' is efuse_kernel_requests_in_flight sampled at each "
            "scrape: nearly always 0, steady only for stuck requests."),
        timeseries("Queue wait per request (kernel minus daemon)", [target(
            f"{mean_latency('efuse_kernel_request_duration_seconds', SEL)} - on (mount, opcode) "
            f"({mean_latency('efuse_request_duration_seconds', SEL)})",
            "{{mount}} {{opcode}}")],
            "s", "Mean kernel-side latency (of the sampled requests) minus mean time inside "
            "efused, per opcode: what a "
            "request spends queued in the kernel, waiting for a free worker and in transit "
            "(context switches). Rises when workers are saturated."),
        timeseries("Worker utilisation", [target(
            f"rate(efuse_worker_busy_seconds_total{{{SEL}}}[{RATE}])", "{{mount}} {{worker}}")],
            "percentunit", "Fraction of time each efused worker (classic thread or io_uring "
            "queue) spends handling requests (efuse_worker_busy_seconds_total). When every "
            "worker of a mount is near 1, requests queue in the kernel."),
        timeseries("io_uring queue threads: SCHED_IDLE and starvations", [
            target(f"efuse_worker_idle_class{{{SEL}}}", "{{mount}} {{worker}} idle class"),
            target(f"rate(efuse_worker_starved_total{{{SEL}}}[{RATE}])",
                   "{{mount}} {{worker}} starved/s", ref="B")],
            "short", "1 while an io_uring queue's thread runs SCHED_IDLE (a client it answers "
            "stays on its CPU), 0 while SCHED_BATCH (efuse_worker_idle_class); starvations per "
            "second: the guard found the idle thread kept off its CPU by other work and made "
            "it SCHED_BATCH for a hold (efuse_worker_starved_total; docs/adaptive-io.md, "
            "\"Queue threads\").", right=("B",)),
    ])
    return out


def latency_rows():
    out = [row("Latency")]
    out += place([
        heatmap("Daemon latency (efuse_request_duration_seconds)",
                f"sum by (le) (rate(efuse_request_duration_seconds_bucket{{{SEL}}}[{RATE}]))",
                "Decode to reply written, inside efused: every request of the selected mounts, "
                "per bucket (5 us to 10 s)."),
        heatmap("Kernel latency (efuse_kernel_request_duration_seconds)",
                f"sum by (le) (rate(efuse_kernel_request_duration_seconds_bucket{{{SEL}}}[{RATE}]))",
                "fuse_request_send to fuse_request_end: kernel queueing + server + reply "
                "(log2 buckets), of the sampled requests (sent in windows covering 1 in "
                "efuse_bpf_latency_sample_every of the time): "
                "the shape is the requests', the counts per bucket are the samples'."),
    ])
    out += place([
        timeseries("p50 / p99 by opcode (daemon)",
                   quantiles("efuse_request_duration_seconds", "opcode"), "s",
                   "Median and 99th percentile of efused's processing time per opcode, "
                   "interpolated inside the histogram buckets."),
        timeseries("p50 / p99 by opcode (kernel)",
                   quantiles("efuse_kernel_request_duration_seconds", "mount, opcode"), "s",
                   "Median and 99th percentile of the kernel-side latency per opcode "
                   "(log2 buckets: precise to a factor of 2), from the sampled requests."),
    ])
    out += place([
        timeseries("p99 by queue (kernel)",
                   [quantiles("efuse_kernel_queue_request_duration_seconds", "mount, queue")[1]],
                   "s", "queue = io_uring queue id (one per CPU) or \"classic\" (/dev/fuse)."),
        timeseries("Requests by queue (kernel)", [target(
            f"sum by (mount, queue) (rate(efuse_kernel_queue_requests_total"
            f"{{{SEL}}}[{RATE}]))", "{{mount}} q{{queue}}")], "reqps",
            "Requests per second per queue (efuse_kernel_queue_requests_total, every request): "
            "with io_uring the kernel puts a request on the queue of the sender's CPU; "
            "\"classic\" carries /dev/fuse traffic."),
    ])
    return out


def context_switch_rows():
    out = [row("Context switches")]
    out += place([
        timeseries("Context switches", [target(
            f"sum by (mount, side, kind) (rate(efuse_context_switches_total{{{SEL}}}[{RATE}]))",
            "{{mount}} {{side}} {{kind}}")],
            "ops", "side=daemon: FUSE server threads; side=client: tasks with a sampled request "
            "of the mount outstanding (sent in windows covering 1 in efuse_bpf_latency_sample_every "
            "of the time, so about 1/N of the clients' switches). involuntary = preempted."),
        timeseries("Context switches per upcall", [target(switches_per_upcall(SEL), "{{mount}} {{side}} {{kind}}")],
            "short", "What one request costs in context switches, per side: the clients' over "
            "the sampled requests, the servers' over all requests."),
    ])
    return out


def io_path_rows():
    out = [row("Kernel features and I/O path")]
    out += place([
        table("Kernel features (negotiated at INIT)", [target(
            f"efuse_kernel_feature{{{SEL}}}", "", fmt="table", instant=True)],
            "1 = enabled for the mount (offered by the kernel and accepted by efused)."),
        timeseries("Fallbacks", [
            target(f"efuse_mount_transport_fallback{{{SEL}}}",
                   "{{mount}} transport: /dev/fuse instead of io_uring"),
            target(f"max by (instance, mount) (efuse_mount_info{{{SEL}, io_path!=\"cache\", "
                   f"io_path_effective=\"cache\"}}) or max by (instance, mount) "
                   f"(efuse_mount_info{{{SEL}}} * 0)",
                   "{{mount}} I/O path: through efused instead of passthrough", "B"),
            target(f"efuse_kernel_feature_offered{{{SEL}, feature=~\"passthrough|io_uring\"}}"
                   f" - on (instance, mount, feature) efuse_kernel_feature{{{SEL}}}",
                   "{{mount}} {{feature}} offered, not used", "C")],
            "short", "1 = the mount runs on less than it asked for: FUSE over io_uring could "
            "not be used (efuse_mount_transport_fallback), passthrough was wanted but not "
            "granted (efuse_mount_info io_path vs io_path_effective), or the kernel offered "
            "passthrough or io_uring and the mount does not use it (efuse_kernel_feature_offered "
            "- efuse_kernel_feature; 1 for passthrough also with writeback cache). "
            "`efusectl status NAME` says why."),
        timeseries("Passthrough opens and refusals", [
            target(f"sum by (mount) (rate(efuse_passthrough_opens_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} passthrough"),
            target(f"sum by (mount) (rate(efuse_passthrough_refusals_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} refused", "B")],
            "ops", "Opens served by kernel passthrough, and opens that asked for it and fell "
            "back to I/O through the daemon."),
    ])
    # Mounts on the stock tier have no efuse_kernel_answered_total etc.: they show 0.
    stock_zero = f"0 * max by (instance, mount) (efuse_mount_info{{{SEL}}})"
    out += place([
        timeseries("Answered in the kernel (kernel module tier)", [
            target(f"sum by (mount, opcode) (rate(efuse_kernel_answered_total{{{SEL}}}[{RATE}]))"
                   f" or 0 * sum by (mount, opcode) (rate(efuse_requests_total{{{SEL}, "
                   f"opcode=~\"getattr|lookup|getxattr|listxattr|read|open|flush|release\"}}[{RATE}]))",
                   "{{mount}} {{opcode}} in the kernel"),
            target(f"sum by (mount, reason) (rate(efuse_kernel_handler_fallbacks_total{{{SEL}}}"
                   f"[{RATE}])) or {stock_zero}", "{{mount}} went up: {{reason}}", "B")],
            "reqps", "Requests efuse.ko's eBPF handlers answered from the maps efused keeps "
            "(they never reached efused), and those that reached the handlers but went up, by "
            "reason: declined = not in the maps; bad_* = an answer the module refused (a bug). "
            "0 for mounts on the stock tier (efuse_mount_info tier)."),
        timeseries("Handler maps (kernel module tier)", [
            target(f"sum by (mount, map) (efuse_kernel_map_entries{{{SEL}}}) or {stock_zero}",
                   "{{mount}} {{map}} entries"),
            target(f"sum by (mount) (rate(efuse_kernel_map_drops_total{{{SEL}}}[{RATE}])) or "
                   f"{stock_zero}", "{{mount}} drops/s", "B", ),
            target(f"sum by (mount) (rate(efuse_kernel_map_stores_skipped_total{{{SEL}}}"
                   f"[{RATE}])) or {stock_zero}", "{{mount}} stores skipped/s", "C"),
            target(f"sum by (mount) (rate(efuse_kernel_entry_lookups_total{{{SEL}}}[{RATE}])) "
                   f"or {stock_zero}", "{{mount}} lookups taken from entries/s", "D"),
            target(f"sum by (mount) (efuse_kernel_open_holds{{{SEL}}}) or {stock_zero}",
                   "{{mount}} nodes held for kernel opens", "E")],
            "short", "Answers stored for the handlers (getattr: attributes by node; lookup: "
            "names, absent or leading to a node the kernel holds; xattr: extended attributes "
            "and lists; entry_lookups: nodes with "
            "lookups counted; open: OPEN answers of passthrough files; flush: FLUSH answers "
            "of opens answered in the kernel), nodes whose backing id efused holds for opens "
            "answered in the kernel, entries dropped because something changed, answers not stored "
            "(a change raced them, the file was open for writing, or the map was full), and "
            "lookups the kernel took from positive entries (folded into efused's counts). 0 "
            "for mounts on the stock tier."),
        timeseries("READ block cache (kernel module tier)", [
            target(f"sum by (mount) (efuse_kernel_map_bytes{{{SEL}, map=\"read_blocks\"}}) / "
                   f"sum by (mount) (efuse_kernel_read_cache_capacity_bytes{{{SEL}}} > 0) or "
                   f"{stock_zero}", "{{mount}} filled"),
            target(f"sum by (mount) (rate(efuse_kernel_answered_total{{{SEL}, opcode=\"read\"}}"
                   f"[{RATE}])) / (sum by (mount) (rate(efuse_kernel_answered_total{{{SEL}, "
                   f"opcode=\"read\"}}[{RATE}])) + sum by (mount) (rate(efuse_requests_total{{"
                   f"{SEL}, opcode=\"read\"}}[{RATE}])) > 0) or {stock_zero}",
                   "{{mount}} READs answered in the kernel", "B"),
            target(f"sum by (mount) (rate(efuse_kernel_read_cache_evictions_total{{{SEL}}}"
                   f"[{RATE}])) or {stock_zero}", "{{mount}} evictions/s", "C")],
            "percentunit", "The READ block cache (handler_cache_bytes): the share in use, the "
            "share of READs (page cache misses, direct I/O) the READ handler answered from it "
            "rather than efused, and blocks replaced per second (least recently used first; a "
            "steady rate means the cache is too small for the small files read). 0 for mounts "
            "on the stock tier.", right=("C",)),
    ])
    # eBPF handlers and their hot swaps (README, Kernel module tier; docs/bpf.md).
    out += place([
        table("Handlers in place (kernel module tier)", [
            target(f"max by (mount, opcode, prog_id, tag, abi, path) (efuse_handler_info{{{SEL}}})"
                   f" or {stock_zero}", "", fmt="table", instant=True)],
            "The eBPF handler answering each opcode of each mount: kernel program id, program "
            "tag (two builds of one handler differ here), the handler ABI it was built for and "
            "the object it came from. A swap shows as a new prog_id. Mounts on the stock tier "
            "show one row with no opcode (value 0)."),
        timeseries("Handler swaps (kernel module tier)", [
            target(f"sum by (mount, opcode) (increase(efuse_handler_swaps_total{{{SEL}}}[{RATE}]))"
                   f" or {stock_zero}", "{{mount}} {{opcode}} swapped"),
            target(f"sum by (mount, opcode) (increase(efuse_handler_swap_failures_total{{{SEL}}}"
                   f"[{RATE}])) or {stock_zero}", "{{mount}} {{opcode}} refused", "B"),
            target(f"sum by (mount, opcode) (increase(efuse_handler_removals_total{{{SEL}}}"
                   f"[{RATE}])) or {stock_zero}", "{{mount}} {{opcode}} removed", "C")],
            "short", "Handlers put in place (load, reload, efusectl handler swap), swaps refused "
            "(file owner or mode, symlink, handler ABI, opcode, verifier: the old handler "
            "stayed) and handlers removed, per interval. 0 for mounts on the stock tier."),
        timeseries("Handler run time (kernel.bpf_stats_enabled)", [
            target(f"sum by (mount, opcode) (rate(efuse_handler_run_seconds_total{{{SEL}}}"
                   f"[{RATE}])) / sum by (mount, opcode) (rate(efuse_handler_runs_total{{{SEL}}}"
                   f"[{RATE}]) > 0) or {stock_zero}", "{{mount}} {{opcode}} mean per run")],
            "s", "Mean time one run of the handler takes in the kernel (bpf_prog_info "
            "run_time_ns / run_cnt). The kernel counts only while kernel.bpf_stats_enabled is "
            "1; otherwise, and on the stock tier, 0."),
    ])
    out += place([
        timeseries("Inodes and their descriptors", [
            target(f"sum by (mount) (efuse_inodes{{{SEL}}})", "{{mount}} inodes"),
            target(f"sum by (mount) (efuse_inode_fds{{{SEL}}})", "{{mount}} descriptors", "B"),
            target(f"sum by (mount) (rate(efuse_inode_fd_reopens_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} reopens/s", "C"),
            target(f"sum by (mount) (rate(efuse_inode_fd_eviction_passes_total{{{SEL}, "
                   f"by=\"request\"}}[{RATE}]))", "{{mount}} passes by requests/s", "D")],
            "short", "Inodes the kernel holds, how many keep an O_PATH descriptor (at most half "
            "of RLIMIT_NOFILE for the daemon), and reopens by file handle per second: a steady "
            "reopen rate means the descriptor budget is below the working set. Eviction runs "
            "in each mount's own thread; passes by requests mean lookups outpaced it past "
            "three quarters of RLIMIT_NOFILE (raise LimitNOFILE=)."),
        timeseries("Directory listings", [
            target(f"sum by (mount) (rate(efuse_requests_total{{{SEL}, "
                   f"opcode=~\"readdir|readdirplus\"}}[{RATE}]))", "{{mount}} read by efused"),
            target(f"sum by (mount) (rate(efuse_listing_cache_drops_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} cache drops", "C")],
            "reqps", "READDIR/READDIRPLUS requests: a listing the kernel has cached costs none "
            "(and no OPENDIR). Drops: cached listings efused threw away because an entry "
            "changed less than 2 s before they completed, or behind efused's back."),
        timeseries("Changes behind efused's back (inotify, fanotify)", [
            target(f"sum by (mount) (rate(efuse_watch_events_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} events"),
            target(f"sum by (mount) (rate(efuse_watch_invalidations_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} invalidations", "B"),
            target(f"sum by (mount) (increase(efuse_watch_overflows_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} queue overflows", "C"),
            target(f"sum by (mount) (increase(efuse_watch_failures_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} watch failures", "D")],
            "short", "inotify and fanotify events from the backing tree per second (anyone's changes, "
            "passthrough writes included) and the invalidations they cost: events whose change "
            "the kernel already sees send none. Overflows invalidate everything; after a watch "
            "failure the mount's cache timeouts are capped at 1 s (efuse_watched_directories "
            "counts the watches)."),
        timeseries("Watched directories and muted files", [
            target(f"sum by (mount) (efuse_watched_directories{{{SEL}}})",
                   "{{mount}} directories"),
            target(f"sum by (mount) (efuse_watch_fanotify_directories{{{SEL}}})",
                   "{{mount}} of which writes by fanotify", "B"),
            target(f"sum by (mount) (efuse_watch_muted_files{{{SEL}}})",
                   "{{mount}} files muted while written", "C")],
            "short", "Directories watched (every one the kernel knows), those whose files' "
            "writes fanotify reports (the rest cost every write an inotify event), and files "
            "open for writing through the mount whose write events the kernel drops until "
            "they close (outside writes to them show within about a second)."),
    ])
    return out


def adaptive_rows():
    out = [row("Adaptive I/O path (io_path: auto)")]
    out += place([
        timeseries("I/O path decisions", [
            target(f"sum by (mount, decision, reason) (rate(efuse_io_path_decisions_total"
                   f"{{{SEL}}}[{RATE}]))", "{{mount}} {{decision}} ({{reason}})")],
            "ops", "Opens whose I/O path was decided (the first open of an inode; later opens "
            "join it), by decision (cache: page cache, READ and WRITE served by efused; "
            "passthrough: FUSE passthrough) and reason: fixed, unavailable, setid, and with "
            "io_path auto writer (writable opens: passthrough), guess (nothing measured yet), "
            "probe, predicted (the class's cheaper "
            "path) or history (the file's own measured opens). kernel (buffered) and device "
            "(O_DIRECT through io_uring): the path of the reads efused serves in a cache "
            "epoch, decided at its first READ (unsupported: no direct I/O on the backing "
            "file system, e.g. tmpfs). docs/adaptive-io.md.",
            stack=True),
        timeseries("Probe results: predicted cost per open", [
            target(f"max by (mount, class, path) (efuse_io_path_predicted_cost_seconds"
                   f"{{{SEL}}})", "{{mount}} {{class}} {{path}}")],
            "s", "The latest completed probe of each class of read-only opens (size x "
            "cold/warm): mean cost per open of each path as efused measures it. cache: "
            "requests served x 20 us of round trip plus efused's time; passthrough: "
            "registering and unregistering the backing file, the GETATTR a later stat "
            "refetches, 2 us for the kernel's backing file. small_device and large_device: kernel and device path, cost per "
            "MiB read. The cheaper one is committed."),
        timeseries("Device path readahead", [
            target(f"sum by (mount) (rate(efuse_device_readahead_chunk_reads_total{{{SEL}}}"
                   f"[{RATE}])) * 131072", "{{mount}} read ahead", "A"),
            target(f"sum by (mount) (rate(efuse_device_readahead_chunk_waits_total{{{SEL}}}"
                   f"[{RATE}])) * 131072", "{{mount}} waited for", "B"),
            target(f"max by (mount) (efuse_device_readahead_buffer_bytes{{{SEL}}})",
                   "{{mount}} buffers held", "C")],
            "Bps", "Reads efused serves on the device path are read ahead per file (O_DIRECT "
            "chunks of 128 KiB in flight, as deep as the backing device's read_ahead_kb): "
            "bytes read ahead per second, the part a READ had to wait for (close to all of "
            "it when the device limits the reader), and the buffers the streams hold "
            "(at most 64 MiB per mount)."),
    ])
    out += place([
        table("Current choice per class of opens", [target(
            f"max by (mount, class, path) (efuse_io_path_choice{{{SEL}}})", "",
            fmt="table", instant=True)],
            "1 = the path the class is committed to; both 0 while the class probes. "
            "efusectl status NAME shows the same (io_path_choices)."),
        timeseries("Blocking requests: inline or offloaded", [
            target(f"sum by (mount, opcode, path) (rate(efuse_blocking_requests_total"
                   f"{{{SEL}}}[{RATE}]))", "{{mount}} {{opcode}} {{path}}"),
            target(f"max by (mount, opcode, path) (efuse_blocking_predicted_seconds{{{SEL}}})"
                   f" * 1e6", "{{mount}} {{opcode}} {{path}} µs held", "B")],
            "ops", "FSYNC, FSYNCDIR, FALLOCATE, truncating CREATE and size-changing SETATTR "
            "served on the queue or worker that read them (inline: what is queued behind "
            "waits) or on the offload pool (offload), per second; right axis: the latest "
            "probe's cost of each way (inline: service time; offload: the wait for a pool "
            "thread), µs. Queue load itself: Worker utilisation and the per-queue latency "
            "panels.",
            right=("B",)),
        timeseries("Offload pool and /dev/fuse workers", [
            target(f"max by (mount) (efuse_offload_pool_depth{{{SEL}}})",
                   "{{mount}} pool depth", "A"),
            target(f"max by (mount) (efuse_offload_pool_threads{{{SEL}}})",
                   "{{mount}} pool threads", "B"),
            target(f"max by (mount) (efuse_classic_workers{{{SEL}}})",
                   "{{mount}} /dev/fuse workers", "C"),
            target(f"max by (mount, bound) (efuse_classic_workers_limit{{{SEL}}})",
                   "{{mount}} workers {{bound}}", "D"),
            target(f"sum by (mount) (rate(efuse_offload_rejected_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} offloads refused /s", "E")],
            "short", "Offload pool: requests on it now (waiting plus served) and its threads "
            "(at most offload_threads); refused offloads per second (offload_queue full: "
            "served inline). /dev/fuse workers running, between min (threads) and max "
            "(max_threads): one more starts when all are busy, one leaves after 10 s with "
            "two idle."),
        timeseries("Probes by cause", [
            target(f"sum by (mount, cause) (increase(efuse_io_path_probes_total{{{SEL}}}"
                   f"[{RATE}]))", "{{mount}} {{cause}}")],
            "short", "Probes started: start, round (the committed round was used up), period "
            "(adaptive.reprobe_interval passed), drift (the committed path's cost moved 2x "
            "from its prediction, or it was refused), shift (the file sizes moved within the "
            "class). Frequent drift or shift means a changing workload."),
    ])
    return out


def other_mount_rows():
    out = [row("Other FUSE mounts on the host (kernel side, eBPF)")]
    out += place([
        timeseries("Upcalls by opcode (other FUSE mounts)", [target(
            upcalls(OTHER), "{{mount}} {{opcode}}")],
            "reqps", "Requests the kernel sent to FUSE servers other than this efused (sshfs, "
            "libfuse file systems, other efused instances), seen by efused's eBPF programs and "
            "labelled by mountpoint ($other)."),
        timeseries("p99 by opcode (other FUSE mounts)",
                   [quantiles("efuse_kernel_request_duration_seconds", "mount, opcode",
                              OTHER)[1]], "s",
                   "99th percentile of fuse_request_send to fuse_request_end per opcode for "
                   "the other FUSE mounts: their servers' latency as their clients feel it."),
        timeseries("Requests in flight, mean (other FUSE mounts)", [
            kernel_mean_in_flight(OTHER, "{{mount}} sent, not answered", "A")],
            "short", "Mean number of requests in flight over each interval (Little's law: "
            "request rate times the sampled mean latency) for the other FUSE mounts."),
        timeseries("Context switches per upcall (other FUSE mounts)", [target(switches_per_upcall(OTHER), "{{mount}} {{side}} {{kind}}")],
            "short", "Context switches one request costs the other FUSE mounts' servers "
            "(side=daemon) and clients (side=client)."),
    ])
    return out


def panels():
    return (health_rows() + request_rows() + latency_rows() + context_switch_rows()
            + io_path_rows() + adaptive_rows() + other_mount_rows())


def annotation(name, expr, color, text):
    return {"name": name, "datasource": DS, "enable": True, "hide": False,
            "iconColor": color, "expr": expr, "step": "60s", "titleFormat": name,
            "textFormat": text, "tagKeys": "instance", "useValueForTime": False}


# Each expression is > 0 in the minute a reload or restart happened (changes() of a gauge
# that a reload or start sets).
ANNOTATIONS = [
    annotation("Reload", f"changes(efuse_config_last_reload_timestamp_seconds{{{INST}}}[1m]) > 0",
               "blue", "configuration reloaded on {{instance}}"),
    annotation("Failed reload",
               f"(changes(efuse_config_last_reload_timestamp_seconds{{{INST}}}[1m]) > 0) "
               f"and on (instance) (efuse_config_last_reload_success{{{INST}}} == 0)",
               "red", "reload failed on {{instance}}: nothing changed; see the log"),
    annotation("Restart", f"changes(efuse_start_time_seconds{{{INST}}}[1m]) > 0",
               "orange", "efused restarted on {{instance}}"),
]


def variable(name, label, query, all_value):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "multi": True, "includeAll": True, "allValue": all_value,
            "current": {}, "sort": 1}


def dashboard():
    _next_id[0], _y[0] = 1, 0  # ids and layout are the same on every call
    return {
        "title": "efuse",
        "uid": "efuse-overview",
        "description": "efused: FUSE requests (daemon and kernel side), latency, queues, "
                       "context switches, mount health, daemon process and reloads, kernel "
                       "features and fallbacks, other FUSE mounts on the host.",
        "tags": ["efuse", "fuse", "ebpf"],
        "timezone": "browser",
        "schemaVersion": 37,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": REFRESH,
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "refresh": 1},
            variable("instance", "Instance", "label_values(efuse_build_info, instance)", ".*"),
            variable("mount", "efused mount",
                     'label_values(efuse_mount_up{instance=~"$instance"}, mount)', OWN_MOUNTS),
            variable("other", "Other FUSE mount",
                     f'label_values(efuse_kernel_requests_total{{instance=~"$instance", '
                     f'mount=~"{OTHER_MOUNTS}"}}, mount)', OTHER_MOUNTS),
        ]},
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
             "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
             "name": "Annotations & Alerts", "type": "dashboard"}] + ANNOTATIONS},
        "panels": panels(),
    }


if __name__ == "__main__":
    path = os.path.join(HERE, "efuse.json")
    with open(path, "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
    print(f"wrote {path}")
