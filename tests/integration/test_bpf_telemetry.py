#!/usr/bin/env python3
"""eBPF telemetry covers every FUSE mount on the host: a stock libfuse passthrough_ll mount
beside an efused mount, I/O on both, and /metrics shows both mounts' kernel-side series
(requests, errors, latency histograms, queues, in-flight requests, context switches) with
the right mount and fstype labels. Also: EFUSE_BPF=0 turns it off (efuse_bpf_up 0, mounts
still served), and a connection's series go away when it is unmounted.

Skips (exit 77; a failure under CI=true) only when the kernel truly cannot load the
programs: no BTF, no FUSE tracepoints, no privilege to load BPF."""

import errno
import fcntl
import os
import re
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port, parse, scrape, value  # noqa: E402

EXAMPLES = "/usr/share/doc/libfuse3-dev/examples"
# Reasons efused logs when the kernel (not efused) is what refuses (service/src/bpf/).
KERNEL_CANNOT = re.compile(r"no BTF|kernel has no fuse_request|Operation not permitted|"
                           r"needs root|cannot read kernel BTF")


def bpf_up_or_skip(m, port):
    samples = parse(scrape(port))
    up = value(samples, "efuse_bpf_up")
    assert up is not None, "efuse_bpf_up missing from /metrics"
    if up == 1:
        return samples
    reason = "\n".join(l for l in m.log_text().splitlines() if "bpf:" in l)
    if KERNEL_CANNOT.search(reason):
        h.skip(f"this kernel cannot load efused's BPF programs: {reason.strip()}")
    raise AssertionError(f"efuse_bpf_up is 0 for a reason that is efused's fault:\n{reason}\n"
                         f"{m.log_tail()}")


def build_passthrough_ll(tmp):
    """Compile libfuse's passthrough_ll example (stock baseline) into tmp."""
    src = os.path.join(EXAMPLES, "passthrough_ll.c")
    if not os.path.exists(src):
        h.skip(f"{src} missing (install libfuse3-dev)")
    flags = h.run(["pkg-config", "--cflags", "--libs", "fuse3"], timeout=30).out.split()
    out = os.path.join(tmp, "passthrough_ll")
    h.run(["gcc", "-O2", "-I", EXAMPLES, "-o", out, src] + flags + ["-lpthread"], timeout=120)
    return out


class PassthroughLL:
    """libfuse passthrough_ll serving `src` at `mnt` (foreground process, killed by PID)."""

    def __init__(self, binary, src, mnt):
        self.src, self.mnt = src, mnt
        os.makedirs(src, exist_ok=True)
        os.makedirs(mnt, exist_ok=True)
        self.log = open(os.path.join(os.path.dirname(mnt), "passthrough_ll.log"), "wb")
        self.proc = h.spawn([binary, "-f", "-o", f"source={src}", mnt],
                            stdout=self.log, stderr=self.log)
        h.wait_until(lambda: "fuse.passthrough_ll" in h.fstypes_at(mnt) or self.proc.poll() is not None,
                     15, what="passthrough_ll mount")
        if self.proc.poll() is not None:
            raise AssertionError(f"passthrough_ll exited with {self.proc.returncode}")
        # The mount shows in mountinfo before the server has answered INIT; requests sent
        # meanwhile wait in the kernel unsent. One answered request proves INIT is done.
        os.listdir(mnt)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        h.detach(self.mnt)
        h.reap(self.proc)
        self.log.close()


def workload(root, n=40):
    """Metadata and data operations, a few of which fail on purpose."""
    d = os.path.join(root, "work")
    os.makedirs(d, exist_ok=True)
    data = os.urandom(64 * 1024)
    for i in range(n):
        p = os.path.join(d, f"f{i}")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.stat(p)
        with open(p, "rb") as f:
            assert f.read() == data
        try:
            os.getxattr(p, "user.efuse-missing")
        except OSError as e:
            assert e.errno in (errno.ENODATA, errno.ENOTSUP), e
        try:
            os.stat(os.path.join(d, f"missing{i}"))
        except FileNotFoundError:
            pass
    assert len(os.listdir(d)) == n
    for i in range(n):
        os.unlink(os.path.join(d, f"f{i}"))
    os.rmdir(d)


PORT = free_port()


