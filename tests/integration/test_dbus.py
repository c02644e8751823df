#!/usr/bin/env python3
"""efused's D-Bus API (org.efuse.Manager1) driven through efusectl on a private bus.

Each test starts its own dbus-daemon with a system-bus-like policy (deny by default, plus
systemd/org.efuse.Manager1.conf from this repository), then `efused --config CFG --bus
ADDRESS` serving one passthrough mount "a". efusectl's output, exit codes and the real
mount table (/proc/self/mountinfo) are checked: status and mounts (tables and JSON),
unmount and mount, reload (returns once applied; an invalid config fails with
FILE:LINE:COLUMN and changes nothing), MountStateChanged signals, and that an unprivileged
caller cannot change anything: refused by the bus policy, and by efused itself when the
policy is open.
"""

import json
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from dbus_conf import OPEN_POLICY, SYSTEM_POLICY, bus_config  # noqa: E402
from prom_text import parse, scrape, value  # noqa: E402

J = os.path.join
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POLICY = J(REPO, "systemd", "org.efuse.Manager1.conf")
EFUSECTL = J(os.path.dirname(h.EFUSED), "efusectl")
NOBODY = 65534

# efusectl's documented exit codes.
EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_DENIED, EXIT_NOT_LIVE = 1, 3, 4, 5


def require_daemon_contract():
    """Skip until efused speaks the contract this test is written against."""
    try:
        r = h.run([h.EFUSED, "--help"], timeout=30, check=False)
    except (OSError, h.CommandFailed) as e:
        h.skip(f"cannot run {h.EFUSED} --help: {e}")
    text = r.out + r.err
    if "--config" not in text or "--bus" not in text:
        h.skip("efused does not support --config/--bus yet")
    if not os.access(EFUSECTL, os.X_OK):
        h.skip(f"efusectl not built next to efused ({EFUSECTL})")


class DbusEfused(h.EfusedMount):
    """A private dbus-daemon plus efused --config CFG --bus ADDRESS serving mount "a"
    (src/mnt); `extra` (src1/mnt1) is a second directory pair a reload may add as "b"."""

    def __init__(self, policy="system", start=True):
        super().__init__(count=2, start=False, tag="efuse-dbus")
        self.mnts, self.extra = [self.mnts[0]], (self.srcs[1], self.mnts[1])
        self.srcs = [self.srcs[0]]
        self.cfg = J(self.tmp, "mounts.yaml")
        self.listen = "127.0.0.1:0"
        self.write_config()
        self.dbus = None
        try:
            self.address = self._start_bus(policy)
            if start:
                self.start()
        except BaseException:
            self.cleanup()
            raise

    # -- the bus ---------------------------------------------------------------------------
    def _start_bus(self, policy):
        bus_dir = J(self.tmp, "dbus")
        os.mkdir(bus_dir)
        os.chmod(bus_dir, 0o755)  # the unprivileged client connects too
        sock = J(bus_dir, "system_bus_socket")
        conf = J(bus_dir, "bus.conf")
        with open(conf, "w") as f:
            f.write(bus_config(sock, SYSTEM_POLICY, POLICY) if policy == "system"
                    else bus_config(sock, OPEN_POLICY))
        self.bus_log = open(J(bus_dir, "dbus-daemon.log"), "wb")
        self.dbus = h.spawn(["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"],
                            stdin=subprocess.DEVNULL, stdout=self.bus_log, stderr=self.bus_log)
        h.wait_until(lambda: os.path.exists(sock) or self.dbus.poll() is not None, 10,
                     what="dbus-daemon socket")
        if self.dbus.poll() is not None:
            raise AssertionError(f"dbus-daemon exited with {self.dbus.returncode}")
        return f"unix:path={sock}"

    # -- efused ----------------------------------------------------------------------------
    def write_config(self, with_b=False, broken=False, handlers=None):
        lines = ["metrics:", f'  listen: "{self.listen}"', "mounts:",
                 "  - name: a", f"    mountpoint: {self.mnts[0]}",
                 "    backend: passthrough", f"    source: {self.srcs[0]}"]
        if handlers:
            lines += ["    bpf_handlers:"] + [f"      {op}: {p}" for op, p in handlers.items()]
        if with_b:
            lines += ["  - name: b", f"    mountpoint: {self.extra[1]}",
                      "    backend: passthrough", f"    source: {self.extra[0]}"]
        if broken:
            lines += ["    mountpiont: /nowhere"]  # a typo: unknown key, line 8 column 5
        with open(self.cfg + ".new", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(self.cfg + ".new", self.cfg)

    def cmd(self):
        return [h.EFUSED, "--config", self.cfg, "--bus", self.address] + h.EFUSED_ARGS

    def cleanup(self, keep_tmp=False):
        if h.is_fuse_mounted(self.extra[1]):
            h.detach(self.extra[1])
        super().cleanup(keep_tmp)
        if self.dbus is not None:
            h.reap(self.dbus)
            self.bus_log.close()
            self.dbus = None

    # -- efusectl --------------------------------------------------------------------------
    def ctl(self, *args, unprivileged=False, expect=0, env=None):
        """Run efusectl --bus ADDRESS ARGS; assert its exit status; return the Result."""
        cmd = [EFUSECTL, "--bus", self.address, *args]
        if unprivileged:
            cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] + cmd
        r = h.run(cmd, timeout=120, check=False, env=env)
        if r.rc != expect:
            raise AssertionError(f"{' '.join(map(shlex.quote, cmd))}: exit {r.rc}, expected "
                                 f"{expect}\nstdout: {r.out}\nstderr: {r.err}\n{self.log_tail()}")
        return r

    def mounts_json(self):
        return {m["name"]: m for m in json.loads(self.ctl("--json", "mounts").out)}

    def state(self, name="a"):
        return self.mounts_json()[name]["state"]


