#!/usr/bin/env python3
"""The eBPF telemetry checks itself and can be turned down: when the tracepoints' sends and
ends stop pairing efused says so (efuse_bpf_up 0, efuse_bpf_off_reason{reason="mismatch"},
one log line) and detaches its programs instead of serving wrong numbers, while the mounts
go on serving. The config's `telemetry: full | requests | off` and
`telemetry_sample_every: N` change live on reload (efuse_bpf_level,
efuse_bpf_latency_sample_every and `efusectl status` say what runs); every request is
counted whatever N, 1 in N timed; a bad value is refused with its place in the file and
changes nothing.

Every assertion is about this test's own efused (its /metrics, its log, its program ids):
the BPF programs see every FUSE mount on the host, and other FUSE servers run beside it.

Skips (exit 77; a failure under CI=true) only when the kernel truly cannot load the
programs: no BTF, no FUSE tracepoints, no privilege to load BPF."""

import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port, parse, scrape, value  # noqa: E402
from test_bpf_telemetry import bpf_up_or_skip  # noqa: E402
from test_dbus import DbusEfused, require_daemon_contract  # noqa: E402

PORT = free_port()


def program_ids(m):
    """The ids efused's "telemetry on" log line names (bpftool prog show id A,B,...)."""
    found = re.findall(r"bpftool prog show id ([0-9,]+)", m.log_text())
    assert found, f"no 'telemetry on' line with program ids\n{m.log_tail()}"
    return [int(i) for i in found[-1].split(",")]


