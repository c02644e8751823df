"""Restart without remounting (README "Restart and upgrade"): efused under the container's
systemd is restarted (systemctl restart) and killed (kill -9, Restart=on-failure) ten times
each, on each transport, while clients use its mounts: fio --verify writing and verifying
through efused, a stat loop, and one process holding files open across every restart (one
served through efused, one by FUSE passthrough). No client may see an error or a wrong
byte, the mounts must never be remounted (same mount id), and efuse_mount_resumes_total
must count every resume. Then the bad inputs: a corrupt restart state and a configuration
that changed in a way that needs a remount both lead to a clean fresh mount, said in the
journal.

The clients run on the host, reaching the container's mounts through /proc/LEADER/root (the
container has neither fio nor python; it is the same kernel and the same FUSE connection).
"""
import os
import re
import shutil
import subprocess
import tempfile
import time

from checks import CONF, UNIT, Failure, describe, expect

DATA_SRC = "/var/lib/efuse-test/data"
DATA_MP = "/srv/efuse/data"
LOGS_SRC = "/var/lib/efuse-test/logs"
LOGS_MP = "/srv/efuse/logs"
ROUNDS = 10


def config(transport, threads=4):
    # data: every read and write goes through efused (io_path cache) and names expire at
    # once, so the stat loop keeps looking up nodeids the previous efused handed out.
    # logs: FUSE passthrough (the kernel keeps the backing file; efused keeps its id).
    return """\
# written by tests/system/restart_checks.py
metrics:
  listen: "127.0.0.1:19567"
mounts:
  - name: data
    mountpoint: %s
    backend: passthrough
    source: %s
    transport: %s
    threads: %d
    io_path: cache
    cache:
      entry_timeout: 0
      attr_timeout: 0
      negative_timeout: 0
  - name: logs
    mountpoint: %s
    backend: passthrough
    source: %s
    transport: %s
    io_path: passthrough
""" % (DATA_MP, DATA_SRC, transport, threads, LOGS_MP, LOGS_SRC, transport)


HOLDER = r"""
import os, sys
def pattern(tag, n):
    unit = "%s-" % tag
    return (unit * (n // len(unit) + 1)).encode()[:n]
fds = {}
for path, size in ((sys.argv[1], 8192), (sys.argv[2], 1 << 20)):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(fd, pattern("start", size), 0)
    fds[path] = (fd, size)
print("ready", flush=True)
for line in sys.stdin:
    tag = line.strip()
    if tag == "close":
        break
    for path, (fd, size) in fds.items():
        off = size // 2
        os.pwrite(fd, pattern(tag, 4096), off)
        got = os.pread(fd, 4096, off)
        if got != pattern(tag, 4096):
            print("FAIL %s: read back %r" % (path, got[:32]), flush=True)
            sys.exit(1)
        if os.fstat(fd).st_size != size:
            print("FAIL %s: size %d" % (path, os.fstat(fd).st_size), flush=True)
            sys.exit(1)
    print("ok %s" % tag, flush=True)
for path, (fd, size) in fds.items():
    os.fsync(fd)
    os.close(fd)
print("closed", flush=True)
"""