def assert_mounted(path, want=True):
    if h.is_efuse_mounted(path) != want:
        raise AssertionError(f"{path}: expected {'an' if want else 'no'} efuse mount, "
                             f"mountinfo has {h.fstypes_at(path)}")


class SignalWatch:
    """dbus-monitor on the private bus, collecting MountStateChanged signals."""

    def __init__(self, address):
        rule = "type='signal',interface='org.efuse.Manager1',member='MountStateChanged'"
        self.proc = h.spawn(["dbus-monitor", "--address", address, "--monitor", rule],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
        self.text = ""
        # dbus-monitor prints a NameAcquired/NameLost pair once it is monitoring.
        self.wait_for(lambda t: "NameLost" in t or "NameAcquired" in t, "dbus-monitor ready")

    def wait_for(self, pred, what, timeout=10):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not pred(self.text):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"no {what} within {timeout}s; dbus-monitor saw:\n"
                                     f"{self.text[-3000:]}")
            if select.select([fd], [], [], left)[0]:
                self.text += os.read(fd, 65536).decode(errors="replace")
        return self.text

    def expect(self, name, state):
        pattern = re.compile(r'member=MountStateChanged\s+string "' + re.escape(name) +
                             r'"\s+string "' + re.escape(state) + '"')
        self.wait_for(lambda t: pattern.search(t), f"MountStateChanged({name}, {state})")

    def close(self):
        h.reap(self.proc)


# ------------------------------------------------------------------------------- tests

def test_status_and_mounts():
    with DbusEfused() as m:
        r = m.ctl("status")
        first = r.out.splitlines()[0]
        assert re.fullmatch(r"efused \S+, 1 mount \(1 mounted\)", first), r.out
        row = [line.split() for line in r.out.splitlines() if line.startswith("a ")]
        assert row and row[0][:3] == ["a", "mounted", m.mnt], r.out

        table = m.ctl("mounts").out.splitlines()
        assert table[0].split() == ["NAME", "STATE", "MOUNTPOINT", "TRANSPORT", "TIER", "ERROR"], \
            table
        assert table[1].split()[:3] == ["a", "mounted", m.mnt], table
        # No efuse kernel module on this host: kernel_module auto runs on the stock tier.
        assert table[1].split()[4] == "stock", table

        mounts = json.loads(m.ctl("--json", "mounts").out)
        assert [x["name"] for x in mounts] == ["a"], mounts
        a = mounts[0]
        assert (a["state"], a["mountpoint"], a["source"], a["backend"], a["error"]) == \
            ("mounted", m.mnt, m.src, "passthrough", ""), a
        assert (a["kernel_module"], a["tier"], a["handlers"]) == ("auto", "stock", False), a
        assert "efuse kernel module is not loaded" in a["tier_note"], a

        st = json.loads(m.ctl("--json", "status").out)
        assert st["mount_count"] == 1 and st["mounts"] == mounts and st["version"], st
        details = m.ctl("status", "a").out
        assert "state: mounted" in details and f"mountpoint: {m.mnt}" in details, details
        assert json.loads(m.ctl("--json", "status", "a").out)["name"] == "a"

        # $EFUSE_BUS_ADDRESS is the default bus; an explicit --bus still wins.
        env = dict(os.environ, EFUSE_BUS_ADDRESS=m.address)
        r = h.run([EFUSECTL, "mounts"], env=env, timeout=60)
        assert r.out.splitlines()[1].split()[0] == "a", r.out
        r = m.ctl("status", "zz", expect=EXIT_REFUSED)
        assert "no mount named 'zz'" in r.err, r.err
        h.assert_serves(m)


