#!/usr/bin/env python3
"""The Grafana dashboard (dashboards/efuse.json) against the real thing: a Debian Prometheus
scrapes a real efused while fio runs in the mount and a second FUSE server (another efused,
without telemetry) serves an "other" FUSE mount, and every panel target's PromQL (with
$instance, $mount, $other and $__rate_interval substituted) and every variable query must
return at least one series through Prometheus's HTTP API. The annotation queries must mark
a reload (SIGHUP; with --mount it fails, so the failed-reload one too) and a restart. Grafana itself is not packaged here;
its provisioning files are checked for what they must point at, and the Prometheus scrape
example passes `promtool check config`.

Skips (exit 77; a failure under CI=true) only when the kernel cannot load efused's BPF
programs: the kernel-side panels have nothing to show then."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARDS = os.path.join(REPO, "dashboards")
RATE_INTERVAL = "30s"
KERNEL_CANNOT = re.compile(r"no BTF|kernel has no fuse_request|Operation not permitted|"
                           r"needs root|cannot read kernel BTF")


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def api(prom, path, **params):
    url = f"http://127.0.0.1:{prom}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        body = json.loads(get(url))
    except urllib.error.HTTPError as e:  # 400: bad PromQL; the body says why
        body = json.loads(e.read().decode() or "{}")
    return body


def dashboard():
    with open(os.path.join(DASHBOARDS, "efuse.json")) as f:
        return json.load(f)


def targets(d):
    """(panel title, refId, expr) of every panel target, rows' nested panels included."""
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t.get("refId", "?"), t["expr"]))
    walk(d["panels"])
    return out


def promql_regex(value):
    """A value as Grafana interpolates it into a regex matcher: regex-escaped, and each
    backslash doubled for the PromQL string literal."""
    return re.escape(value).replace("\\", "\\\\")


def substitute(expr, instance, mount, other="/no-other-mount"):
    inst, mnt, oth = promql_regex(instance), promql_regex(mount), promql_regex(other)
    for var, val in (("$__rate_interval", RATE_INTERVAL), ("${__rate_interval}", RATE_INTERVAL),
                     ("${instance}", inst), ("$instance", inst), ("${mount}", mnt),
                     ("$mount", mnt), ("${other}", oth), ("$other", oth)):
        expr = expr.replace(var, val)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def seconds(duration):
    mo = re.fullmatch(r"(\d+)(s|m|h)", duration)
    assert mo, duration
    return int(mo.group(1)) * {"s": 1, "m": 60, "h": 3600}[mo.group(2)]


def test_static_files():
    h.run(["promtool", "check", "config", os.path.join(DASHBOARDS, "prometheus.yml")], timeout=60)
    d = dashboard()
    assert d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"instance", "mount", "other"} <= set(variables), list(variables)
    ids = []
    undescribed = []

    def walk(panels):
        for p in panels:
            ids.append(p["id"])
            if p["type"] != "row" and not p.get("description", "").strip():
                undescribed.append(p["title"])
            walk(p.get("panels", []))
    walk(d["panels"])
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert not undescribed, f"panels without a description: {undescribed}"
    # Refreshing faster than Prometheus scrapes only redraws the same points.
    with open(os.path.join(DASHBOARDS, "prometheus.yml")) as f:
        scrape = re.search(r"^\s*scrape_interval:\s*(\S+)", f.read(), re.M).group(1)
    assert seconds(d["refresh"]) >= seconds(scrape), (d["refresh"], scrape)
    # $mount's and $other's "All" never select each other's mounts: efused's mount names
    # have no "/" or ":", the telemetry labels other mounts by path or connection:MAJ:MIN.
    own_all = re.compile(variables["mount"]["allValue"])
    other_all = re.compile(variables["other"]["allValue"])
    for name in ("data", "mnt", "a.b-c_1"):
        assert own_all.fullmatch(name) and not other_all.fullmatch(name), name
    for label in ("/srv/sshfs", "/tmp/x/mnt", "connection:0:52"):
        assert other_all.fullmatch(label) and not own_all.fullmatch(label), label
    # The committed JSON is what the generator writes (edit generate.py, not the JSON).
    out = h.run([sys.executable, "-c",
                 "import json,sys; sys.path.insert(0, sys.argv[1]); import generate; "
                 "print(json.dumps(generate.dashboard(), sort_keys=True))", DASHBOARDS],
                timeout=60).out
    assert json.loads(out) == d, "dashboards/efuse.json differs from dashboards/generate.py output"
    with open(os.path.join(DASHBOARDS, "provisioning", "dashboards", "efuse.yml")) as f:
        provider = f.read()
    assert "type: file" in provider and "path:" in provider, provider
    with open(os.path.join(DASHBOARDS, "provisioning", "datasources",
                           "efuse-prometheus.yml")) as f:
        ds = f.read()
    assert "type: prometheus" in ds and "timeInterval" in ds, ds
    interval = re.search(r"timeInterval:\s*(\S+)", ds).group(1)
    assert seconds(interval) == seconds(scrape), (interval, scrape)


