#!/usr/bin/env python3
"""/metrics against the real thing: a Debian Prometheus server scrapes a real efused under
load, its HTTP API returns efused's series, and promtool finds nothing to complain about
in the exposition or in the scrape config."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port  # noqa: E402


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def query(prom, expr):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(get(url))
    assert body["status"] == "success", body
    return body["data"]["result"]


METRICS_PORT = free_port()


@h.mount_options(args=["--metrics", f"127.0.0.1:{METRICS_PORT}"])
def test_prometheus_scrapes_efused_under_load(m):
    text = get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), \
        f"promtool check metrics complained:\n{check.stdout}{check.stderr}"

    tmp = tempfile.mkdtemp(prefix="efuse-prom-", dir=m.tmp)
    prom_port = free_port()
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: efused\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{METRICS_PORT}']\n")
    h.run(["promtool", "check", "config", cfg], timeout=60)
    prom = h.spawn(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp}/data",
                    f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = h.spawn(["fio", "--name=load", f"--directory={m.mnt}", "--size=16M", "--bs=4k",
                    "--rw=randrw", "--ioengine=psync", "--time_based", "--runtime=60",
                    "--numjobs=2", "--invalidate=0"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def scraped():
            try:
                up = query(prom_port, 'up{job="efused"}')
                ops = query(prom_port, 'efuse_requests_total{opcode="lookup"}')
            except (OSError, ValueError):
                return False
            return bool(up) and up[0]["value"][1] == "1" and bool(ops)
        h.wait_until(scraped, 60, interval=0.5, what="Prometheus scraping efused")
        mount = os.path.basename(m.mnt)
        for expr in [f'efuse_mount_up{{mount="{mount}"}} == 1',
                     'efuse_build_info',
                     'efuse_process_resident_memory_bytes > 0',
                     f'sum(efuse_worker_requests_total{{mount="{mount}"}}) > 0',
                     f'efuse_kernel_protocol_minor{{mount="{mount}"}} >= 31',
                     'efuse_request_duration_seconds_bucket{le="+Inf"}']:
            assert query(prom_port, expr), f"no series for {expr}"
        h.run(["promtool", "query", "instant", f"http://127.0.0.1:{prom_port}",
               "efuse_mount_up"], timeout=60)
    finally:
        h.reap(load)
        h.reap(prom)
    m.check_alive()


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS_PORT = free_port()
MEMORY_DOCS_PORT = free_port()
INTERCEPT_DOCS_PORT = free_port()
# --intercept publishes into a directory of this test's, not the host's /run/efuse/intercept.
INTERCEPT_DIR = tempfile.mkdtemp(prefix="efuse-prom-intercept-", dir="/tmp")
os.environ["EFUSE_INTERCEPT_DIR"] = INTERCEPT_DIR
atexit.register(shutil.rmtree, INTERCEPT_DIR, True)


@h.mount_options(args=["--metrics", f"127.0.0.1:{DOCS_PORT}"])
def test_every_metric_is_documented(m):
    """Every metric family efused exports (after some I/O, so per-opcode and backend series
    exist) has its row in docs/metrics.md and its place in the README's metrics reference."""
    check_documented(m, DOCS_PORT)


@h.mount_options(backend="memory", args=["--metrics", f"127.0.0.1:{MEMORY_DOCS_PORT}"])
def test_every_memory_backend_metric_is_documented(m):
    """The same for a memory mount, whose backend exports series of its own."""
    text = check_documented(m, MEMORY_DOCS_PORT)
    assert "efuse_memory_bytes_limit" in text, text


@h.mount_options(args=["--intercept", "--metrics", f"127.0.0.1:{INTERCEPT_DOCS_PORT}"])
def test_every_intercept_metric_is_documented(m):
    """The same for a mount with --intercept, which exports the library's counters."""
    text = check_documented(m, INTERCEPT_DOCS_PORT)
    assert "efuse_intercept_calls_total" in text, text


def check_documented(m, port):
    h.write_file(m.m("f"), "x" * 10000)
    h.run(["cat", m.m("f")], timeout=60)
    text = get(f"http://127.0.0.1:{port}/metrics")
    names = sorted({line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")})
    assert len(names) > 30, names
    for doc in ("docs/metrics.md", "README.md"):
        with open(os.path.join(REPO, doc)) as f:
            body = f.read()
        missing = [n for n in names if f"`{n}`" not in body]
        assert not missing, f"exported but not documented in {doc}: {missing}"
    return text


if __name__ == "__main__":
    h.main(globals(), require=("prometheus", "promtool", "fio"))
