#!/usr/bin/env python3
"""kill -9 of efused under a writer that fsyncs every block: the mount must then answer
ENOTCONN (never hang), every fsync'd block must be intact in the backing file, and a new
efused started on the same mountpoint must replace the dead mount (ARCHITECTURE.md, "Dead
daemons") and serve the data.

ENOTCONN is required of the very first request made after efused was reaped: by then the
kernel must have aborted the connection. (With FUSE over io_uring the kernel tears a dead
server's rings down asynchronously; a request that catches the connection before the abort
waits and then fails with ECONNABORTED. efused sets its rings up so that its death aborts
the connection at once; see "Dying without a goodbye" in uring_channel.cpp.) The probe
process is started before the kill so that nothing delays its first request."""

import errno
import hashlib
import os
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402

J = os.path.join
BS = 12288  # three pages: blocks straddle page boundaries
MAGIC = b"EFUSEBLK"

WRITER = r"""
import hashlib, os, struct, sys
path, side, bs, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def block(i):
    head = b"EFUSEBLK" + struct.pack("<Q", i)
    body = hashlib.sha256(b"%d" % i).digest() * (bs // 32 + 1)
    return (head + body)[:bs]

fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
sfd = os.open(side, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
for i in range(limit):
    try:
        os.pwrite(fd, block(i), i * bs)
        os.fsync(fd)
    except OSError as e:
        print(f"writer stopped at block {i}: {e}", file=sys.stderr)
        sys.exit(0)
    os.pwrite(sfd, b"%020d\n" % (i + 1), 0)  # count of fsync'd blocks (outside the mount)
print("writer reached its limit", file=sys.stderr)
"""


# Waits for a line on stdin, then runs os.<op>(path) for each pair of arguments and prints
# "op path errno" (0 on success) per call.
PROBE = r"""
import os, sys
print("ready", flush=True)
sys.stdin.readline()
for op, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        getattr(os, op)(path)
        print(op, path, 0, flush=True)
    except OSError as e:
        print(op, path, e.errno, flush=True)
"""