class Clients:
    """fio --verify in a loop, a stat loop and the holder, on the host. A loop stops at its
    first error (printing it)."""

    def __init__(self, root, tmp):
        self.root = root
        self.tmp = tmp
        self.stop_file = os.path.join(tmp, "stop")
        data = root + DATA_MP
        fio = ("fio --name=restart --directory=%s --filename=fio.dat --size=8m --bs=4k "
               "--rw=randwrite --ioengine=psync --verify=crc32c --do_verify=1 "
               "--verify_fatal=1 --verify_state_save=0 --invalidate=1 --output-format=terse" % data)
        self.fio = subprocess.Popen(
            ["bash", "-c", "n=0; while [ ! -e %s ]; do %s >/dev/null || { echo \"fio run $n "
             "failed: $?\"; exit 1; }; n=$((n+1)); done; echo \"fio runs $n\"" %
             (self.stop_file, fio)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.stat = subprocess.Popen(
            ["bash", "-c", "n=0; while [ ! -e %s ]; do "
             "stat -c %%s %s/tree/f$((n %% 50)) >/dev/null || { echo \"stat $n failed\"; exit 1; }; "
             "ls %s/tree | wc -l | grep -qx 50 || { echo \"ls $n failed\"; exit 1; }; "
             "n=$((n+1)); done; echo \"stats $n\"" % (self.stop_file, data, data)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.holder = subprocess.Popen(
            ["python3", "-c", HOLDER, data + "/held.txt", root + LOGS_MP + "/held.bin"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise Failure("the holder could not open its files: %r %s" % (
                line, self.holder.stdout.read()))

    def poke(self, tag):
        """The holder writes and reads back through its open files; fails unless it can."""
        self.holder.stdin.write(tag + "\n")
        self.holder.stdin.flush()
        line = self.holder.stdout.readline().strip()
        if line != "ok " + tag:
            raise Failure("the process holding files open failed after %s: %r %s" % (
                tag, line, self.holder.stdout.read() if line else ""))

    def alive(self):
        for name, p in (("fio", self.fio), ("stat loop", self.stat)):
            if p.poll() is not None:
                raise Failure("%s stopped: %s" % (name, p.stdout.read()))

    def stop(self):
        """Stops the loops at their next turn; returns (fio output, stat output)."""
        open(self.stop_file, "w").close()
        outs = []
        for p in (self.fio, self.stat):
            try:
                out, _ = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
                out += " (killed: did not stop)"
            outs.append((p.returncode, out.strip()))
        if self.holder.poll() is None:
            try:
                self.holder.stdin.write("close\n")
                self.holder.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                out, _ = self.holder.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                out, _ = self.holder.communicate()
            outs.append((self.holder.returncode, out.strip()))
        else:
            outs.append((self.holder.returncode, self.holder.stdout.read().strip()))
        return outs


class RestartChecks:
    """Mixed into the operator suite's Checks (self.sh, self.prop, self.c, ...)."""

    def restart_checks(self):
        transport = "classic"
        if self.check("restart without remounting (%s): setup" % transport,
                      lambda: self.r_setup(transport)):
            self.check("systemctl restart x%d under fio --verify, a stat loop and open files "
                       "(%s): no error, no wrong byte, same mounts" % (ROUNDS, transport),
                       lambda: self.r_rounds(transport, "restart"))
            self.check("kill -9 x%d with Restart=on-failure, same load (%s): no error, no "
                       "wrong byte, same mounts" % (ROUNDS, transport),
                       lambda: self.r_rounds(transport, "kill"))
        self.check("io_uring mounts: a restart remounts them cleanly, said when mounted; "
                   "a classic mount beside them resumes", self.r_uring_remounts)
        self.check("corrupt restart state: a clean fresh mount, said in the journal",
                   self.r_corrupt_state)
        self.check("config changed so that it needs a remount: a clean fresh mount at restart, "
                   "said in the journal", self.r_changed_config)
        self.check("systemctl stop still unmounts, and empties the fd store", self.r_stop)

    # ---- helpers --------------------------------------------------------------------------

    def host_root(self):
        return "/proc/%d/root" % self.c.leader

    def mount_ids(self):
        m = self.efuse_mounts()
        return {mp: m.get(mp, (None,))[0] for mp in (DATA_MP, LOGS_MP)}

    def resumes(self):
        out = self.sh("curl -sf 127.0.0.1:19567/metrics").stdout
        got = {}
        for mount in ("data", "logs"):
            m = re.search(r'^efuse_mount_resumes_total\{mount="%s"\} (\S+)$' % mount, out, re.M)
            expect(m is not None, "no efuse_mount_resumes_total for %s" % mount)
            got[mount] = int(float(m.group(1)))
        return got

    def wait_active(self, old_pid):
        self.wait_for("efused to run again", lambda: self.prop("ActiveState") == "active" and
                      self.prop("SubState") == "running" and
                      self.prop("MainPID") not in ("0", old_pid), 60)

    # ---- the checks -----------------------------------------------------------------------

    def r_setup(self, transport):
        self.sh("mkdir -p %s/tree && for i in $(seq 0 49); do echo $i > %s/tree/f$i; done" %
                (DATA_SRC, DATA_SRC))
        self.write_config(config(transport))
        r = self.sh("systemctl reload %s" % UNIT, timeout=90, ok=False)
        expect(r.returncode == 0, "reload: %s\n%s" % (describe(r), self.journal(30)))
        st = self.sh("efusectl --json status data").stdout
        expect('"transport": "%s"' % transport in st or
               '"transport":"%s"' % transport in st.replace(" ", ""),
               "data does not run on %s: %s" % (transport, st))
        expect(self.resumes() == {"data": 0, "logs": 0}, "resumes after a fresh mount: %s"
               % self.resumes())

    def r_rounds(self, transport, how):
        before = self.mount_ids()
        expect(all(before.values()), "not mounted: %s" % before)
        resumes0 = self.resumes()
        tmp = tempfile.mkdtemp(prefix="efuse-restart-")
        clients = Clients(self.host_root(), tmp)
        try:
            clients.poke("before")
            for i in range(ROUNDS):
                pid = self.prop("MainPID")
                # Ten starts in a few seconds exceed systemd's default start rate limit
                # (StartLimitBurst=5 in 10 s), which has nothing to do with what is tested.
                self.sh("systemctl reset-failed %s" % UNIT)
                if how == "restart":
                    r = self.sh("systemctl restart %s" % UNIT, timeout=120, ok=False)
                    expect(r.returncode == 0, "restart %d: %s\n%s" % (i, describe(r),
                                                                      self.journal(40)))
                else:
                    self.sh("systemctl kill -s KILL --kill-who=main %s" % UNIT)
                    self.wait_active(pid)
                expect(self.prop("MainPID") != pid, "round %d: efused was not replaced" % i)
                clients.poke("%s-%d" % (how, i))
                clients.alive()
                now = self.mount_ids()
                expect(now == before, "round %d: remounted (mount ids %s, before %s)\n%s"
                       % (i, now, before, self.journal(40)))
        finally:
            outs = clients.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        names = ("fio --verify loop", "stat loop", "holder")
        bad = ["%s: exit %s: %s" % (n, rc, out) for n, (rc, out) in zip(names, outs) if rc != 0]
        expect(not bad, "\n".join(bad) + "\n" + self.journal(60))
        self.notes["restart_%s_%s" % (how, transport)] = "; ".join(out for _, out in outs)
        got = self.resumes()
        want = {k: v + ROUNDS for k, v in resumes0.items()}
        expect(got == want, "efuse_mount_resumes_total %s, expected %s" % (got, want))
        journal = self.journal(2000)
        expect(re.search(r"data: resumed FUSE connection \d+ at %s \(%s" % (DATA_MP, transport),
                         journal), "no resume of data over %s in the journal" % transport)
        # The content the holder wrote reached the backing files.
        tag = "%s-%d-" % (how, ROUNDS - 1)
        for src, size in (("%s/held.txt" % DATA_SRC, 8192), ("%s/held.bin" % LOGS_SRC, 1 << 20)):
            r = self.sh("dd if=%s bs=1 skip=%d count=%d status=none; echo; wc -c < %s"
                        % (src, size // 2, len(tag), src))
            expect(r.stdout.split() == [tag, str(size)], "%s after the rounds: %r (expected "
                   "%s, %d bytes)" % (src, r.stdout, tag, size))

    def r_uring_remounts(self):
        """A connection that ran FUSE over io_uring cannot be resumed (the kernel drops the
        requests a dead ring's entries hold), so it is not kept: a restart remounts it."""
        self.sh("systemctl reset-failed %s" % UNIT)
        self.write_config(config("uring").replace(
            "    transport: uring\n    io_path: passthrough", "    transport: classic\n"
            "    io_path: passthrough"))
        r = self.sh("systemctl reload %s" % UNIT, timeout=90, ok=False)
        expect(r.returncode == 0, "reload: %s\n%s" % (describe(r), self.journal(30)))
        st = self.sh("efusectl --json status data").stdout
        expect(re.search(r'"transport":\s*"uring"', st), "data does not run on uring: %s" % st)
        expect(re.search(r'"resume_note":\s*"FUSE over io_uring', st),
               "efusectl status does not say why data will be remounted: %s" % st)
        expect(re.search(r"data: a restart of efused will remount it \(FUSE over io_uring",
                         self.journal(100)), "no log line that data will be remounted")
        before = self.resumes()
        self.sh("systemctl restart %s" % UNIT, timeout=120)
        got = self.resumes()
        expect(got["data"] == 0 and got["logs"] == before["logs"] + 1,
               "efuse_mount_resumes_total %s (before %s): data (io_uring) not remounted, or "
               "logs (classic) not resumed" % (got, before))
        self.expect_single_live(DATA_MP)
        self.expect_single_live(LOGS_MP, probe=False)

    def r_corrupt_state(self):
        self.sh("systemctl reset-failed %s" % UNIT)
        self.write_config(config("classic"))
        r = self.sh("systemctl reload %s" % UNIT, timeout=90, ok=False)
        expect(r.returncode == 0, "reload: %s\n%s" % (describe(r), self.journal(30)))
        resumes0 = self.resumes()
        pid = self.prop("MainPID")
        # The memfd efused keeps its state in (also in systemd's store): overwrite its header.
        r = self.sh("for f in /proc/%s/fd/*; do case $(readlink $f) in "
                    "'/memfd:efuse-state-data (deleted)') "
                    "printf 'garbage-garbage-garbage' | dd of=$f bs=1 conv=notrunc "
                    "status=none; echo $f;; esac; done" % pid)
        expect(r.stdout.strip(), "no state memfd of mount data in efused's descriptors")
        self.sh("systemctl kill -s KILL --kill-who=main %s" % UNIT)
        self.wait_active(pid)
        journal = self.journal(200)
        expect(re.search(r"data: not resuming the previous efused's connection: the restart "
                         r"state is unusable: .*mounting afresh", journal),
               "no log line about the unusable state:\n" + journal[-3000:])
        # Mount ids and connection numbers are reused by the kernel, so a fresh mount shows
        # as the resume count starting again; logs, whose state was intact, resumed.
        got = self.resumes()
        expect(got["data"] == 0 and got["logs"] == resumes0["logs"] + 1,
               "efuse_mount_resumes_total %s (before %s): data not mounted afresh, or logs not "
               "resumed" % (got, resumes0))
        self.expect_single_live(DATA_MP)

    def r_changed_config(self):
        self.sh("systemctl reset-failed %s" % UNIT)
        # One resume first, so that a fresh mount shows as the count going back to 0.
        self.sh("systemctl restart %s" % UNIT, timeout=120)
        expect(self.resumes()["data"] >= 1, "no resume: %s" % self.resumes())
        self.write_config(config("classic", threads=2))  # threads: needs a remount
        r = self.sh("systemctl restart %s" % UNIT, timeout=120, ok=False)
        expect(r.returncode == 0, "restart: %s" % describe(r))
        journal = self.journal(200)
        expect(re.search(r"data: not resuming the previous efused's connection: its "
                         r"configuration changed in a way that needs a remount", journal),
               "no log line about the changed configuration:\n" + journal[-3000:])
        got = self.resumes()
        expect(got["data"] == 0, "efuse_mount_resumes_total %s: data not mounted afresh" % got)
        self.expect_single_live(DATA_MP)

    def expect_single_live(self, mp, probe=True):
        n = sum(1 for line in self.sh("cat /proc/1/mountinfo").stdout.splitlines()
                if line.split()[4] == mp)
        expect(n == 1, "%d mounts stacked at %s" % (n, mp))
        if probe:
            self.sh("stat %s/tree/f1 >/dev/null && echo fresh > %s/fresh.txt && "
                    "grep -qx fresh %s/fresh.txt" % (mp, mp, DATA_SRC))

    def r_stop(self):
        self.sh("systemctl reset-failed %s" % UNIT)
        pid = self.prop("MainPID")
        self.sh("systemctl stop %s" % UNIT, timeout=90)
        expect(self.efuse_mounts() == {}, "mounts left after stop: %s" % self.efuse_mounts())
        r = self.sh("systemctl show -p NFileDescriptorStore --value %s" % UNIT, ok=False)
        n = r.stdout.strip()
        expect(n in ("", "0"), "fd store not empty after stop: %s" % n)
        r = self.sh("systemctl start %s" % UNIT, timeout=90, ok=False)
        expect(r.returncode == 0, "start again: %s" % describe(r))
        expect(self.prop("MainPID") != pid, "efused did not start anew")
