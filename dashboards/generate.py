#!/usr/bin/env python3
"""Writes dashboards/efuse.json, the Grafana dashboard for efused, from the panel list below.

Edit this file, run it (`python3 dashboards/generate.py`), commit both. Every panel target
is PromQL over efused's metrics (docs/metrics.md: daemon side; docs/bpf.md: kernel side via
eBPF); tests/integration/test_dashboards.py evaluates each of them against a real
Prometheus that scraped a real efused under fio load and fails on any that returns nothing.

Variables: $datasource (a Prometheus data source), $instance (efused instances),
$mount (efused's configured mount names and, from the eBPF telemetry, the mountpoints of
every other FUSE mount on those hosts). Python standard library only.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance", mount=~"$mount"'
INST = 'instance=~"$instance"'
RATE = "$__rate_interval"

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
    for i, p in enumerate(panels):
        p["gridPos"] = {"h": h, "w": w, "x": i * w, "y": _y[0]}
    _y[0] += h
    return panels


def timeseries(title, targets, unit="short", description="", stack=False):
    return {
        "type": "timeseries", "title": title, "id": _id(), "datasource": DS,
        "description": description, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"}}},
            "overrides": []},
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


def stat(title, targets, description="", mappings=None, unit="short"):
    return {
        "type": "stat", "title": title, "id": _id(), "datasource": DS,
        "description": description, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                     "thresholds": {"mode": "absolute", "steps": [
                                         {"color": "red", "value": None},
                                         {"color": "green", "value": 1}]}},
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


def quantiles(metric, by, extra_sel=""):
    sel = SEL + extra_sel
    return [target(f'histogram_quantile({q}, sum by ({by}, le) '
                   f'(rate({metric}_bucket{{{sel}}}[{RATE}])))',
                   f"p{int(q * 100)} " + " ".join("{{%s}}" % b for b in by.split(", ")),
                   ref=r)
            for q, r in ((0.5, "A"), (0.99, "B"))]


UP_MAP = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                        "1": {"text": "UP", "color": "green"}}}]


def panels():
    out = []
    out.append(row("Health"))
    out += place([
        stat("Mount health", [target(f"efuse_mount_up{{{SEL}}}", "{{mount}}")],
             "efuse_mount_up: 1 while the mount is live and serving (docs/metrics.md).",
             UP_MAP),
        stat("eBPF telemetry", [
            target(f"efuse_bpf_up{{{INST}}}", "up {{instance}}"),
            target(f"efuse_bpf_programs_attached{{{INST}}}", "programs {{instance}}", "B")],
            "efuse_bpf_up and programs attached (2: fuse_request_send, fuse_request_end). 0 "
            "means off: efuse_bpf_off_reason and efused's log say why (docs/bpf.md)."),
        timeseries("Daemon CPU and memory", [
            target(f"rate(efuse_process_cpu_seconds_total{{{INST}}}[{RATE}])", "CPU {{instance}}"),
        ], "percentunit", "CPU seconds per second used by efused."),
    ], h=5)

    out.append(row("Requests"))
    out += place([
        timeseries("Request rate by opcode (daemon)", [target(
            f"sum by (opcode) (rate(efuse_requests_total{{{SEL}}}[{RATE}]))", "{{opcode}}")],
            "reqps", "Requests efused handled per second (efuse_requests_total).", stack=True),
        timeseries("Upcalls by opcode (kernel, eBPF)", [target(
            f"sum by (mount, opcode) (rate(efuse_kernel_requests_total{{{SEL}}}[{RATE}]))",
            "{{mount}} {{opcode}}")],
            "reqps", "Requests the kernel sent to the FUSE server, every FUSE mount on the host "
            "(efuse_kernel_requests_total).", stack=True),
    ])
    out += place([
        timeseries("Errors by opcode (kernel)", [target(
            f"sum by (mount, opcode) (rate(efuse_kernel_request_errors_total{{{SEL}}}[{RATE}]))",
            "{{mount}} {{opcode}}")],
            "reqps", "Replies with out.h.error != 0, per second."),
        timeseries("Requests in flight (kernel)", [target(
            f"sum by (mount, opcode) (efuse_kernel_requests_in_flight{{{SEL}}})",
            "{{mount}} {{opcode}}")],
            "short", "Requests sent to the server and not answered yet."),
        timeseries("Worker utilisation", [target(
            f"rate(efuse_worker_busy_seconds_total{{{SEL}}}[{RATE}])", "{{mount}} {{worker}}")],
            "percentunit", "Fraction of time each efused worker (classic thread or io_uring "
            "queue) spends handling requests."),
    ])

    out.append(row("Latency"))
    out += place([
        heatmap("Daemon latency (efuse_request_duration_seconds)",
                f"sum by (le) (rate(efuse_request_duration_seconds_bucket{{{SEL}}}[{RATE}]))",
                "Decode to reply written, inside efused."),
        heatmap("Kernel latency (efuse_kernel_request_duration_seconds)",
                f"sum by (le) (rate(efuse_kernel_request_duration_seconds_bucket{{{SEL}}}[{RATE}]))",
                "fuse_request_send to fuse_request_end: kernel queueing + server + reply."),
    ])
    out += place([
        timeseries("p50 / p99 by opcode (daemon)",
                   quantiles("efuse_request_duration_seconds", "opcode"), "s"),
        timeseries("p50 / p99 by opcode (kernel)",
                   quantiles("efuse_kernel_request_duration_seconds", "mount, opcode"), "s"),
    ])
    out += place([
        timeseries("p99 by queue (kernel)",
                   [quantiles("efuse_kernel_queue_request_duration_seconds", "mount, queue")[1]],
                   "s", "queue = io_uring queue id (one per CPU) or \"classic\" (/dev/fuse)."),
        timeseries("Requests by queue (kernel)", [target(
            f"sum by (mount, queue) (rate(efuse_kernel_queue_request_duration_seconds_count"
            f"{{{SEL}}}[{RATE}]))", "{{mount}} q{{queue}}")], "reqps"),
    ])

    out.append(row("Context switches"))
    out += place([
        timeseries("Context switches", [target(
            f"sum by (mount, side, kind) (rate(efuse_context_switches_total{{{SEL}}}[{RATE}]))",
            "{{mount}} {{side}} {{kind}}")],
            "ops", "side=daemon: FUSE server threads; side=client: tasks with a request of the "
            "mount outstanding. involuntary = preempted."),
        timeseries("Context switches per upcall", [target(
            f"sum by (mount, side, kind) (rate(efuse_context_switches_total{{{SEL}}}[{RATE}]))"
            f" / on (mount) group_left "
            f"sum by (mount) (rate(efuse_kernel_requests_total{{{SEL}}}[{RATE}]))",
            "{{mount}} {{side}} {{kind}}")],
            "short", "What one request costs in context switches, per side."),
    ])

    out.append(row("Kernel features and I/O path"))
    out += place([
        table("Kernel features (negotiated at INIT)", [target(
            f"efuse_kernel_feature{{{SEL}}}", "", fmt="table", instant=True)],
            "1 = enabled for the mount (offered by the kernel and accepted by efused)."),
        timeseries("Passthrough opens and refusals", [
            target(f"sum by (mount) (rate(efuse_passthrough_opens_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} passthrough"),
            target(f"sum by (mount) (rate(efuse_passthrough_refusals_total{{{SEL}}}[{RATE}]))",
                   "{{mount}} refused", "B")],
            "ops", "Opens served by kernel passthrough, and opens that asked for it and fell "
            "back to I/O through the daemon."),
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


def dashboard():
    _next_id[0], _y[0] = 1, 0  # ids and layout are the same on every call
    return {
        "title": "efuse",
        "uid": "efuse-overview",
        "description": "efused: FUSE requests (daemon and kernel side), latency, queues, "
                       "context switches, mount health, kernel features.",
        "tags": ["efuse", "fuse", "ebpf"],
        "timezone": "browser",
        "schemaVersion": 37,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "refresh": 1},
            {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
             "query": {"query": "label_values(efuse_build_info, instance)", "refId": "instance"},
             "definition": "label_values(efuse_build_info, instance)",
             "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
             "current": {}, "sort": 1},
            {"name": "mount", "label": "Mount", "type": "query", "datasource": DS,
             "query": {"query": 'label_values({__name__=~"efuse_mount_up|efuse_kernel_requests_total",'
                                ' instance=~"$instance"}, mount)', "refId": "mount"},
             "definition": 'label_values({__name__=~"efuse_mount_up|efuse_kernel_requests_total",'
                           ' instance=~"$instance"}, mount)',
             "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
             "current": {}, "sort": 1},
        ]},
        "annotations": {"list": []},
        "panels": panels(),
    }


if __name__ == "__main__":
    path = os.path.join(HERE, "efuse.json")
    with open(path, "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
    print(f"wrote {path}")
