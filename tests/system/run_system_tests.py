#!/usr/bin/env python3
"""efused under a real systemd: boots a Debian 12 container and does what an operator does.

Run through scripts/test-system.sh (root). Steps: unpack the cached rootfs (built once with
mmdebstrap), install efused, efusectl, the unit, the D-Bus policy, the tmpfiles snippet and
a config, boot it with systemd-nspawn, then drive it with systemctl, efusectl, curl and
findmnt from inside. Everything is torn down at the end, also on failure or Ctrl-C.
Prints `N passed, N failed`; exits 1 if anything failed.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import container as ct  # noqa: E402
import rootfs  # noqa: E402

CONF = "/etc/efuse/mounts.yaml"
UNIT = "efused.service"

MOUNT_DATA = """\
  - name: data
    mountpoint: /srv/efuse/data
    backend: passthrough
    source: /var/lib/efuse-test/data
"""
MOUNT_LOGS = """\
  - name: logs
    mountpoint: /srv/efuse/logs
    backend: passthrough
    source: /var/lib/efuse-test/logs
"""
HEADER = """\
# written by tests/system/run_system_tests.py
metrics:
  listen: "127.0.0.1:9567"
mounts:
"""
CONFIG_ONE = HEADER + MOUNT_DATA
CONFIG_TWO = HEADER + MOUNT_DATA + MOUNT_LOGS
# A schema error on a known line: the journal must name CONF:BROKEN_LINE:column.
CONFIG_BROKEN = HEADER + MOUNT_DATA + MOUNT_LOGS.replace("backend: passthrough",
                                                         "backend: nosuch")
BROKEN_LINE = CONFIG_BROKEN.splitlines().index("    backend: nosuch") + 1


class Failure(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise Failure(message)


def describe(r):
    return "exit %d\n--- stdout\n%s--- stderr\n%s" % (r.returncode, r.stdout, r.stderr)


class Suite:
    def __init__(self, c):
        self.c = c
        self.passed = 0
        self.failed = []
        self.notes = {}

    def check(self, name, fn):
        t0 = time.monotonic()
        try:
            fn()
        except Failure as e:
            self.failed.append(name)
            print("FAIL %s (%.1fs)\n     %s" % (name, time.monotonic() - t0,
                                               str(e).replace("\n", "\n     ")), flush=True)
            return False
        except Exception:  # a bug in the test itself still counts as a failure
            self.failed.append(name)
            print("FAIL %s\n%s" % (name, traceback.format_exc()), flush=True)
            return False
        self.passed += 1
        print("ok   %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
        return True

    # ---- helpers -------------------------------------------------------------------------

    def sh(self, script, timeout=60, ok=True):
        r = self.c.sh(script, timeout=timeout)
        if ok:
            expect(r.returncode == 0, "`%s` failed: %s" % (script, describe(r)))
        return r

    def prop(self, name):
        return self.sh("systemctl show -p %s --value %s" % (name, UNIT)).stdout.strip()

    def efuse_mounts(self):
        """{mountpoint: (mount id, fstype, source)} of the FUSE mounts efused made."""
        out = {}
        for line in self.sh("cat /proc/1/mountinfo").stdout.splitlines():
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1].startswith("fuse"):
                out[fields[4]] = (fields[0], fields[sep + 1], fields[sep + 2])
        return out

    def write_config(self, text):
        r = self.c.sh("cat > %s.new && mv %s.new %s" % (CONF, CONF, CONF), input=text)
        expect(r.returncode == 0, "writing %s: %s" % (CONF, describe(r)))

    def journal(self, lines=300):
        return self.sh("journalctl -u %s -o cat --no-pager -n %d" % (UNIT, lines)).stdout

    def wait_for(self, what, fn, timeout):
        deadline = time.monotonic() + timeout
        while True:
            v = fn()
            if v:
                return v
            if time.monotonic() > deadline:
                raise Failure("timed out after %ds waiting for %s" % (timeout, what))
            time.sleep(0.2)

    # ---- the checks ----------------------------------------------------------------------

    def run(self):
        self.check("systemd-analyze verify efused.service (inside)", self.t_verify)
        if not self.check("systemctl start efused: active (running), mounts live", self.t_start):
            print("---- journal of %s\n%s" % (UNIT, self.c.sh(
                "journalctl -u %s -o short-monotonic --no-pager -n 80" % UNIT).stdout))
            return
        self.check("efused runs in PID 1's mount namespace", self.t_mount_namespace)
        self.check("a file written through the mount appears in the source", self.t_write)
        self.check("/metrics shows efuse_mount_up 1 (curl)", self.t_metrics)
        self.check("efusectl status as root", self.t_efusectl_status)
        self.check("D-Bus policy: others may read, not change", self.t_policy_non_root)
        self.check("systemctl reload adds a mount; the first keeps its open file", self.t_reload_add)
        self.check("broken config: reload fails, service and mounts unchanged, journal "
                   "names file:line:column", self.t_reload_broken)
        self.check("SIGHUP reload (systemctl kill -s HUP) applies the config", self.t_sighup)
        self.check("watchdog is fed (WATCHDOG=1 seen by systemd)", self.t_watchdog)
        self.check("kill -9: Restart=on-failure brings the mounts back, no dead mount",
                   self.t_kill9_restart)
        self.check("systemd-analyze security efused.service", self.t_security)
        self.check("systemctl stop efused: mounts gone, no ENOTCONN left", self.t_stop)

    def t_verify(self):
        r = self.sh("systemd-analyze verify %s 2>&1" % UNIT, ok=False)
        # verify prints problems of the unit and of units it pulls in; ours must be clean.
        expect(r.returncode == 0 and "efused" not in r.stdout,
               "systemd-analyze verify: %s" % describe(r))

    def t_start(self):
        r = self.sh("systemctl start %s" % UNIT, timeout=90, ok=False)
        expect(r.returncode == 0, "systemctl start: %s\n%s" % (
            describe(r), self.sh("systemctl status --no-pager -l %s" % UNIT, ok=False).stdout))
        state = (self.prop("ActiveState"), self.prop("SubState"))
        expect(state == ("active", "running"), "state after start: %s" % (state,))
        # Type=notify: start returns after READY=1, which efused sends once every mount was
        # attempted, so the mount must be there now, without waiting.
        mounts = self.efuse_mounts()
        expect("/srv/efuse/data" in mounts, "no FUSE mount at /srv/efuse/data right after "
               "start returned: %s" % mounts)
        r = self.sh("findmnt -n -o FSTYPE,SOURCE,TARGET /srv/efuse/data")
        self.notes["findmnt"] = r.stdout.strip()
        expect(r.stdout.split()[0].startswith("fuse"), "findmnt: %r" % r.stdout)
        status = self.prop("StatusText")
        expect("1 of 1" in status, "STATUS= not reported: %r" % status)
        self.notes["status"] = status

    def t_mount_namespace(self):
        r = self.sh("pid=$(systemctl show -p MainPID --value %s); "
                    "readlink /proc/$pid/ns/mnt /proc/1/ns/mnt" % UNIT)
        ns = r.stdout.split()
        expect(len(ns) == 2 and ns[0] == ns[1], "efused's mount namespace differs from "
               "PID 1's: %s" % ns)

    def t_write(self):
        self.sh("umask 022; echo hello-through-fuse > /srv/efuse/data/written.txt && "
                "mkdir /srv/efuse/data/newdir && (umask 002; : > /srv/efuse/data/group.txt)")
        r = self.sh("cat /var/lib/efuse-test/data/written.txt; cat /srv/efuse/data/seed.txt")
        expect(r.stdout == "hello-through-fuse\nseed\n", "source or mount content: %r"
               % r.stdout)
        # New files get the mode their creator asked for, masked by the creator's umask
        # only, as on any local file system (not by efused's own umask).
        r = self.sh("cd /var/lib/efuse-test/data && stat -c '%n %a %U' written.txt newdir "
                    "group.txt")
        want = "written.txt 644 root\nnewdir 755 root\ngroup.txt 664 root\n"
        expect(r.stdout == want, "modes in the source of files created through the mount "
               "under systemd:\n%s(expected:\n%s)" % (r.stdout, want))

    def t_metrics(self):
        r = self.sh("curl -fsS --max-time 5 http://127.0.0.1:9567/metrics")
        m = re.search(r'^efuse_mount_up\{[^}]*mount="data"[^}]*\} 1$', r.stdout, re.M)
        expect(m is not None, "no efuse_mount_up{mount=\"data\"} 1 in /metrics:\n%s"
               % "\n".join(l for l in r.stdout.splitlines() if "mount_up" in l))
        self.notes["metric"] = m.group(0)

    def t_efusectl_status(self):
        r = self.sh("efusectl status")
        expect("data" in r.stdout and "mounted" in r.stdout, "efusectl status:\n%s" % r.stdout)
        r = self.sh("efusectl mounts --json")
        mounts = {m["name"]: m for m in json.loads(r.stdout)}
        expect(mounts.get("data", {}).get("state") == "mounted", "efusectl mounts --json: %s"
               % r.stdout)

    def t_policy_non_root(self):
        nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups -- "
        r = self.sh(nobody + "efusectl status", ok=False)
        expect(r.returncode == 0, "efusectl status as nobody: %s" % describe(r))
        r = self.sh(nobody + "efusectl reload", ok=False)
        expect(r.returncode == 4, "efusectl reload as nobody must be denied (exit 4): %s"
               % describe(r))
        r = self.sh(nobody + "efusectl unmount data", ok=False)
        expect(r.returncode == 4, "efusectl unmount as nobody must be denied (exit 4): %s"
               % describe(r))
        expect("/srv/efuse/data" in self.efuse_mounts(), "data was unmounted by nobody")

    def t_reload_add(self):
        before = self.efuse_mounts()
        # A process holds a file open on the first mount across the reload.
        holder = self.c.popen(
            "exec 3>>/srv/efuse/data/held.txt || exit 10; echo before >&3 || exit 11; "
            ": > /run/efuse-test-holder.ready; "
            "for i in $(seq 600); do [ -e /run/efuse-test-holder.go ] && break; sleep 0.1; done; "
            "[ -e /run/efuse-test-holder.go ] || exit 12; "
            "echo after >&3 || exit 13; exec 3>&-; exit 0")
        try:
            self.wait_for("the holder to open its file",
                          lambda: self.c.sh("test -e /run/efuse-test-holder.ready").returncode == 0,
                          30)
            self.write_config(CONFIG_TWO)
            t0 = time.monotonic()
            r = self.sh("systemctl reload %s" % UNIT, timeout=90, ok=False)
            took = time.monotonic() - t0
            expect(r.returncode == 0, "systemctl reload: %s\n%s" % (describe(r), self.journal(30)))
            # ExecReload returns once the reload was applied: the new mount is there now.
            after = self.efuse_mounts()
            expect("/srv/efuse/logs" in after, "/srv/efuse/logs is not mounted right after "
                   "`systemctl reload` returned (%.1fs): %s" % (took, after))
            expect(after.get("/srv/efuse/data") == before["/srv/efuse/data"],
                   "the first mount was replaced by the reload: %s -> %s"
                   % (before["/srv/efuse/data"], after.get("/srv/efuse/data")))
            self.sh("echo via-logs > /srv/efuse/logs/l.txt && "
                    "grep -qx via-logs /var/lib/efuse-test/logs/l.txt")
            state = self.prop("ActiveState")
            expect(state == "active", "ActiveState after reload: %s" % state)
            self.sh(": > /run/efuse-test-holder.go")
            try:
                out, _ = holder.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                raise Failure("the process holding a file open on /srv/efuse/data hung")
            expect(holder.returncode == 0, "holder exited %d: %s" % (holder.returncode, out))
            r = self.sh("cat /var/lib/efuse-test/data/held.txt")
            expect(r.stdout == "before\nafter\n", "file written across the reload: %r"
                   % r.stdout)
            self.notes["reload_seconds"] = "%.2f" % took
        finally:
            if holder.poll() is None:
                os.killpg(holder.pid, signal.SIGKILL)
                holder.wait()

    def t_reload_broken(self):
        before = self.efuse_mounts()
        self.write_config(CONFIG_BROKEN)
        try:
            r = self.sh("systemctl reload %s" % UNIT, timeout=90, ok=False)
            expect(r.returncode != 0, "systemctl reload of a broken config succeeded")
            state = (self.prop("ActiveState"), self.prop("SubState"))
            expect(state == ("active", "running"), "state after a failed reload: %s" % (state,))
            expect(self.efuse_mounts() == before, "mounts changed by a failed reload: %s -> %s"
                   % (before, self.efuse_mounts()))
            pat = re.compile(r"%s:%d:\d+" % (re.escape(CONF), BROKEN_LINE))
            log = self.journal()
            m = pat.search(log)
            expect(m is not None, "the journal does not name %s:%d:COLUMN:\n%s"
                   % (CONF, BROKEN_LINE, "\n".join(log.splitlines()[-15:])))
            self.notes["broken_journal"] = next(l for l in log.splitlines() if pat.search(l))
            self.sh("grep -q x /srv/efuse/data/held.txt || true; ls /srv/efuse/logs >/dev/null")
        finally:
            self.write_config(CONFIG_TWO)

    def t_sighup(self):
        before = self.efuse_mounts()
        self.write_config(CONFIG_ONE)
        try:
            self.sh("systemctl kill -s HUP --kill-who=main %s" % UNIT)
            self.wait_for("/srv/efuse/logs to go after SIGHUP",
                          lambda: "/srv/efuse/logs" not in self.efuse_mounts(), 20)
            self.wait_for("the unit to leave 'reloading'",
                          lambda: self.prop("ActiveState") == "active", 20)
            expect(self.efuse_mounts().get("/srv/efuse/data") == before["/srv/efuse/data"],
                   "SIGHUP reload remounted data")
        finally:
            self.write_config(CONFIG_TWO)
        r = self.sh("systemctl reload %s" % UNIT, timeout=90, ok=False)
        expect(r.returncode == 0 and "/srv/efuse/logs" in self.efuse_mounts(),
               "reload back to two mounts: %s" % describe(r))

    def t_watchdog(self):
        self.notes["watchdog"] = "WatchdogUSec=" + self.prop("WatchdogUSec")
        # systemd stamps WatchdogTimestamp on READY=1 and on every WATCHDOG=1; with nothing
        # else going on, a newer stamp is a ping. efused pings every quarter of WatchdogSec
        # (7.5 s for 30 s) while every live mount answers STATFS.
        first = self.prop("WatchdogTimestampMonotonic")
        self.wait_for("a WATCHDOG=1 ping", lambda: self.prop("WatchdogTimestampMonotonic")
                      != first, 20)
        expect(self.prop("NRestarts") == "0", "restarted: NRestarts=%s" % self.prop("NRestarts"))

    def t_kill9_restart(self):
        pid = self.prop("MainPID")
        self.sh("systemctl kill -s KILL --kill-who=main %s" % UNIT)
        self.wait_for("a restart", lambda: self.prop("NRestarts") == "1" and
                      self.prop("ActiveState") == "active" and self.prop("SubState") ==
                      "running" and self.prop("MainPID") not in ("0", pid), 40)
        mounts = self.efuse_mounts()
        for mp in ("/srv/efuse/data", "/srv/efuse/logs"):
            n = sum(1 for line in self.sh("cat /proc/1/mountinfo").stdout.splitlines()
                    if line.split()[4] == mp)
            expect(n == 1, "%d mounts stacked at %s after the restart" % (n, mp))
            expect(mp in mounts, "%s not mounted after the restart" % mp)
        self.sh("cat /srv/efuse/data/written.txt >/dev/null && "
                "echo again > /srv/efuse/data/again.txt && "
                "grep -qx again /var/lib/efuse-test/data/again.txt")

    def t_security(self):
        r = self.sh("systemd-analyze security --no-pager %s" % UNIT, ok=False)
        m = re.search(r"Overall exposure level for %s: ([0-9.]+) (\w+)" % re.escape(UNIT),
                      r.stdout)
        expect(m is not None, "no exposure level: %s" % describe(r))
        self.notes["security"] = "%s %s" % (m.group(1), m.group(2))
        self.notes["security_full"] = r.stdout

    def t_stop(self):
        r = self.sh("systemctl stop %s" % UNIT, timeout=60, ok=False)
        expect(r.returncode == 0, "systemctl stop: %s" % describe(r))
        expect(self.prop("ActiveState") == "inactive", "state: %s" % self.prop("ActiveState"))
        result = self.prop("Result")
        expect(result == "success", "Result=%s after stop (efused did not exit cleanly)" % result)
        expect(self.efuse_mounts() == {}, "FUSE mounts left: %s" % self.efuse_mounts())
        for mp in ("/srv/efuse/data", "/srv/efuse/logs"):
            r = self.sh("stat -c %%F %s && ls %s >/dev/null && ! mountpoint -q %s"
                        % (mp, mp, mp), ok=False)
            expect(r.returncode == 0, "%s after stop: %s" % (mp, describe(r)))


def install(root, efused, efusectl):
    def put(src, dst, mode):
        path = os.path.join(root, dst.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(src, path)
        os.chmod(path, mode)

    put(efused, "/usr/sbin/efused", 0o755)
    put(efusectl, "/usr/bin/efusectl", 0o755)
    put(os.path.join(REPO, "systemd/efused.service"), "/usr/lib/systemd/system/efused.service",
        0o644)
    put(os.path.join(REPO, "systemd/efused.tmpfiles"), "/usr/lib/tmpfiles.d/efused.conf", 0o644)
    put(os.path.join(REPO, "systemd/org.efuse.Manager1.conf"),
        "/usr/share/dbus-1/system.d/org.efuse.Manager1.conf", 0o644)
    for d in ("srv/efuse/data", "srv/efuse/logs", "var/lib/efuse-test/data",
              "var/lib/efuse-test/logs", "etc/efuse"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    with open(os.path.join(root, "var/lib/efuse-test/data/seed.txt"), "w") as f:
        f.write("seed\n")
    with open(os.path.join(root, CONF.lstrip("/")), "w") as f:
        f.write(CONFIG_ONE)
    # Log persistently in the container, so a failed run leaves a journal to read.
    os.makedirs(os.path.join(root, "var/log/journal"), exist_ok=True)


def check_libraries(root):
    """ldd inside the rootfs: every library efused and efusectl need is installed."""
    missing = []
    for binary in ("/usr/sbin/efused", "/usr/bin/efusectl"):
        r = subprocess.run(["chroot", root, "ldd", binary], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            missing.append("%s: ldd failed: %s" % (binary, r.stderr.strip()))
        missing += ["%s: %s" % (binary, l.strip()) for l in r.stdout.splitlines()
                    if "not found" in l]
    return missing


class Interrupted(Exception):
    pass


def on_signal(signum, frame):
    raise Interrupted("signal %d" % signum)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--efused", default=os.path.join(REPO, "build/bin/efused"))
    ap.add_argument("--efusectl", default=os.path.join(REPO, "build/bin/efusectl"))
    ap.add_argument("--cache-dir", default="/var/cache/efuse-test")
    ap.add_argument("--work-dir", default="/var/tmp")
    ap.add_argument("--keep", action="store_true", help="leave the rootfs copy behind")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run_system_tests: needs root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t_begin = time.monotonic()
    passed, failed = 0, []
    root = c = None
    suite = None
    log_path = None
    try:
        tarball = rootfs.cached_tarball(args.cache_dir, lambda m: print(m, flush=True))
        root = rootfs.unpack(tarball, args.work_dir)
        log_path = root + ".console.log"
        install(root, args.efused, args.efusectl)
        missing = check_libraries(root)
        if missing:
            failed.append("runtime libraries present in the rootfs")
            print("FAIL runtime libraries present in the rootfs:\n     " + "\n     ".join(missing))
            print("     add their packages to tests/system/rootfs.py PACKAGES")
        else:
            passed += 1
            print("ok   runtime libraries present in the rootfs (ldd)", flush=True)
        name = "efuse-systest-%d" % os.getpid()
        c = ct.Container(root, name, log_path)
        print("boot: %s" % " ".join(shlex.quote(a) for a in c.nspawn_command()), flush=True)
        t0 = time.monotonic()
        try:
            state = c.start(timeout=90)
            passed += 1
            print("ok   container boots to multi-user (%s, %.1fs)" % (state,
                                                                  time.monotonic() - t0))
        except RuntimeError as e:
            failed.append("container boots")
            print("FAIL container boots: %s" % e)
            print(open(log_path, errors="replace").read()[-4000:])
            c.stop()
            raise Interrupted("no container")
        if not missing:
            suite = Suite(c)
            suite.run()
    except Interrupted as e:
        print("stopped: %s" % e, flush=True)
        if not failed and (suite is None or not suite.failed):
            failed.append("interrupted")
    except Exception:
        traceback.print_exc()
        failed.append("harness error")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if c is not None:
            if c.leader is not None and (failed or (suite is not None and suite.failed)):
                saved = os.path.join(args.work_dir, "efuse-systest-journal.txt")
                with open(saved, "w") as f:
                    f.write(c.sh("journalctl -b -o short-monotonic --no-pager", timeout=30).stdout)
                print("the container's journal: %s" % saved)
            c.stop()
        if root is not None:
            if args.keep:
                print("kept: %s (console log %s)" % (root, log_path))
            else:
                try:
                    rootfs.remove(root)
                    if log_path and os.path.exists(log_path):
                        os.unlink(log_path)
                except RuntimeError as e:
                    print("teardown: %s" % e)
                    failed.append("teardown")
    if suite is not None:
        passed += suite.passed
        failed += suite.failed
        n = suite.notes
        if "security_full" in n:
            print("---- systemd-analyze security efused.service (inside the container)")
            print(n["security_full"].rstrip())
        print("---- summary")
        for key in ("findmnt", "status", "metric", "reload_seconds", "broken_journal",
                    "watchdog", "security"):
            if key in n:
                print("%-15s %s" % (key + ":", n[key]))
    print("system tests took %.0fs" % (time.monotonic() - t_begin))
    if failed:
        print("failed: " + "; ".join(failed))
    print("%d passed, %d failed" % (passed, len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
