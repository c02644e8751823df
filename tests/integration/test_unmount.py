#!/usr/bin/env python3
"""efused's lifecycle contract: the ready line comes only once every mount is live;
SIGTERM and SIGINT unmount and exit 0 even with open files, a cwd inside the mount or
I/O in flight (lazy detach is fine) and leave no dead mount behind; two mounts at once
both serve and both go away; bad arguments exit non-zero with a clear message and leave
nothing mounted."""

import os
import select
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402

J = os.path.join

HOLDER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
os.write(fd, b"held")
print("holding", flush=True)
time.sleep(600)
"""

LOAD = r"""
import os, sys
# Everything relative to a directory fd opened inside the mount: after the lazy detach the
# load keeps hitting the detached mount (and failing), never the directory underneath.
dfd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
print("loading", flush=True)
i = 0
while True:
    try:
        name = "load%d" % (i % 50)
        fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644, dir_fd=dfd)
        os.write(fd, os.urandom(65536))
        os.close(fd)
        os.stat(name, dir_fd=dfd)
        os.listdir(dfd)
        fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
        os.read(fd, 65536)
        os.close(fd)
        if i % 3 == 0:
            os.unlink(name, dir_fd=dfd)
    except OSError:
        pass  # once efused is gone, errors are expected; keep going until killed
    i += 1
