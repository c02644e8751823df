#!/usr/bin/env python3
"""io_path: auto chooses cache or passthrough per file from what earlier opens measured
(docs/adaptive-io.md): a small file read again and again ends on the page cache (its reads
stop reaching efused), large files streamed once end on passthrough; each decision shows in
/metrics (efuse_io_path_decisions_total, efuse_io_path_choice) and in `efusectl status a`.

efused runs with --config (adaptive: probe 2) and a private D-Bus, as in test_dbus.py.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port, parse, scrape, value  # noqa: E402
from test_dbus import DbusEfused, require_daemon_contract  # noqa: E402

J = os.path.join
MIB = 1 << 20


class AdaptiveEfused(DbusEfused):
    """DbusEfused whose mount "a" has io_path auto with short probes, /metrics on a port."""

    def __init__(self):
        self.port = free_port()
        self.adaptive = "{probe: 2, round: 1000, reprobe_interval: 3600}"
        super().__init__(policy="open", start=False)
        self.listen = f"127.0.0.1:{self.port}"
        self.write_config()
        self.start()

    def write_config(self, with_b=False, broken=False):
        lines = ["metrics:", f'  listen: "{getattr(self, "listen", "127.0.0.1:0")}"',
                 "mounts:", "  - name: a", f"    mountpoint: {self.mnts[0]}",
                 "    backend: passthrough", f"    source: {self.srcs[0]}",
                 "    io_path: auto",
                 f"    adaptive: {getattr(self, 'adaptive', '{}')}"]
        with open(self.cfg + ".new", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(self.cfg + ".new", self.cfg)

    def samples(self):
        return parse(scrape(self.port))

    def epochs(self):
        return value(self.samples(), "efuse_io_path_epochs_measured_total", mount="a") or 0

    def read_measured(self, name, want=None):
        """Opens, reads and closes mnt/NAME, then waits until efused has measured the epoch
        (the kernel sends RELEASE after close() returns), so that each open is decided
        with the previous ones' measurements."""
        n = self.epochs()
        with open(J(self.mnt, name), "rb") as f:
            while True:
                chunk = f.read(MIB)
                if not chunk:
                    break
                if want is not None:
                    assert chunk == want, name
        h.wait_until(lambda: self.epochs() > n, 10, what=f"the epoch of {name} measured")


def require_passthrough(m):
    granted = value(m.samples(), "efuse_kernel_feature", mount="a", feature="passthrough")
    if granted != 1:
        h.skip("the kernel did not grant FUSE passthrough (not root, or a kernel without it)")


def choice(samples, klass):
    return {l["path"]: v for n, l, v in samples
            if n == "efuse_io_path_choice" and l.get("mount") == "a" and l.get("class") == klass}


def test_hot_small_file_ends_on_cache_and_large_streams_on_passthrough():
    require_daemon_contract()
    with AdaptiveEfused() as m:
        require_passthrough(m)
        hot = J(m.src, "hot")
        h.write_file(hot, b"h" * 4096)
        # Read it again and again (open, read, close): the first opens probe both paths; a
        # warm reopen on the cache costs nothing, so the file settles on the cache.
        for _ in range(40):
            m.read_measured("hot", b"h" * 4096)
        # Now it is served from the page cache: opens still reach efused, but no READ and no
        # passthrough open does.
        s = m.samples()
        before = [value(s, "efuse_requests_total", mount="a", opcode=op) or 0
                  for op in ("open", "read")]
        pt_before = value(s, "efuse_passthrough_opens_total", mount="a") or 0
        for _ in range(10):
            with open(J(m.mnt, "hot"), "rb") as f:
                assert f.read() == b"h" * 4096
        s = m.samples()
        after = [value(s, "efuse_requests_total", mount="a", opcode=op) or 0
                 for op in ("open", "read")]
        assert after[0] - before[0] == 10 and after[1] == before[1], (before, after)
        assert (value(s, "efuse_passthrough_opens_total", mount="a") or 0) == pt_before
        assert choice(s, "small_warm_read") == {"cache": 1, "passthrough": 0}, \
            choice(s, "small_warm_read")
        assert (value(s, "efuse_io_path_decisions_total", mount="a", decision="cache") or 0) >= 5

        # Large files read once each: the probe's cache epochs cost a READ per request, a
        # passthrough epoch one backing registration, and the class commits to passthrough.
        for i in range(6):
            with open(J(m.src, f"big{i}"), "wb") as f:
                f.write(os.urandom(MIB) * 12)
        pt_before = value(m.samples(), "efuse_passthrough_opens_total", mount="a") or 0
        for i in range(6):
            m.read_measured(f"big{i}")
        s = m.samples()
        assert choice(s, "large_cold_read") == {"cache": 0, "passthrough": 1}, \
            choice(s, "large_cold_read")
        predicted = value(s, "efuse_io_path_decisions_total", mount="a",
                          decision="passthrough", reason="predicted")
        assert predicted and predicted >= 2, predicted
        assert value(s, "efuse_passthrough_opens_total", mount="a") - pt_before >= 4
        cost = {l["path"]: v for n, l, v in s if n == "efuse_io_path_predicted_cost_seconds"
                and l.get("mount") == "a" and l.get("class") == "large_cold_read"}
        assert cost["cache"] > cost["passthrough"], cost

        # efusectl status shows the same choices.
        text = m.ctl("status", "a").out
        assert "io_path_choices.classes.small_warm_read.choice: cache" in text, text
        assert "io_path_choices.classes.large_cold_read.choice: passthrough" in text, text
        view = json.loads(m.ctl("--json", "status", "a").out)
        assert view["io_path_choices"]["classes"]["large_cold_read"]["phase"] == "commit", view
        assert view["io_path_choices"]["decisions"]["passthrough_predicted"] >= 2, view