def test_unmount_and_mount():
    with DbusEfused() as m:
        watch = SignalWatch(m.address)
        try:
            m.ctl("unmount", "a")
            assert_mounted(m.mnt, False)  # the reply comes once it is done
            assert m.state() == "unmounted"
            watch.expect("a", "unmounted")
            r = m.ctl("unmount", "a", expect=EXIT_REFUSED)
            assert "not mounted" in r.err, r.err

            m.ctl("mount", "a")
            assert_mounted(m.mnt)
            assert m.state() == "mounted"
            watch.expect("a", "mounted")
            h.assert_serves(m)
            r = m.ctl("mount", "a", expect=EXIT_REFUSED)
            assert "already mounted" in r.err, r.err
            r = m.ctl("mount", "nosuch", expect=EXIT_REFUSED)
            assert "no mount named 'nosuch'" in r.err, r.err
            r = m.ctl("mount", "../etc", expect=EXIT_REFUSED)
            assert "invalid mount name" in r.err, r.err
        finally:
            watch.close()


def test_unprivileged_caller_is_refused_by_the_policy():
    with DbusEfused(policy="system") as m:
        for args in (["unmount", "a"], ["mount", "a"], ["reload"]):
            r = m.ctl(*args, unprivileged=True, expect=EXIT_DENIED)
            assert "permission denied" in r.err, r.err
        assert_mounted(m.mnt)
        assert m.state() == "mounted"
        # Reading is for everyone.
        r = m.ctl("status", unprivileged=True)
        assert "1 mount (1 mounted)" in r.out, r.out
        assert json.loads(m.ctl("--json", "mounts", unprivileged=True).out)[0]["name"] == "a"
        h.assert_serves(m)


def test_unprivileged_caller_is_refused_by_efused_itself():
    # With a bus that lets anyone call anything, efused's own uid check still refuses.
    with DbusEfused(policy="open") as m:
        for args in (["unmount", "a"], ["reload"]):
            m.ctl(*args, unprivileged=True, expect=EXIT_DENIED)
        assert_mounted(m.mnt)
        assert m.state() == "mounted"
        h.assert_serves(m)


def test_reload_applies_before_returning():
    with DbusEfused() as m:
        m.write_config(with_b=True)
        m.ctl("reload")
        assert_mounted(m.extra[1])  # already live when efusectl returns
        assert set(m.mounts_json()) == {"a", "b"}
        assert "2 mounts (2 mounted)" in m.ctl("status").out

        m.write_config(with_b=False)
        m.ctl("reload")
        assert_mounted(m.extra[1], False)
        assert set(m.mounts_json()) == {"a"}
        assert_mounted(m.mnt)
        h.assert_serves(m)


def test_reload_with_invalid_config_changes_nothing():
    with DbusEfused() as m:
        m.write_config(with_b=True, broken=True)
        r = m.ctl("reload", expect=EXIT_REFUSED)
        assert re.search(re.escape(m.cfg) + r":\d+:\d+: .*mountpiont", r.err), r.err
        assert len(r.err.strip().splitlines()) == 1, f"one line for the journal: {r.err!r}"
        assert_mounted(m.mnt)
        assert_mounted(m.extra[1], False)
        assert set(m.mounts_json()) == {"a"} and m.state() == "mounted"
        h.assert_serves(m)
        # Fixed, it applies.
        m.write_config(with_b=False)
        m.ctl("reload")
        assert m.state() == "mounted"


def test_second_efused_on_the_bus_exits_before_mounting():
    """Another config, the same bus: the name is taken, so the second efused exits 75
    naming the owner, before mounting anything; the first keeps serving."""
    with DbusEfused() as m:
        other_cfg = J(m.tmp, "other.yaml")
        with open(other_cfg, "w") as f:
            f.write(f"metrics:\n  listen: \"\"\nmounts:\n  - name: b\n"
                    f"    mountpoint: {m.extra[1]}\n    backend: passthrough\n"
                    f"    source: {m.extra[0]}\n")
        r = h.run([h.EFUSED, "--config", other_cfg, "--bus", m.address], check=False,
                  timeout=60)
        assert r.rc == 75, f"exit {r.rc}\n{r.err}"
        assert f"{h.FSTYPE}" not in h.fstypes_at(m.extra[1]), "the second efused mounted"
        assert re.search(r"org\.efuse\.Manager1 is owned by pid %d \(.*efused" % m.proc.pid,
                         r.err), r.err
        assert m.state() == "mounted"
        h.assert_serves(m)


