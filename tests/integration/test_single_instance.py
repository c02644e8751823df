#!/usr/bin/env python3
"""One efused per mountpoint, per config file and per D-Bus name, and exit statuses that
tell systemd not to restart what a restart cannot fix.

A mountpoint that carries another server's live FUSE mount is refused (naming the file
system there and the PID serving it) at start and on reload, while the other mounts go on,
unless options.stack: true. A second efused for the same config file exits 75 before
mounting anything. An invalid config exits 78 and puts FILE:LINE:COLUMN into systemd's
STATUS= (checked on a real notify socket)."""

import os
import re
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402

J = os.path.join
EXIT_IN_USE, EXIT_CONFIG = 75, 78  # efused --help


class ConfigEfused(h.EfusedMount):
    """efused --config CFG --bus none; mounts are (name, source, mountpoint, extra lines)."""

    def __init__(self, tag="efuse-single"):
        super().__init__(count=2, start=False, tag=tag)
        self.cfg = J(self.tmp, "mounts.yaml")
        self.mounts = []
        self.live = []

    def write_config(self, mounts, broken=False):
        self.mounts = mounts
        lines = ["metrics:", '  listen: ""', "mounts:"]
        for name, src, mnt, extra in mounts:
            lines += [f"  - name: {name}", f"    mountpoint: {mnt}", "    backend: passthrough",
                      f"    source: {src}"] + [f"    {e}" for e in extra]
        if broken:
            lines += ["    thraeds: 4"]
        with open(self.cfg + ".new", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(self.cfg + ".new", self.cfg)

    def cmd(self):
        return [h.EFUSED, "--config", self.cfg, "--bus", "none"] + h.EFUSED_ARGS

    def start_expecting(self, live):
        """Start; wait for the ready line and the mounts in `live` (others may fail)."""
        self.live = list(live)
        mnts, self.mnts = self.mnts, self.live
        try:
            return super().start()
        finally:
            self.mnts = mnts

    def check_alive(self):
        mnts, self.mnts = self.mnts, self.live
        try:
            super().check_alive()
        finally:
            self.mnts = mnts

    def stop_clean(self, sig=signal.SIGTERM):
        """As the harness's, and the runner's end-of-test check is then done."""
        super().stop_clean(sig)
        self._started = False

    def reload(self):
        before = self.log_text().count("reloading ")
        os.kill(self.proc.pid, signal.SIGHUP)
        h.wait_until(lambda: self.log_text().count("reloading ") > before, 20,
                     what="reload logged")


def stack_at(path):
    """[(mount id, fstype)] of the mounts at path, bottom first."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == path:
                out.append((parts[0], parts[parts.index("-") + 1]))
    return out


def assert_serves(path, name, text):
    with open(J(path, name)) as f:
        assert f.read() == text, f"{path}/{name} does not read {text!r}"


def refusal_re(mnt, pid):
    return (re.escape(f"mountpoint {mnt} already carries a live fuse.efuse mount of ") +
            r"\S+ \(FUSE connection \d+, served by pid " + str(pid) + r" \(.*efused.*\)\); " +
            re.escape("stop that server or unmount " + mnt + " first, or set options.stack: "
                      "true to mount on top of it"))


def test_taken_mountpoint_refused_at_start():
    """Another efused serves A's mountpoint: B's mount there fails with an error naming it,
    B's other mount serves, A's mount is untouched."""
    with h.EfusedMount(tag="efuse-holder") as a, ConfigEfused() as b:
        h.write_file(J(a.src, "who"), b"a\n")
        before = stack_at(a.mnt)
        b.write_config([("taken", b.srcs[0], a.mnt, []), ("free", b.srcs[1], b.mnts[1], [])])
        h.write_file(J(b.srcs[1], "who"), b"b\n")
        b.start_expecting([b.mnts[1]])
        log = b.log_text()
        assert re.search(refusal_re(a.mnt, a.proc.pid), log), b.log_tail()
        assert stack_at(a.mnt) == before, f"{a.mnt} changed: {stack_at(a.mnt)} != {before}"
        assert_serves(a.mnt, "who", "a\n")
        assert_serves(b.mnts[1], "who", "b\n")
        b.check_alive()
        b.stop_clean()
        assert stack_at(a.mnt) == before
        assert_serves(a.mnt, "who", "a\n")


def test_only_mount_taken_exits_1():
    """A config whose every mountpoint is taken: nothing to serve, exit 1, holder intact."""
    with h.EfusedMount(tag="efuse-holder") as a, ConfigEfused() as b:
        before = stack_at(a.mnt)
        b.write_config([("taken", b.srcs[0], a.mnt, [])])
        r = h.run(b.cmd(), check=False, timeout=60)
        assert r.rc == 1, f"exit {r.rc}\n{r.err}"
        assert re.search(refusal_re(a.mnt, a.proc.pid), r.err), r.err
        assert "no mount could be started" in r.err
        assert stack_at(a.mnt) == before
        a.check_alive()


def test_stack_true_mounts_on_top():
    """options.stack: true mounts over the live mount; stopping uncovers it again."""
    with h.EfusedMount(tag="efuse-holder") as a, ConfigEfused() as b:
        h.write_file(J(a.src, "who"), b"a\n")
        h.write_file(J(b.srcs[0], "who"), b"b\n")
        before = stack_at(a.mnt)
        b.write_config([("over", b.srcs[0], a.mnt, ["options: {stack: true}"])])
        b.start_expecting([a.mnt])
        h.wait_until(lambda: len(stack_at(a.mnt)) == len(before) + 1, 10, what="stacked mount")
        assert_serves(a.mnt, "who", "b\n")
        assert b.proc.poll() is None
        b.stop_clean()
        assert stack_at(a.mnt) == before
        assert_serves(a.mnt, "who", "a\n")


def test_reload_adding_taken_mountpoint_fails_that_mount_only():
    with h.EfusedMount(tag="efuse-holder") as a, ConfigEfused() as b:
        h.write_file(J(a.src, "who"), b"a\n")
        h.write_file(J(b.srcs[1], "who"), b"b\n")
        before = stack_at(a.mnt)
        b.write_config([("free", b.srcs[1], b.mnts[1], [])])
        b.start_expecting([b.mnts[1]])
        free_before = stack_at(b.mnts[1])
        b.write_config([("free", b.srcs[1], b.mnts[1], []), ("taken", b.srcs[0], a.mnt, [])])
        b.reload()
        h.wait_until(lambda: re.search(refusal_re(a.mnt, a.proc.pid), b.log_text()), 20,
                     what="refusal logged")
        assert stack_at(a.mnt) == before
        assert stack_at(b.mnts[1]) == free_before, "the other mount was remounted"
        assert_serves(a.mnt, "who", "a\n")
        assert_serves(b.mnts[1], "who", "b\n")
        b.check_alive()
        b.stop_clean()


def test_second_efused_for_the_same_config_exits_75():
    """The second efused for one config file exits 75 naming the first, mounting nothing."""
    with ConfigEfused() as b:
        b.write_config([("one", b.srcs[0], b.mnts[0], [])])
        b.start_expecting([b.mnts[0]])
        before = stack_at(b.mnts[0])
        # the same file by another path: the lock follows the real path
        other_path = J(b.tmp, ".", "mounts.yaml")
        r = h.run([h.EFUSED, "--config", other_path, "--bus", "none"], check=False, timeout=60)
        assert r.rc == EXIT_IN_USE, f"exit {r.rc}\n{r.err}"
        assert f"config file {b.cfg} is already served by pid {b.proc.pid} (" in r.err, r.err
        assert "ready" not in r.out and "served at" not in r.out, r.out
        assert stack_at(b.mnts[0]) == before
        b.check_alive()
        # Once the first has stopped, the lock is free again.
        b.stop_clean()
        b.start_expecting([b.mnts[0]])
        b.stop_clean()


def test_invalid_config_exits_78_with_status():
    with ConfigEfused() as b:
        b.write_config([("one", b.srcs[0], b.mnts[0], [])], broken=True)
        path = J(b.tmp, "notify")
        sock, messages, stop, t = h.notify_socket(path)
        try:
            env = dict(os.environ, NOTIFY_SOCKET=path)
            r = h.run(b.cmd(), check=False, timeout=60, env=env)
        finally:
            stop.set()
            t.join(5)
            sock.close()
        assert r.rc == EXIT_CONFIG, f"exit {r.rc}\n{r.err}"
        where = re.escape(b.cfg) + r":\d+:\d+: unknown key 'thraeds'"
        assert re.search(where, r.err), r.err
        status = [m for m in messages if m.startswith("STATUS=")]
        assert status and re.search("^STATUS=" + where, status[-1]), messages
        assert not any("READY=1" in m for m in messages), messages
        assert stack_at(b.mnts[0]) == [], "something was mounted"


def test_missing_config_exits_78():
    missing = "/nonexistent/efuse/mounts.yaml"
    r = h.run([h.EFUSED, "--config", missing, "--bus", "none"], check=False, timeout=60)
    assert r.rc == EXIT_CONFIG, f"exit {r.rc}\n{r.err}"
    assert missing in r.err and "No such file or directory" in r.err, r.err


def test_help_lists_exit_statuses():
    out = h.run([h.EFUSED, "--help"], timeout=30).out
    for code in ("0", "1", "2", str(EXIT_IN_USE), str(EXIT_CONFIG)):
        assert re.search(rf"^\s+{code}\s+\S", out, re.M), f"exit status {code} missing:\n{out}"


if __name__ == "__main__":
    h.main(globals())