@h.mount_options(args=["--metrics", f"127.0.0.1:{PORT}", "--telemetry-sample-every", "1"])
def test_every_fuse_mount_is_covered(m):
    bpf_up_or_skip(m, PORT)
    ll = PassthroughLL(build_passthrough_ll(m.tmp), os.path.join(m.tmp, "llsrc"),
                       os.path.join(m.tmp, "llmnt"))
    try:
        workload(m.mnt)
        workload(ll.mnt)
        s = parse(scrape(PORT))
        own = dict(mount=os.path.basename(m.mnt), fstype="fuse.efuse")
        foreign = dict(mount=ll.mnt, fstype="fuse.passthrough_ll")

        assert value(s, "efuse_bpf_up") == 1
        assert value(s, "efuse_bpf_programs_attached") == 2, value(s, "efuse_bpf_programs_attached")
        for labels in (own, foreign):
            for op in ("lookup", "getattr", "open", "flush", "release", "fsync", "unlink"):
                n = value(s, "efuse_kernel_requests_total", opcode=op, **labels)
                assert n and n > 0, f"no kernel-side {op} requests for {labels}"
            e = value(s, "efuse_kernel_request_errors_total", opcode="getxattr", **labels)
            # >= 1: passthrough_ll answers ENOSYS once (xattrs off) and the kernel stops asking.
            assert e and e >= 1, f"kernel-side getxattr errors for {labels}: {e}"
            n = value(s, "efuse_kernel_request_duration_seconds_count", opcode="lookup", **labels)
            inf = value(s, "efuse_kernel_request_duration_seconds_bucket", opcode="lookup", le="+Inf",
                        **labels)
            total = value(s, "efuse_kernel_request_duration_seconds_sum", opcode="lookup", **labels)
            assert n and n > 0 and inf == n and total > 0, (labels, n, inf, total)
            # In flight: per mount, the kernel's own count (fusectl), 0 when idle.
            assert value(s, "efuse_kernel_requests_in_flight", **labels) == 0, labels
            for side in ("daemon", "client"):
                c = value(s, "efuse_context_switches_total", mount=labels["mount"], side=side,
                          kind="voluntary")
                assert c and c > 0, f"no {side} context switches for {labels}"
        # passthrough_ll answers a missing name with ENOENT (efused with a negative entry).
        e = value(s, "efuse_kernel_request_errors_total", opcode="lookup", **foreign)
        assert e and e >= 40, f"kernel-side lookup errors for passthrough_ll: {e}"
        # The stock server writes its data through the daemon; efused passes it through.
        assert value(s, "efuse_kernel_requests_total", opcode="write", **foreign) >= 40
        for name in ("efuse_kernel_queue_request_duration_seconds_count",
                     "efuse_kernel_queue_requests_total"):
            q = value(s, name, mount=ll.mnt, queue="classic")
            assert q and q > 0, f"no {name} for passthrough_ll (/dev/fuse: queue=classic)"
            q = value(s, name, mount=own["mount"])
            assert q and q > 0, f"no {name} for efused's mount"

        # Daemon side = efused's own threads: never more switches than /proc counts for them
        # (the programs attached after the mount started, and only request-serving threads
        # count).
        daemon = sum(value(s, "efuse_context_switches_total", mount=own["mount"], side="daemon",
                           kind=k) or 0 for k in ("voluntary", "involuntary"))
        proc_total = 0
        for tid in os.listdir(f"/proc/{m.proc.pid}/task"):
            try:
                with open(f"/proc/{m.proc.pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            proc_total += int(line.split()[1])
            except FileNotFoundError:
                pass
        assert 0 < daemon <= proc_total, (daemon, proc_total)

        # Kernel and daemon agree on requests that all happened after the programs attached.
        for op in ("create", "unlink", "fsync"):
            k = value(s, "efuse_kernel_requests_total", opcode=op, **own)
            d = value(s, "efuse_requests_total", mount=own["mount"], opcode=op)
            assert k == d == 40, f"{op}: kernel saw {k}, efused handled {d}"

        # Buckets are cumulative and bounded in seconds.
        buckets = sorted((float(l["le"]), v) for n, l, v in s
                         if n == "efuse_kernel_request_duration_seconds_bucket"
                         and l.get("opcode") == "lookup" and l.get("mount") == ll.mnt)
        assert buckets[0][0] > 1e-7 and buckets[-2][0] < 60, buckets[:2] + buckets[-2:]
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets

        # Labels stay bounded: nothing from inside a mount (no file names, no inode numbers).
        for n, l, v in s:
            if n.startswith(("efuse_kernel_", "efuse_context_switches")):
                assert not any("f1" in x or "work" in x for x in l.values()), (n, l)
    finally:
        ll.stop()


@h.mount_options(args=["--metrics", f"127.0.0.1:{PORT}", "--telemetry-sample-every", "1"])
def test_a_long_request_shares_its_slot(m):
    # Timed requests sit in a lock-free array at an index their address hashes to; with
    # every request timed, one of the requests after one that is still waiting finds that
    # slot taken and is tracked in a hash map instead. Every request must still be counted
    # once and end exactly once.
    bpf_up_or_skip(m, PORT)
    own = dict(mount=os.path.basename(m.mnt))
    h.write_file(m.s("lock"), b"x")
    holder = os.open(m.s("lock"), os.O_RDONLY)  # held outside the mount
    waiter = None
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        waiter = h.spawn([sys.executable, "-c",
                          "import fcntl,os,sys; fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), "
                          "fcntl.LOCK_EX)", m.m("lock")])

        def in_flight():
            return value(parse(scrape(PORT)), "efuse_kernel_requests_in_flight", **own) or 0
        h.wait_until(lambda: in_flight() == 1, 10, interval=0.1, what="a SETLKW waiting")
        before = value(parse(scrape(PORT)), "efuse_kernel_requests_total", opcode="lookup", **own) or 0
        n = 3 * 4096
        for i in range(n):  # a negative LOOKUP each: names never asked for before
            assert not os.path.exists(m.m(f"missing-{i}"))
        assert in_flight() == 1
        fcntl.flock(holder, fcntl.LOCK_UN)
        assert waiter.wait(timeout=30) == 0
        h.wait_until(lambda: in_flight() == 0, 10, interval=0.1, what="the SETLKW to end")
        s = parse(scrape(PORT))
        assert value(s, "efuse_kernel_requests_total", opcode="lookup", **own) - before == n
        assert value(s, "efuse_kernel_request_duration_seconds_count", opcode="setlkw", **own) == 1
        # efuse_bpf_events_dropped_total is host-wide (other FUSE servers on the host move it):
        # the exact per-mount counts above are what shows that none of this mount's requests
        # was dropped or counted twice.
    finally:
        os.close(holder)
        if waiter is not None:
            h.reap(waiter)


@h.mount_options(args=["--metrics", f"127.0.0.1:{PORT}"])
def test_in_flight_while_the_server_is_stopped(m):
    bpf_up_or_skip(m, PORT)
    ll = PassthroughLL(build_passthrough_ll(m.tmp), os.path.join(m.tmp, "llsrc"),
                       os.path.join(m.tmp, "llmnt"))
    blocked = None
    try:
        os.kill(ll.proc.pid, signal.SIGSTOP)
        # A client whose LOOKUP cannot be answered while the server is stopped.
        blocked = h.spawn([sys.executable, "-c", "import os,sys; os.stat(sys.argv[1])",
                           os.path.join(ll.mnt, "waiting")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def in_flight():
            return value(parse(scrape(PORT)), "efuse_kernel_requests_in_flight",
                         mount=ll.mnt) or 0
        h.wait_until(lambda: in_flight() >= 1, 10, interval=0.1, what="a LOOKUP in flight")
        os.kill(ll.proc.pid, signal.SIGCONT)
        blocked.wait(timeout=10)
        h.wait_until(lambda: in_flight() == 0, 10, interval=0.1, what="the LOOKUP to end")
    finally:
        if blocked is not None:
            h.reap(blocked)
        ll.stop()
    # Unmounted: the connection is gone and so are its series (efused tells dead
    # connections from live ones through the fusectl file system: systemd's mount, or an
    # instance of its own mounted nowhere).
    h.wait_until(lambda: not any(l.get("mount") == ll.mnt for _, l, _ in parse(scrape(PORT))),
                 10, interval=0.2, what="the unmounted connection's series to go away")


def uring_enabled():
    try:
        with open("/sys/module/fuse/parameters/enable_uring") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


@h.mount_options(args=["--metrics", f"127.0.0.1:{PORT}", "--transport", "uring"],
                 start=False)
def test_io_uring_queues_are_labelled_by_queue_id(m):
    if not uring_enabled():
        print("note: FUSE over io_uring is disabled in this kernel; nothing to check")
        return
    m.start()
    bpf_up_or_skip(m, PORT)
    workload(m.mnt, n=10)
    s = parse(scrape(PORT))
    queues = {l["queue"]: v for n, l, v in s
              if n == "efuse_kernel_queue_requests_total"
              and l.get("mount") == os.path.basename(m.mnt)}
    ring = {q: v for q, v in queues.items() if q != "classic"}
    assert ring and all(q.isdigit() and int(q) < os.cpu_count() for q in ring), queues
    assert sum(ring.values()) >= 10 * 5, queues


@h.mount_options(args=["--metrics", f"127.0.0.1:{PORT}"], start=False)
def test_efuse_bpf_0_turns_it_off(m):
    os.environ["EFUSE_BPF"] = "0"
    try:
        m.start()
    finally:
        del os.environ["EFUSE_BPF"]
    h.assert_serves(m)
    s = parse(scrape(PORT))
    assert value(s, "efuse_bpf_up") == 0
    assert value(s, "efuse_bpf_programs_attached") == 0
    assert value(s, "efuse_bpf_load_failures_total") == 0  # switched off, not refused
    assert value(s, "efuse_kernel_requests_total") is None
    assert value(s, "efuse_requests_total", opcode="lookup"), "daemon metrics must stay"
    lines = [l for l in m.log_text().splitlines() if "bpf:" in l]
    assert len(lines) == 1 and "EFUSE_BPF=0" in lines[0], lines


if __name__ == "__main__":
    h.main(globals(), require=("gcc", "pkg-config"))