def test_adaptive_settings_apply_live_and_bad_values_are_refused():
    require_daemon_contract()
    with AdaptiveEfused() as m:
        h.write_file(J(m.src, "f"), b"f" * 1000)
        m.read_measured("f")
        before = json.loads(m.ctl("--json", "status", "a").out)
        # A change of adaptive: applied live, not by remounting: the session's counters go on.
        m.adaptive = "{probe: 3, round: 10, reprobe_interval: 0.5}"
        m.write_config()
        m.ctl("reload")
        m.read_measured("f")
        after = json.loads(m.ctl("--json", "status", "a").out)
        assert after["state"] == "mounted", after
        assert after["requests"] > before["requests"], (before["requests"], after["requests"])
        assert sum(after["io_path_choices"]["decisions"].values()) == \
            sum(before["io_path_choices"]["decisions"].values()) + 1, (before, after)
        # Out of range: the reload is refused with FILE:LINE:COLUMN and changes nothing.
        m.adaptive = "{probe: 0}"
        m.write_config()
        r = m.ctl("reload", expect=1)
        assert f"{m.cfg}:9:" in r.err and \
            "mounts[0].adaptive.probe must be between 1 and 64, not 0" in r.err, r.err
        m.adaptive = "{probes: 4}"
        m.write_config()
        r = m.ctl("reload", expect=1)
        assert "unknown key 'probes' in mounts[0].adaptive; did you mean 'probe'?" in r.err, r.err
        r = h.run([h.EFUSED, "--check-config", m.cfg], check=False)
        assert r.rc == 1 and "did you mean 'probe'?" in r.err, r
        assert json.loads(m.ctl("--json", "status", "a").out)["state"] == "mounted"


def test_fsync_is_balanced_and_visible():
    """FSYNC goes through the queue balancing scheduler: every one is counted by how it was
    served, and `efusectl status a` shows its state. (Which way wins depends on the storage:
    tests/unit/accel/offload_test.cpp drives that with simulated times.)"""
    require_daemon_contract()
    with AdaptiveEfused() as m:
        with open(J(m.mnt, "synced"), "wb") as f:
            for i in range(12):
                f.write(b"x" * 4096)
                os.fsync(f.fileno())
        s = m.samples()
        served = value(s, "efuse_blocking_requests_total", mount="a", opcode="fsync")
        assert served == 12, served
        assert (value(s, "efuse_blocking_requests_total", mount="a", opcode="fsync",
                      path="offload", reason="probe") or 0) >= 1  # the probe tried both
        assert value(s, "efuse_blocking_predicted_seconds", mount="a", opcode="fsync",
                     path="inline") is not None
        with open(J(m.src, "synced"), "rb") as f:
            assert f.read() == b"x" * 4096 * 12
        q = json.loads(m.ctl("--json", "status", "a").out)["queue_balancing"]["fsync"]
        assert q["inline"] + q["offload"] == 12 and q["phase"] in ("probe", "commit"), q
        assert "queue_balancing.fsync.choice:" in m.ctl("status", "a").out


def test_queue_balancing_off_serves_fsync_inline():
    """EFUSE_QUEUE_BALANCING=0 (the bench's efused-nobalance side): FSYNC is served on the
    queue that read it, without consulting the scheduler."""
    port = free_port()
    old = os.environ.get("EFUSE_QUEUE_BALANCING")
    os.environ["EFUSE_QUEUE_BALANCING"] = "0"
    try:
        m = h.EfusedMount(args=["--metrics", f"127.0.0.1:{port}"], tag="efuse-adaptive")
    finally:
        if old is None:
            del os.environ["EFUSE_QUEUE_BALANCING"]
        else:
            os.environ["EFUSE_QUEUE_BALANCING"] = old
    with m:
        name = os.path.basename(m.mnt)
        with open(J(m.mnt, "synced"), "wb") as f:
            for _ in range(6):
                f.write(b"y" * 4096)
                os.fsync(f.fileno())
        s = parse(scrape(port))
        assert value(s, "efuse_requests_total", mount=name, opcode="fsync") == 6
        assert value(s, "efuse_blocking_requests_total", mount=name) is None


def test_fixed_io_path_counts_fixed_decisions():
    port = free_port()
    with h.EfusedMount(args=["--io-path", "cache", "--metrics", f"127.0.0.1:{port}"],
                       tag="efuse-adaptive") as m:
        name = os.path.basename(m.mnt)
        h.write_file(J(m.src, "f"), b"x" * 100000)
        for _ in range(3):
            with open(J(m.mnt, "f"), "rb") as f:
                assert len(f.read()) == 100000
        s = parse(scrape(port))
        # An open that comes before the previous one's RELEASE joins its path (no decision).
        assert value(s, "efuse_io_path_decisions_total", mount=name, decision="cache",
                     reason="fixed") >= 1
        assert value(s, "efuse_io_path_decisions_total", mount=name,
                     decision="passthrough") is None
        assert not [n for n, l, v in s if n == "efuse_io_path_choice" and l.get("mount") == name]


if __name__ == "__main__":
    h.main(globals())