def test_status_exit_code_is_a_health_check():
    """efusectl status exits 5 while a configured mount is not mounted, 0 once it is."""
    with DbusEfused() as m:
        m.ctl("status")
        m.ctl("unmount", "a")
        r = m.ctl("status", expect=EXIT_NOT_LIVE)
        assert "1 mount (0 mounted)" in r.out, r.out
        m.ctl("--json", "status", expect=EXIT_NOT_LIVE)
        m.ctl("status", "a", expect=EXIT_NOT_LIVE)
        m.ctl("mounts")  # the table itself is no health check
        m.ctl("mount", "a")
        m.ctl("status")
        m.ctl("status", "a")


def test_metrics_port_in_use_is_reported_and_reload_retries_it():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    path = None
    try:
        with DbusEfused(start=False) as m:
            m.listen = f"127.0.0.1:{port}"
            m.write_config()
            path = J(m.tmp, "notify")
            sock, messages, stop, t = h.notify_socket(path)
            os.environ["NOTIFY_SOCKET"] = path
            try:
                m.start()
            finally:
                del os.environ["NOTIFY_SOCKET"]
            why = f'metrics: cannot listen on "127.0.0.1:{port}": Address already in use; ' \
                  "serving the mounts without /metrics (systemctl reload efused, or SIGHUP, " \
                  "retries)"
            assert why in m.log_text(), m.log_tail()
            h.wait_until(lambda: any(why in x for x in messages if x.startswith("STATUS=")),
                         10, what=f"STATUS= with the metrics error: {messages}")
            r = m.ctl("status")  # the mounts are fine: exit 0
            assert f"metrics: NOT SERVING: {why}" in r.out, r.out
            st = json.loads(m.ctl("--json", "status").out)
            assert st["daemon"]["metrics"]["error"] == why, st
            h.assert_serves(m)
            blocker.close()
            m.ctl("reload")  # nothing changed in the file; the bind is retried
            r = m.ctl("status")
            assert f"metrics: http://127.0.0.1:{port}/metrics" in r.out, r.out
            samples = parse(scrape(port))
            assert value(samples, "efuse_metrics_listen_failures_total") == 1, samples
            stop.set()
            t.join(5)
            sock.close()
    finally:
        blocker.close()


# Handlers (issue 20). This host has no efuse kernel module, so mount "a" (kernel_module
# auto) runs on the stock tier: every handler command must say so, and why, and change
# nothing; bpf_handlers changes apply without a remount.
HANDLER_DIR = J(os.path.dirname(os.path.dirname(h.EFUSED)), "bpf", "handlers")


def test_handler_commands_on_the_stock_tier_say_which_tier_and_why():
    lookup = J(HANDLER_DIR, "efuse_lookup.bpf.o")
    with DbusEfused() as m:
        before = os.stat(m.mnt).st_dev
        for args in (["handler", "list", "a"], ["handler", "stats", "a"],
                     ["handler", "swap", "a", "lookup", lookup],
                     ["handler", "remove", "a", "lookup"]):
            r = m.ctl(*args, expect=EXIT_REFUSED)
            assert "mount 'a' is served on the stock tier" in r.err, (args, r.err)
            assert "kernel_module: auto" in r.err and "efuse" in r.err, (args, r.err)
            assert "eBPF handlers run only on the kernel module tier" in r.err, (args, r.err)
            assert len(r.err.strip().splitlines()) == 1, r.err
        # The same through D-Bus directly: a named error.
        r = h.run(["busctl", f"--address={m.address}", "call", "org.efuse.Manager1",
                   "/org/efuse/Manager1", "org.efuse.Manager1", "SwapHandler", "sss", "a",
                   "lookup", lookup], check=False, timeout=60) \
            if shutil.which("busctl") else None
        if r is not None:
            assert r.rc != 0 and "stock tier" in r.err, (r.rc, r.err)
            # A relative object path is refused before anything else is looked at.
            r = h.run(["busctl", f"--address={m.address}", "call", "org.efuse.Manager1",
                       "/org/efuse/Manager1", "org.efuse.Manager1", "SwapHandler", "sss", "a",
                       "lookup", "efuse_lookup.bpf.o"], check=False, timeout=60)
            assert r.rc != 0 and "handler path 'efuse_lookup.bpf.o' is not absolute" in r.err, \
                (r.rc, r.err)
        # Unknown mount, unknown opcode: the usual errors.
        r = m.ctl("handler", "list", "nosuch", expect=EXIT_REFUSED)
        assert "no mount named 'nosuch'" in r.err, r.err
        assert os.stat(m.mnt).st_dev == before and m.state() == "mounted"
        h.assert_serves(m)