class Probe:
    """A probe process started ahead of time: fire() runs its calls at once."""

    def __init__(self, calls):
        args = [x for op, path in calls for x in (op, path)]
        self.calls = calls
        self.p = h.spawn([sys.executable, "-c", PROBE, *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()  # bounded: the child prints it at once
        assert line.strip() == "ready", f"probe did not start: {line!r}"

    def fire(self, timeout=20):
        """[(op, path, errno or 0 or "hang")] in call order; "hang": no answer in time."""
        try:
            out, _ = self.p.communicate("go\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            out = ""
        finally:
            h.reap(self.p)
        got = {}
        for line in out.splitlines():
            op, path, err = line.split(" ")
            got.setdefault((op, path), int(err))
        return [(op, path, got.get((op, path), "hang")) for op, path in self.calls]


def assert_enotconn(results, when):
    for op, path, res in results:
        name = errno.errorcode.get(res, res) if isinstance(res, int) else res
        assert res != "hang", f"{op}({path}) hung {when}"
        assert res == errno.ENOTCONN, f"{op}({path}) {when} gave {name}, not ENOTCONN"


def expected_block(i):
    head = MAGIC + struct.pack("<Q", i)
    body = hashlib.sha256(b"%d" % i).digest() * (BS // 32 + 1)
    return (head + body)[:BS]


def synced_count(side):
    try:
        with open(side, "rb") as f:
            text = f.read().strip()
        return int(text) if text else 0
    except (OSError, ValueError):
        return 0


def kill_under_writer(m, min_blocks=300, probe=None):
    side = J(m.tmp, "synced-count")
    w = h.spawn([sys.executable, "-c", WRITER, m.m("data"), side, str(BS), "200000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        h.wait_until(lambda: synced_count(side) >= min_blocks or w.poll() is not None, 120,
                     what=f"{min_blocks} fsync'd blocks")
        assert w.poll() is None, f"writer ended early: {w.stderr.read()}"
        m.kill9()
        if probe is not None:
            assert_enotconn(probe.fire(), "as the first request after efused was reaped")
        try:
            _, err = w.communicate(timeout=15)
            print(f"  {err.strip()}")
        except subprocess.TimeoutExpired:
            # Passthrough writes may keep landing in the backing file without the daemon;
            # what matters is what was fsync'd. Stop it.
            print("  writer still running 15 s after kill -9; stopping it")
    finally:
        h.reap(w)
    return synced_count(side)


def check_blocks(path, n):
    size = os.stat(path).st_size
    assert size >= n * BS, f"backing file has {size} bytes, {n} blocks of {BS} were fsync'd"
    with open(path, "rb") as f:
        for i in range(n):
            got = f.read(BS)
            if got != expected_block(i):
                seq = struct.unpack("<Q", got[8:16])[0] if got[:8] == MAGIC else None
                raise AssertionError(f"fsync'd block {i} of {n} is damaged in {path} "
                                     f"(header {got[:8]!r}, sequence {seq})")


def test_kill9_enotconn_and_durability(m):
    m.clean_exit = False
    probe = Probe([("stat", m.m("data")), ("listdir", m.mnt), ("stat", m.mnt)])
    n = kill_under_writer(m, probe=probe)
    print(f"  {n} blocks fsync'd before kill -9")
    for op, path in (("stat", m.mnt), ("listdir", m.mnt), ("stat", m.m("data"))):
        res = h.probe_errno(op, path, timeout=20)
        assert_enotconn([(op, path, res)], "after kill -9")
    assert h.is_fuse_mounted(m.mnt), "the dead mount vanished by itself?"
    check_blocks(m.s("data"), n)
    # Detaching the dead mount brings the plain directory back.
    assert h.detach(m.mnt)
    assert h.probe_errno("listdir", m.mnt) == 0
    assert os.listdir(m.mnt) == []


def test_restart_replaces_dead_mount(m):
    n = kill_under_writer(m)
    assert h.probe_errno("stat", m.mnt, timeout=20) == errno.ENOTCONN
    # Start again on the same mountpoint without cleaning up: efused must detach the dead
    # mount itself and serve again.
    m.start()
    assert h.probe_errno("stat", m.mnt, timeout=20) == 0, "mount still dead after restart"
    check_blocks(m.m("data"), n)
    h.assert_serves(m)
    m.stop_clean()  # requires that no FUSE mount (dead or alive) is left at the mountpoint
    assert h.fstypes_at(m.mnt) == []
    m.clean_exit = False  # already stopped


def test_restart_replaces_idle_dead_mount(m):
    # Killed while idle, with the root's attributes fresh in the kernel's cache: stat of
    # the mountpoint still succeeds from the cache, yet the mount is dead. A restart must
    # still replace it, not stack a second mount on top.
    os.stat(m.mnt)
    m.kill9()
    m.start()
    assert h.fstypes_at(m.mnt) == [h.FSTYPE], h.fstypes_at(m.mnt)
    h.assert_serves(m)


def test_kill9_idle_and_cleanup(m):
    # No I/O in flight: the mount dies just the same and a lazy unmount cleans it up.
    m.clean_exit = False
    h.write_file(m.m("f"), "x")
    probe = Probe([("stat", m.m("f")), ("listdir", m.mnt)])
    m.kill9()
    assert_enotconn(probe.fire(), "as the first request after efused was reaped")
    for op, path in (("stat", m.m("f")), ("listdir", m.mnt)):
        assert_enotconn([(op, path, h.probe_errno(op, path, timeout=20))], "after kill -9")
    assert h.read_file(m.s("f")) == b"x"
    assert h.detach(m.mnt) and h.fstypes_at(m.mnt) == []


if __name__ == "__main__":
    h.main(globals())
