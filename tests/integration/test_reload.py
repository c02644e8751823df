#!/usr/bin/env python3
"""Config reloads without disruption: fio (with verification) and held-open files keep
working on one mount across 20 reloads (SIGHUP) that add and remove other mounts and change
its cache policy live; the mount itself is never remounted. An invalid config on reload
keeps the running config and reports FILE:LINE:COLUMN."""

import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402


class ConfigMount(h.EfusedMount):
    """efused --config CFG serving mounts[0] = src/mnt plus extras toggled by reloads."""

    def __init__(self, extras=3):
        super().__init__(count=1 + extras, start=False, tag="efuse-reload")
        self.cfg = os.path.join(self.tmp, "mounts.yaml")
        self.main = (self.srcs[0], self.mnts[0])
        self.extras = list(zip(self.srcs[1:], self.mnts[1:]))
        self.write_config(set(), attr_timeout=1)

    def write_config(self, live_extras, attr_timeout, broken=False):
        lines = ['metrics:', '  listen: ""', "mounts:",
                 "  - name: main", f"    mountpoint: {self.main[1]}",
                 "    backend: passthrough", f"    source: {self.main[0]}",
                 f"    cache: {{attr_timeout: {attr_timeout}, entry_timeout: {attr_timeout}}}"]
        for i in sorted(live_extras):
            src, mnt = self.extras[i]
            lines += [f"  - name: extra{i}", f"    mountpoint: {mnt}",
                      "    backend: passthrough", f"    source: {src}"]
        if broken:
            lines += ["    thraeds: 4"]  # a typo: unknown key
        with open(self.cfg + ".new", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(self.cfg + ".new", self.cfg)  # editors replace files too

    def cmd(self):
        return [h.EFUSED, "--config", self.cfg, "--bus", "none"] + h.EFUSED_ARGS

    def start(self, timeout=h.START_TIMEOUT):
        # Only the main mount is configured at first.
        mnts, self.mnts = self.mnts, [self.main[1]]
        try:
            return super().start(timeout)
        finally:
            self.mnts = mnts

    def check_alive(self):
        mnts, self.mnts = self.mnts, [self.main[1]]
        try:
            super().check_alive()
        finally:
            self.mnts = mnts

    def reload(self):
        before = self.log_text().count("reloading ") + self.log_text().count("reload failed")
        os.kill(self.proc.pid, signal.SIGHUP)
        h.wait_until(lambda: self.log_text().count("reloading ") +
                     self.log_text().count("reload failed") > before, 20, what="reload logged")


def mount_id(path):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == path:
                return parts[0]
    return None


def test_twenty_reloads_under_io():
    m = ConfigMount()
    try:
        m.start()
        main = m.main[1]
        main_id = mount_id(main)
        held = open(os.path.join(main, "held"), "w+b")
        held.write(b"before reloads\n")
        held.flush()
        # fio runs back to back until the reloads are over; each run writes its file with
        # checksums and verifies every block (any I/O error or mismatch fails the loop).
        stop = os.path.join(m.tmp, "stop-fio")
        fio = h.spawn(["bash", "-c",
                       f"n=0; until [ -e {stop} ]; do fio --name=reload --directory={main} "
                       "--size=16M --bs=4k --rw=randwrite --ioengine=psync --numjobs=2 "
                       "--verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 >/dev/null "
                       "|| { echo fio failed >&2; exit 1; }; n=$((n+1)); done; echo $n"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1)
        live = set()
        for i in range(20):
            extra = i % len(m.extras)
            live ^= {extra}  # add it if absent, remove it if present
            m.write_config(live, attr_timeout=1 + (i % 3))
            m.reload()
            for j, (_, mnt) in enumerate(m.extras):
                h.wait_until(lambda mnt=mnt, j=j: h.is_efuse_mounted(mnt) == (j in live), 20,
                             what=f"reload {i}: extra{j} {'mounted' if j in live else 'gone'}")
            assert mount_id(main) == main_id, f"reload {i} remounted the main mount"
            held.seek(0, os.SEEK_END)
            held.write(b"reload %d\n" % i)
            held.flush()
            assert fio.poll() is None, f"fio died during reload {i}: {fio.stderr.read()}"
            time.sleep(0.1)  # let I/O run between reloads, not only during them
        open(stop, "w").close()
        out, err = fio.communicate(timeout=300)
        assert fio.returncode == 0, f"fio failed during the reloads: {err.decode()}"
        assert int(out.decode().strip() or 0) >= 1, "fio never completed a verified run"
        log = m.log_text()
        assert log.count("policy changed; applied live") >= 10, log[-2000:]
        held.seek(0)
        data = held.read()
        assert data.startswith(b"before reloads\n") and data.endswith(b"reload 19\n")
        held.close()
        m.check_alive()
    finally:
        m.cleanup()


def test_invalid_config_keeps_running_config():
    m = ConfigMount(extras=1)
    try:
        m.write_config({0}, attr_timeout=1)
        m.start()
        h.wait_until(lambda: h.is_efuse_mounted(m.extras[0][1]), 10, what="extra0 mounted")
        ids = {p: mount_id(p) for p in (m.main[1], m.extras[0][1])}
        m.write_config(set(), attr_timeout=7, broken=True)
        m.reload()
        log = m.log_text()
        assert re.search(re.escape(m.cfg) + r":\d+:\d+: unknown key 'thraeds'.*did you mean 'threads'",
                         log), log[-2000:]
        assert "running config kept" in log
        # Nothing changed: both mounts still the same mounts, still serving.
        assert {p: mount_id(p) for p in ids} == ids
        h.write_file(os.path.join(m.extras[0][1], "still"), b"ok")
        assert h.read_file(os.path.join(m.extras[0][0], "still")) == b"ok"
        r = h.run([h.EFUSED, "--check-config", m.cfg], check=False)
        assert r.rc == 1 and re.search(r":\d+:\d+: unknown key 'thraeds'", r.err), r
        # Fixing the file and reloading applies it.
        m.write_config(set(), attr_timeout=7)
        m.reload()
        h.wait_until(lambda: not h.is_efuse_mounted(m.extras[0][1]), 10, what="extra0 removed")
        m.check_alive()
    finally:
        m.cleanup()


if __name__ == "__main__":
    h.main(globals(), require=("fio",))