def test_handler_changes_need_root():
    lookup = J(HANDLER_DIR, "efuse_lookup.bpf.o")
    for policy in ("system", "open"):  # refused by the bus policy, then by efused itself
        with DbusEfused(policy=policy) as m:
            for args in (["handler", "swap", "a", "lookup", lookup],
                         ["handler", "remove", "a", "lookup"]):
                r = m.ctl(*args, unprivileged=True, expect=EXIT_DENIED)
                assert "permission denied" in r.err, (policy, r.err)
            # Reading is for everyone (and says the tier here).
            r = m.ctl("handler", "list", "a", unprivileged=True, expect=EXIT_REFUSED)
            assert "stock tier" in r.err, r.err
            h.assert_serves(m)


def test_reload_of_bpf_handlers_does_not_remount():
    with DbusEfused() as m:
        src_file = J(m.src, "held.txt")
        with open(src_file, "w") as f:
            f.write("before\n")
        held = open(J(m.mnt, "held.txt"))
        try:
            dev = os.stat(m.mnt).st_dev
            m.write_config(handlers={"lookup": J(HANDLER_DIR, "efuse_lookup.bpf.o")})
            m.ctl("reload")
            assert os.stat(m.mnt).st_dev == dev, "remounted"
            assert held.read() == "before\n", "a file held open across the reload broke"
            assert m.state() == "mounted"
            # A handler object efused would not load: the reload is refused with
            # FILE:LINE:COLUMN and the reason, nothing changes.
            link = J(m.tmp, "link.bpf.o")
            os.symlink(J(HANDLER_DIR, "efuse_lookup.bpf.o"), link)
            m.write_config(handlers={"lookup": link})
            r = m.ctl("reload", expect=EXIT_REFUSED)
            assert re.search(re.escape(m.cfg) + r":9:15: mounts\[0\]\.bpf_handlers\.lookup: "
                             r"cannot use '.*': .* is a symlink", r.err), r.err
            wrong = J(HANDLER_DIR, "efuse_getattr.bpf.o")
            m.write_config(handlers={"lookup": wrong})
            r = m.ctl("reload", expect=EXIT_REFUSED)
            assert "answers opcode 3, not opcode 1" in r.err, r.err
            assert os.stat(m.mnt).st_dev == dev and m.state() == "mounted"
        finally:
            held.close()
        h.assert_serves(m)


def test_efused_not_running():
    with DbusEfused(start=False) as m:
        r = m.ctl("status", expect=EXIT_UNREACHABLE)
        assert "efused is not running" in r.err, r.err
        r = m.ctl("reload", expect=EXIT_UNREACHABLE)
        assert "efused is not running" in r.err, r.err
        r = h.run([EFUSECTL, "--bus", f"unix:path={m.tmp}/no-such-socket", "status"],
                  check=False, timeout=60)
        assert r.rc == EXIT_UNREACHABLE and "cannot connect" in r.err, (r.rc, r.err)


def test_efusectl_usage():
    for args in ([], ["bogus"], ["mount"], ["unmount", "a", "b"], ["--frobnicate", "status"],
                 ["handler"], ["handler", "bogus", "a"], ["handler", "swap", "a", "lookup"],
                 ["handler", "remove", "a"], ["handler", "list"]):
        r = h.run([EFUSECTL, *args], check=False, timeout=30)
        assert r.rc == 2 and "efusectl" in r.err, (args, r.rc, r.err)
    r = h.run([EFUSECTL, "--help"], timeout=30)
    for word in ("status", "mounts", "unmount", "reload", "--bus", "EFUSE_BUS_ADDRESS",
                 "Exit status", "handler swap NAME OPCODE PATH", "handler remove NAME OPCODE",
                 "handler list NAME", "handler stats NAME", "stock kernel FUSE"):
        assert word in r.out, word


if __name__ == "__main__":
    require_daemon_contract()
    h.main(globals(), require=("dbus-daemon", "dbus-monitor", "setpriv"))