def loaded(ids):
    """How many of the program ids the kernel still has."""
    n = 0
    for i in ids:
        r = subprocess.run(["bpftool", "prog", "show", "id", str(i)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        n += r.returncode == 0
    return n


def lookups(m, n, tag):
    """n LOOKUPs of names never asked for before (each one an upcall)."""
    for i in range(n):
        assert not os.path.exists(m.m(f"missing-{tag}-{i}"))


@h.mount_options(args=["--metrics", f"127.0.0.1:{PORT}", "--telemetry-sample-every", "1"],
                 start=False)
def test_self_check_withdraws_when_sends_and_ends_stop_matching(m):
    # EFUSE_BPF_TEST_MISMATCH=1 (test only) files every timed send under a key no end looks
    # up: the programs really run and really fail to pair, as on a kernel whose tracepoints
    # disagree on the key (Debian's 6.12 with the old unique-based key). Every request is
    # timed here (1 in 1), so that 1,500 LOOKUPs fill the self-check's window.
    command = m.cmd()
    m.cmd = lambda: ["env", "EFUSE_BPF_TEST_MISMATCH=1"] + command  # env execs: same pid
    m.start()
    bpf_up_or_skip(m, PORT)  # the first scrape starts the self-check's window
    ids = program_ids(m)
    assert loaded(ids) == len(ids)
    lookups(m, 1500, "a")
    s = parse(scrape(PORT))
    assert value(s, "efuse_bpf_up") == 0, value(s, "efuse_bpf_up")
    assert value(s, "efuse_bpf_off_reason", reason="mismatch") == 1
    assert value(s, "efuse_bpf_programs_attached") == 0
    assert value(s, "efuse_bpf_load_failures_total") == 0  # not refused: withdrawn
    # No wrong numbers served.
    assert value(s, "efuse_kernel_requests_total") is None
    assert value(s, "efuse_kernel_request_duration_seconds_count") is None
    # The programs are gone (the kernel frees them after an RCU grace period).
    h.wait_until(lambda: loaded(ids) == 0, 10, interval=0.1, what="the programs to be detached")
    # The mount goes on serving, and the verdict is logged once, not on every scrape.
    h.assert_serves(m)
    lookups(m, 200, "b")
    parse(scrape(PORT))
    lines = [l for l in m.log_text().splitlines() if "stopped matching" in l]
    assert len(lines) == 1, lines
    assert "efuse_bpf_up 0" in lines[0], lines[0]
    assert value(parse(scrape(PORT)), "efuse_requests_total", opcode="lookup") >= 1700


@h.mount_options(args=["--metrics", f"127.0.0.1:{PORT}", "--telemetry-sample-every", "1"])
def test_healthy_keying_counts_every_request_once(m):
    # Timed requests are keyed by their struct fuse_req address: with every request timed,
    # each LOOKUP of this mount is counted once, timed once, and the self-check stays quiet
    # over many windows.
    bpf_up_or_skip(m, PORT)
    own = dict(mount=os.path.basename(m.mnt))
    before = value(parse(scrape(PORT)), "efuse_kernel_requests_total", opcode="lookup", **own) or 0
    done_before = value(parse(scrape(PORT)), "efuse_kernel_request_duration_seconds_count",
                        opcode="lookup", **own) or 0
    for round_ in range(5):
        lookups(m, 1000, f"r{round_}")
        assert value(parse(scrape(PORT)), "efuse_bpf_up") == 1
    s = parse(scrape(PORT))
    assert value(s, "efuse_kernel_requests_total", opcode="lookup", **own) - before == 5000
    assert value(s, "efuse_kernel_request_duration_seconds_count", opcode="lookup", **own) \
        - done_before == 5000
    assert value(s, "efuse_kernel_requests_in_flight", **own) == 0
    assert value(s, "efuse_bpf_off_reason", reason="mismatch") is None
    assert not [l for l in m.log_text().splitlines() if "stopped matching" in l]


class LevelsEfused(DbusEfused):
    """efused --config CFG --bus PRIVATE serving mount "a", /metrics on PORT, with a
    `telemetry:` line (or a raw one, to test bad values)."""

    def __init__(self):
        self.telemetry = "requests"
        self.sample_every = 1  # every request timed: the assertions on latency are exact
        super().__init__(start=False)

    def write_config(self, with_b=False, broken=False, raw=None, raw_sample=None):
        line = raw if raw is not None else f"telemetry: {self.telemetry}"
        sample = raw_sample if raw_sample is not None else \
            f"telemetry_sample_every: {self.sample_every}"
        lines = ["metrics:", f'  listen: "127.0.0.1:{PORT}"', line, sample, "mounts:",
                 "  - name: a", f"    mountpoint: {self.mnts[0]}",
                 "    backend: passthrough", f"    source: {self.srcs[0]}"]
        with open(self.cfg + ".new", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(self.cfg + ".new", self.cfg)

    def level(self, level):
        self.telemetry = level
        self.write_config()
        self.ctl("reload")

    def sampling(self, every):
        self.sample_every = every
        self.write_config()
        self.ctl("reload")


def switches(s, mount):
    return sum(v for n, l, v in s
               if n == "efuse_context_switches_total" and l.get("mount") == mount)


def running_level(s):
    on = [l["level"] for n, l, v in s if n == "efuse_bpf_level" and v == 1]
    assert len(on) == 1, on
    return on[0]


def test_levels_change_live_on_reload():
    require_daemon_contract()
    with LevelsEfused() as m:
        m.start()
        s = bpf_up_or_skip(m, PORT)
        assert running_level(s) == "requests"
        assert "telemetry: requests, every request timed\n" in m.ctl("status").out
        ids = program_ids(m)

        # requests: counts and latency of this mount, no context switches.
        lookups(m, 300, "req")
        s = parse(scrape(PORT))
        n_req = value(s, "efuse_kernel_requests_total", mount="a", opcode="lookup")
        assert n_req >= 300, n_req
        assert switches(s, "a") == 0, switches(s, "a")

        # full, live: the same programs (nothing reloaded), counters go on.
        m.level("full")
        s = parse(scrape(PORT))
        assert running_level(s) == "full" and value(s, "efuse_bpf_up") == 1
        assert program_ids(m) == ids
        assert value(s, "efuse_kernel_requests_total", mount="a", opcode="lookup") >= n_req
        lookups(m, 300, "full")
        s = parse(scrape(PORT))
        client = value(s, "efuse_context_switches_total", mount="a", side="client",
                       kind="voluntary") or 0
        daemon = value(s, "efuse_context_switches_total", mount="a", side="daemon",
                       kind="voluntary") or 0
        # Each LOOKUP is a round trip the client sleeps through; the server thread that
        # replies sleeps in between (a few requests may have found it awake).
        assert client >= 300 * 0.8 and daemon >= 300 * 0.5, (client, daemon)
        status = json.loads(m.ctl("--json", "status").out)["telemetry"]
        assert status["level"] == "full" and status["up"] is True, status

        # full -> requests -> full: switches made at level requests are not charged to the
        # first replies after it (each server thread's counters start again).
        m.level("requests")
        lookups(m, 900, "req2")
        before = value(parse(scrape(PORT)), "efuse_context_switches_total", mount="a",
                       side="daemon", kind="voluntary")
        m.level("full")
        lookups(m, 300, "full2")
        after = value(parse(scrape(PORT)), "efuse_context_switches_total", mount="a",
                      side="daemon", kind="voluntary")
        # ~1 per reply; with the 900 requests-level replies charged it would be ~1,200.
        assert 150 <= after - before < 600, (before, after)

        # off: programs detached, mount untouched.
        m.level("off")
        s = parse(scrape(PORT))
        assert value(s, "efuse_bpf_up") == 0 and running_level(s) == "off"
        assert value(s, "efuse_bpf_off_reason", reason="disabled") == 1
        assert value(s, "efuse_bpf_load_failures_total") == 0
        assert value(s, "efuse_kernel_requests_total") is None
        h.wait_until(lambda: loaded(ids) == 0, 10, interval=0.1, what="the programs to go")
        assert "telemetry: off\n" in m.ctl("status").out
        h.assert_serves(m)

        # A bad value: refused with its place in the file; nothing changes.
        m.write_config(raw="telemetry: on")
        r = m.ctl("reload", expect=1)
        assert re.search(r"mounts\.yaml:3:12: telemetry must be one of full, requests, off; "
                         r"not 'on'", r.err), r.err
        s = parse(scrape(PORT))
        assert value(s, "efuse_bpf_up") == 0 and running_level(s) == "off"
        h.assert_serves(m)

        # And back on: loaded again.
        m.level("full")
        s = parse(scrape(PORT))
        assert value(s, "efuse_bpf_up") == 1 and running_level(s) == "full"
        new_ids = program_ids(m)
        assert loaded(new_ids) == 2 and not set(new_ids) & set(ids), (ids, new_ids)


def lookup_totals(mount):
    """(requests counted, requests timed) of the mount's LOOKUPs."""
    s = parse(scrape(PORT))
    return (value(s, "efuse_kernel_requests_total", mount=mount, opcode="lookup") or 0,
            value(s, "efuse_kernel_request_duration_seconds_count", mount=mount,
                  opcode="lookup") or 0)


def test_sampling_counts_every_request_and_changes_live_on_reload():
    require_daemon_contract()
    with LevelsEfused() as m:
        m.telemetry, m.sample_every = "full", 4
        m.write_config()
        m.start()
        s = bpf_up_or_skip(m, PORT)
        assert value(s, "efuse_bpf_latency_sample_every") == 4
        assert "telemetry: full, timed 1 in 4 of the time\n" in m.ctl("status").out
        assert json.loads(m.ctl("--json", "status").out)["telemetry"]["sample_every"] == 4
        ids = program_ids(m)

        # 1 in 4: every request counted; those sent in a sampling window (the send program
        # attached a quarter of the time, in windows of 50 ms at random gaps) timed. LOOKUPs
        # go on until 20 windows have opened: about a quarter of them timed, never all
        # (always attached) and never none (never attached). The bounds are wide: the share
        # depends on how evenly the LOOKUPs fell across windows and gaps.
        def windows():
            return value(parse(scrape(PORT)), "efuse_bpf_sample_windows_total")
        n0, t0 = lookup_totals("a")
        w0, sent = windows(), 0
        while windows() < w0 + 20:
            lookups(m, 500, f"s4-{sent}")
            sent += 500
            assert sent <= 2_000_000, "sampling windows stopped opening"
        n1, t1 = lookup_totals("a")
        assert n1 - n0 == sent, (n0, n1, sent)
        assert 0.05 * sent <= t1 - t0 <= 0.6 * sent, (t0, t1, sent)
        s = parse(scrape(PORT))
        assert value(s, "efuse_kernel_requests_in_flight", mount="a") == 0
        # Client switches come from the timed requests: about one per timed LOOKUP, not
        # one per request.
        client = value(s, "efuse_context_switches_total", mount="a", side="client",
                       kind="voluntary") or 0
        timed = value(s, "efuse_kernel_request_duration_seconds_count", mount="a",
                      opcode="lookup")
        assert 0.5 * timed <= client <= 2 * timed, (client, timed)

        # 1: every request timed, live (the same programs; counters go on).
        m.sampling(1)
        s = parse(scrape(PORT))
        assert value(s, "efuse_bpf_latency_sample_every") == 1 and value(s, "efuse_bpf_up") == 1
        assert "telemetry: full, every request timed\n" in m.ctl("status").out
        assert program_ids(m) == ids
        n2, t2 = lookup_totals("a")
        assert n2 >= n1 and t2 >= t1, (n1, n2, t1, t2)
        lookups(m, 500, "s1")
        n3, t3 = lookup_totals("a")
        assert n3 - n2 == 500 and t3 - t2 == 500, (n2, n3, t2, t3)

        # Bad values: refused with their place in the file; nothing changes.
        for raw, why in (("telemetry_sample_every: 0", "must be between 1 and 65536, not 0"),
                         ("telemetry_sample_every: 65537",
                          "must be between 1 and 65536, not 65537"),
                         ("telemetry_sample_every: -8", "must be between 1 and 65536, not -8"),
                         ("telemetry_sample_every: 2.5", "must be an integer"),
                         ("telemetry_sample_every: eight", "must be an integer")):
            m.write_config(raw_sample=raw)
            r = m.ctl("reload", expect=1)
            assert re.search(r"mounts\.yaml:4:25: telemetry_sample_every " + re.escape(why),
                             r.err), (raw, r.err)
            s = parse(scrape(PORT))
            assert value(s, "efuse_bpf_latency_sample_every") == 1, raw
            assert value(s, "efuse_bpf_up") == 1 and running_level(s) == "full", raw
            assert program_ids(m) == ids
            h.assert_serves(m)
        n4, t4 = lookup_totals("a")
        lookups(m, 100, "after-bad")
        n5, t5 = lookup_totals("a")
        assert n5 - n4 == 100 and t5 - t4 == 100, (n4, n5, t4, t5)


def test_a_bad_sample_option_is_a_usage_error():
    tmp = h.run(["mktemp", "-d"]).out.strip()
    try:
        src, mnt = os.path.join(tmp, "s"), os.path.join(tmp, "m")
        os.makedirs(src)
        os.makedirs(mnt)
        for bad in ("0", "65537", "x", ""):
            r = h.run([h.EFUSED, "--telemetry-sample-every", bad, "--mount", f"{src}:{mnt}"],
                      check=False, timeout=30)
            assert r.rc == 2, (bad, r.rc, r.err)
            assert f"--telemetry-sample-every must be 1..65536, not '{bad}'" in r.err, r.err
            assert not h.is_fuse_mounted(mnt)
    finally:
        subprocess.run(["rm", "-rf", tmp], check=False)


def test_a_bad_telemetry_option_is_a_usage_error():
    tmp = h.run(["mktemp", "-d"]).out.strip()
    try:
        src, mnt = os.path.join(tmp, "s"), os.path.join(tmp, "m")
        os.makedirs(src)
        os.makedirs(mnt)
        r = h.run([h.EFUSED, "--telemetry", "some", "--mount", f"{src}:{mnt}"], check=False,
                  timeout=30)
        assert r.rc == 2, (r.rc, r.err)
        assert "--telemetry must be full, requests or off, not 'some'" in r.err, r.err
        assert not h.is_fuse_mounted(mnt)
    finally:
        subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    h.main(globals(), require=("bpftool",))