METRICS_PORT = free_port()


@h.mount_options(args=["--metrics", f"127.0.0.1:{METRICS_PORT}"])
def test_every_panel_returns_series(m):
    text = get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
    if "efuse_bpf_up 1" not in text:
        reason = "\n".join(l for l in m.log_text().splitlines() if "bpf:" in l)
        if KERNEL_CANNOT.search(reason):
            h.skip(f"the kernel cannot load efused's BPF programs: {reason.strip()}")
        raise AssertionError(f"efuse_bpf_up is not 1:\n{reason}\n{m.log_tail()}")

    # Another FUSE server on the host for $other: a second efused without telemetry or
    # metrics. This efused's eBPF programs see its mount and label it by mountpoint.
    saved = os.environ.get("EFUSE_BPF")
    os.environ["EFUSE_BPF"] = "0"
    try:
        other = h.EfusedMount(args=["--bus", "none"], tag="efuse-other")
    finally:
        if saved is None:
            del os.environ["EFUSE_BPF"]
        else:
            os.environ["EFUSE_BPF"] = saved
    try:
        check_panels(m, other)
    finally:
        other.cleanup()
    m.check_alive()


def check_panels(m, other):
    tmp = os.path.join(m.tmp, "prom")
    os.mkdir(tmp)
    prom_port = free_port()
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:  # the example's job, pointed at this efused, scraped every 1 s
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: efused\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{METRICS_PORT}']\n")
    prom = h.spawn(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp}/data",
                    f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = h.spawn(["fio", "--name=load", f"--directory={m.mnt}", "--size=16M", "--bs=4k",
                    "--rw=randrw", "--ioengine=psync", "--time_based", "--runtime=45",
                    "--numjobs=2", "--nrfiles=4", "--file_service_type=random",
                    "--openfiles=1", "--invalidate=0"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()

    def metadata(root):  # keeps daemon-side requests (lookup, getattr, create, ...) flowing
        d = os.path.join(root, "meta")
        os.makedirs(d, exist_ok=True)
        i = 0
        while not stop.is_set():
            p = os.path.join(d, f"f{i % 50}")
            try:
                with open(p, "w") as f:
                    f.write("x")
                    if i % 10 == 0:  # FSYNC for the queue balancing panel
                        os.fsync(f.fileno())
                with open(p, "rb") as f:  # read-only opens for the adaptive I/O path panels
                    f.read()
                os.stat(p)
                os.listdir(d)
                try:  # a daemon-side error for "Daemon errors by errno": ENODATA
                    os.getxattr(p, "user.efuse-test-absent")
                except OSError:
                    pass
            except OSError:
                if stop.is_set():  # the restart below takes the mount away for a moment
                    return
                raise
            i += 1
            time.sleep(0.005)
    metas = [threading.Thread(target=metadata, args=(root,), daemon=True)
             for root in (m.mnt, other.mnt)]
    for t in metas:
        t.start()
    try:
        instance = f"127.0.0.1:{METRICS_PORT}"
        mount = os.path.basename(m.mnt)
        other_mount = other.mnt

        def query(q):
            try:
                r = api(prom_port, "query", query=q)
            except (OSError, ValueError):  # Prometheus still starting
                return None
            return r["data"]["result"] if r.get("status") == "success" else None

        def enough_history():
            r = query(f'count_over_time(efuse_bpf_up{{instance="{instance}"}}[{RATE_INTERVAL}])')
            return bool(r) and float(r[0]["value"][1]) >= 8
        h.wait_until(enough_history, 60, interval=0.5, what="Prometheus to scrape efused 8 times")
        # A reload for the reload panels and annotations. Under --mount there is no file to
        # re-read, so it fails: the failed-reload annotation gets its event too.
        os.kill(m.proc.pid, signal.SIGHUP)
        h.wait_until(lambda: query(f'efuse_config_reloads_total{{instance="{instance}", '
                                   f'result="failure"}} == 1'), 30, interval=0.5,
                     what="Prometheus to see the failed reload")
        h.wait_until(lambda: query(f'efuse_kernel_requests_total{{instance="{instance}", '
                                   f'mount="{other_mount}"}}'), 30, interval=0.5,
                     what=f"the telemetry to see requests of the other mount {other_mount}")

        d = dashboard()
        failures = []
        # Variables: label_values(selector, label) == /api/v1/label/<label>/values?match[]=...
        want = {"instance": (instance, None), "mount": (mount, other_mount),
                "other": (other_mount, mount)}
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            mo = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
            assert mo, v["query"]
            sel = substitute(mo.group(1), instance, mount, other_mount)
            r = api(prom_port, f"label/{mo.group(2)}/values", **{"match[]": sel})
            vals = r.get("data") or []
            present, absent = want[v["name"]]
            if r.get("status") != "success" or present not in vals:
                failures.append(f"variable ${v['name']}: {present!r} not in {vals} "
                                f"({r.get('error')})")
            if absent is not None and absent in vals:
                failures.append(f"variable ${v['name']}: {absent!r} must not be in {vals}")
        checked = 0
        for title, ref, expr in targets(d):
            q = substitute(expr, instance, mount, other_mount)
            r = api(prom_port, "query", query=q)
            checked += 1
            if r.get("status") != "success":
                failures.append(f"{title} [{ref}]: {r.get('errorType')}: {r.get('error')}\n    {q}")
            elif not r["data"]["result"]:
                failures.append(f"{title} [{ref}]: no series\n    {q}")
        assert checked >= 20, f"only {checked} targets found"

        def annotation_events(name):
            a = next(a for a in d["annotations"]["list"] if a.get("name") == name)
            end = time.time()
            r = api(prom_port, "query_range", query=substitute(a["expr"], instance, mount),
                    start=end - 300, end=end, step=a["step"].rstrip("s"))
            assert r.get("status") == "success", f"annotation {name}: {r.get('error')}"
            return r["data"]["result"]
        for name in ("Reload", "Failed reload"):
            if not annotation_events(name):
                failures.append(f"annotation {name}: no event after a failed reload")
        if annotation_events("Restart"):
            failures.append("annotation Restart: an event before any restart")
        assert not failures, f"{len(failures)} of {checked} panel queries failed:\n" + \
            "\n".join(failures)
        print(f"{checked} panel targets, the variables and the reload annotations returned series")

        stop.set()
        for t in metas:
            t.join(timeout=10)
        h.reap(load)
        m.restart()  # same --metrics port: Prometheus sees a new efuse_start_time_seconds
        h.wait_until(lambda: annotation_events("Restart"), 30, interval=0.5,
                     what="the Restart annotation to mark efused's restart")
    finally:
        stop.set()
        for t in metas:
            t.join(timeout=10)
        h.reap(load)
        h.reap(prom)


if __name__ == "__main__":
    h.main(globals(), require=("prometheus", "promtool", "fio"))