"""


def wait_line(p, want, timeout=20):
    """Wait (bounded) for a line on p's stdout pipe; reads the raw fd, so no line can hide
    in a Python buffer. Returns everything read so far."""
    fd = p.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = getattr(p, "_seen", b"")
    while want.encode() + b"\n" not in buf:
        left = deadline - time.monotonic()
        r, _, _ = select.select([fd], [], [], max(0.0, left))
        if left <= 0 or not r:
            raise AssertionError(f"did not see {want!r} within {timeout}s "
                                 f"(got {buf!r}, rc {p.poll()})")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"stdout closed before {want!r} (got {buf!r}, rc {p.poll()})")
        buf += chunk
    p._seen = buf
    return buf.decode(errors="replace")


def assert_gone(m):
    for mnt in m.mnts:
        assert h.fstypes_at(mnt) == [], f"{mnt} still mounted: {h.fstypes_at(mnt)}"
        res = h.probe_errno("listdir", mnt, timeout=20)
        assert res == 0, f"listdir({mnt}) after shutdown gave {res} (107 = ENOTCONN)"
        assert os.listdir(mnt) == [], f"{mnt} does not show the empty directory underneath"


def stop_with_busy_mount(m, sig):
    os.mkdir(m.m("sub"))
    h.write_file(m.m("sub", "file"), "data")
    holder = h.spawn([sys.executable, "-c", HOLDER, m.m("sub", "file")], cwd=m.m("sub"),
                     stdout=subprocess.PIPE, text=True)
    cwd_only = h.spawn(["sleep", "600"], cwd=m.m("sub"))
    try:
        wait_line(holder, "holding")
        m.stop_clean(sig)  # exit status 0 within the limit, nothing mounted any more
        m.clean_exit = False
        assert_gone(m)
        got = h.read_file(m.s("sub", "file"))
        assert got == b"held", (f"data written through the mount before the signal (not "
                                f"fsync'd) is lost in the backing file: {got!r}")
    finally:
        h.reap(holder)
        h.reap(cwd_only)


def test_sigterm_with_open_file_and_cwd(m):
    stop_with_busy_mount(m, signal.SIGTERM)


def test_sigint_with_open_file_and_cwd(m):
    stop_with_busy_mount(m, signal.SIGINT)


def test_sigterm_under_load(m):
    loads = [h.spawn([sys.executable, "-c", LOAD, m.mnt], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        for p in loads:
            wait_line(p, "loading")
        time.sleep(1)  # let requests be in flight
        m.stop_clean(signal.SIGTERM)
        m.clean_exit = False
        assert_gone(m)
    finally:
        for p in loads:
            h.reap(p)


def test_sigint_idle(m):
    m.stop_clean(signal.SIGINT)
    m.clean_exit = False
    assert_gone(m)


@h.mount_options(count=2)
def test_two_mounts(m):
    for i, mnt in enumerate(m.mnts):
        assert h.is_efuse_mounted(mnt)
        h.write_file(J(mnt, f"only-{i}"), f"mount {i}")
    for i, src in enumerate(m.srcs):
        assert sorted(os.listdir(src)) == [f"only-{i}"], (src, os.listdir(src))
        assert h.read_file(J(src, f"only-{i}")) == f"mount {i}".encode()
    assert sorted(os.listdir(m.mnts[0])) == ["only-0"]
    assert sorted(os.listdir(m.mnts[1])) == ["only-1"]
    # A rename across the two mounts is a cross-device rename.
    try:
        os.rename(J(m.mnts[0], "only-0"), J(m.mnts[1], "moved"))
        raise AssertionError("rename across two mounts succeeded")
    except OSError as e:
        assert e.errno == h.errno.EXDEV, e
    m.stop_clean(signal.SIGTERM)
    m.clean_exit = False
    assert_gone(m)


def test_ready_line_only_when_live():
    # Read efused's stdout directly: when "efused: ready" arrives, every mount is live.
    m = h.EfusedMount(count=2, start=False)
    try:
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(m.cmd(), stdout=subprocess.PIPE, stderr=log, text=True,
                                      start_new_session=True)
        m._started = True
        wait_line(m.proc, h.READY_LINE, timeout=h.START_TIMEOUT)
        for mnt in m.mnts:
            assert h.is_efuse_mounted(mnt), f"ready printed but {mnt} is {h.fstypes_at(mnt)}"
            opts = [x for x in h.mountinfo() if x[0] == mnt and x[1] == h.FSTYPE]
            assert opts, mnt
        # The kernel does permission checks and other users may enter (contract).
        line = [ln for ln in open("/proc/self/mountinfo") if f" {m.mnts[0]} " in ln][-1]
        assert "default_permissions" in line and "allow_other" in line, line
        h.write_file(J(m.mnts[1], "x"), "y")
        assert h.read_file(J(m.srcs[1], "x")) == b"y"
        m.proc.send_signal(signal.SIGTERM)
        rest, _ = m.proc.communicate(timeout=h.STOP_TIMEOUT)
        assert m.proc.returncode == 0, (m.proc.returncode, m.log_tail())
        everything = m.proc._seen.decode(errors="replace") + rest
        assert everything.count(h.READY_LINE) == 1, f"ready line count: {everything!r}"
        assert_gone(m)
    finally:
        m.cleanup()


def test_signal_during_startup():
    # SIGTERM/SIGINT that arrive after the mount exists but before "ready" (start-up is
    # still finishing) must still unmount and exit 0: no dead mount may be left behind.
    for attempt, sig in enumerate([signal.SIGTERM, signal.SIGINT] * 3):
        m = h.EfusedMount(start=False)
        try:
            with open(m.log, "ab") as log:
                m.proc = subprocess.Popen(m.cmd(), stdout=log, stderr=log,
                                          start_new_session=True)
            m._started = True
            h.wait_until(lambda: h.is_efuse_mounted(m.mnt) or m.proc.poll() is not None,
                         h.START_TIMEOUT, interval=0.0005, what="the mount to appear")
            assert m.proc.poll() is None, f"efused exited during start-up\n{m.log_tail()}"
            m.proc.send_signal(sig)
            try:
                rc = m.proc.wait(timeout=h.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"attempt {attempt}: efused did not exit within "
                                     f"{h.STOP_TIMEOUT}s of signal {sig} sent during start-up\n"
                                     f"{m.log_tail()}")
            left = h.fstypes_at(m.mnt)
            assert not left, (f"attempt {attempt}: signal {sig} during start-up left "
                              f"{left} mounted at {m.mnt} (efused status {rc})\n{m.log_tail()}")
            assert rc == 0, (f"attempt {attempt}: signal {sig} during start-up: efused status "
                             f"{rc} (negative = killed by the signal)\n{m.log_tail()}")
        finally:
            m.cleanup()


def bad_run(args, tmp):
    """Run efused with bad arguments; it must fail fast, say why, and mount nothing."""
    cmd = [h.EFUSED, *args, *h.EFUSED_ARGS]
    try:
        r = h.run(cmd, timeout=20, check=False)
    finally:
        for mp, *_ in h.efuse_mounts_under(tmp):
            h.detach(mp)
    left = h.efuse_mounts_under(tmp)
    assert r.rc != 0, f"{h._fmt_cmd(cmd)} exited 0\n{r.out}\n{r.err}"
    assert r.err.strip(), f"{h._fmt_cmd(cmd)}: no message on stderr (stdout: {r.out!r})"
    assert h.READY_LINE not in r.out, f"{h._fmt_cmd(cmd)} printed the ready line"
    assert not left, f"{h._fmt_cmd(cmd)} left mounts: {left}"
    return r


def test_bad_arguments():
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="efuse-badargs-", dir="/tmp"))
    try:
        src, mnt, f = J(tmp, "src"), J(tmp, "mnt"), J(tmp, "file")
        os.mkdir(src)
        os.mkdir(mnt)
        h.write_file(f, "not a dir")
        cases = [
            (["--mount", f"{J(tmp, 'nonexistent')}:{mnt}"], [J(tmp, "nonexistent")]),
            (["--mount", src], [src]),  # missing colon
            (["--mount", f"{src}:{f}"], [f]),  # mountpoint not a dir
            (["--mount", f"{src}:{J(tmp, 'missing-mnt')}"], [J(tmp, "missing-mnt")]),
            (["--mount", f"{f}:{mnt}"], [f]),  # source is a file
            (["--mount", f"{src}:{mnt}", "--mount", f"{J(tmp, 'nonexistent')}:{J(tmp, 'file')}"],
             [J(tmp, "nonexistent")]),  # one good mount, one bad: nothing may stay mounted
            (["--mount", f"{src}:{J(src)}"], [src]),  # source == mountpoint
            (["--mount", f"{tmp}:{mnt}"], [mnt]),  # mountpoint inside the source
            ([], []),  # no mount at all
            (["--bogus-option"], ["--bogus-option"]),
            (["--mount", f"{src}:{mnt}", "--threads", "many"], ["--threads"]),
            (["--mount"], []),  # option without its value
        ]
        failures = []
        for args, mentions in cases:
            try:
                r = bad_run(args, tmp)
                for word in mentions:
                    if word not in r.err:
                        failures.append(f"{args}: stderr does not name {word!r}: {r.err.strip()!r}")
            except AssertionError as e:
                failures.append(f"{args}: {e}")
        assert not failures, "\n".join(failures)
        assert os.listdir(mnt) == []
    finally:
        for mp, *_ in h.efuse_mounts_under(tmp):
            h.detach(mp)
        if not h.efuse_mounts_under(tmp):
            h.shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    h.main(globals())
