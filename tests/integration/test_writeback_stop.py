#!/usr/bin/env python3
"""A clean stop loses no written data under the writeback cache: with `--writeback-cache`
(config `cache: {writeback: true}`) data an application wrote and did not fsync sits in the
kernel's page cache of the FUSE file until the kernel writes it back through efused. A
clean stop (SIGTERM, a reload that removes the mount) must have efused flush it before it
unmounts, so every byte is in the backing file afterwards, even while the writer still
holds its file open (which makes the unmount a lazy detach)."""

import hashlib
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402

J = os.path.join
SIZE = 8 << 20  # several MB: well below what the kernel writes back on its own soon
BLOCK = 4096

# Writes SIZE bytes of a pattern without fsync, prints "written" and keeps the file open
# (no close: close() would write the dirty pages back itself) until stdin closes.
WRITER = r"""
import hashlib, os, struct, sys
path, size, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
for i in range(size // bs):
    block = (struct.pack("<Q", i) + hashlib.sha256(b"%d" % i).digest() * (bs // 32))[:bs]
    view = memoryview(block)
    while view:
        view = view[os.write(fd, view):]
print("written", flush=True)
sys.stdin.read()
try:
    os.close(fd)
except OSError as e:
    print(f"close: {e}", file=sys.stderr)
"""


def expected(size=SIZE, bs=BLOCK):
    import struct
    d = hashlib.sha256()
    for i in range(size // bs):
        d.update((struct.pack("<Q", i) + hashlib.sha256(b"%d" % i).digest() * (bs // 32))[:bs])
    return d.hexdigest()


def start_writer(path):
    w = h.spawn([sys.executable, "-c", WRITER, path, str(SIZE), str(BLOCK)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = w.stdout.readline()  # bounded: the writer either prints it or exits
    assert line.strip() == "written", f"writer failed: {line!r} {w.stderr.read() if w.poll() is not None else ''}"
    return w


def backing_size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def check_backing(path):
    size = backing_size(path)
    digest = h.sha256_file(path) if size else None
    assert size == SIZE and digest == expected(), (
        f"{path}: {size} of {SIZE} bytes written before the stop reached the backing file"
        f"{'' if size != SIZE else ' but their content differs'}")


def assert_writeback_on(m):
    log = m.log_text()
    assert "writeback cache on" in log, f"the writeback cache was not negotiated\n{m.log_tail()}"


@h.mount_options(args=["--writeback-cache"])
def test_sigterm_flushes_dirty_pages(m):
    assert_writeback_on(m)
    w = start_writer(m.m("data"))
    try:
        print(f"  backing file held {backing_size(m.s('data'))} of {SIZE} bytes before SIGTERM")
        m.stop_clean(signal.SIGTERM)
        m.clean_exit = False
    finally:
        h.reap(w)
    check_backing(m.s("data"))
    assert "flushed" in m.log_text(), f"no flush logged\n{m.log_tail()}"


@h.mount_options(args=["--writeback-cache"])
def test_sigint_flushes_dirty_pages_of_closed_and_open_files(m):
    # A file written and closed (close() wrote it back) and one still open and dirty.
    h.write_file(m.m("closed"), b"c" * 100000)
    w = start_writer(m.m("data"))
    try:
        m.stop_clean(signal.SIGINT)
        m.clean_exit = False
    finally:
        h.reap(w)
    assert h.read_file(m.s("closed")) == b"c" * 100000
    check_backing(m.s("data"))


class ConfigMount(h.EfusedMount):
    """efused --config CFG with two mounts: 'keep' (src0/mnt0) and 'wb' (src1/mnt1, writeback
    cache); drop_wb() rewrites the config without 'wb' and reloads (SIGHUP)."""

    def __init__(self):
        super().__init__(count=2, start=False, tag="efuse-wbstop")
        self.cfg = J(self.tmp, "mounts.yaml")
        self.write_config(with_wb=True)

    def write_config(self, with_wb):
        lines = ['metrics:', '  listen: ""', "mounts:",
                 "  - name: keep", f"    mountpoint: {self.mnts[0]}",
                 "    backend: passthrough", f"    source: {self.srcs[0]}"]
        if with_wb:
            lines += ["  - name: wb", f"    mountpoint: {self.mnts[1]}",
                      "    backend: passthrough", f"    source: {self.srcs[1]}",
                      "    cache: {writeback: true}"]
        with open(self.cfg + ".new", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(self.cfg + ".new", self.cfg)

    def cmd(self):
        return [h.EFUSED, "--config", self.cfg, "--bus", "none"] + h.EFUSED_ARGS

    def drop_wb(self):
        """Reload without 'wb' and wait until efused is done with it: the writer still holds
        its file open, so efused detaches the mount and, after its grace period, aborts the
        connection (logged). Only then may the writer go: its exit would close the file,
        and close() writes dirty pages back by itself while the connection lives."""
        self.write_config(with_wb=False)
        os.kill(self.proc.pid, signal.SIGHUP)
        h.wait_until(lambda: "wb: still in use" in self.log_text(), 30,
                     what="efused to finish unmounting wb")
        assert not h.is_fuse_mounted(self.mnts[1]), f"wb still mounted\n{self.log_tail()}"


def test_reload_removing_mount_flushes_dirty_pages():
    m = ConfigMount()
    try:
        m.start()
        assert_writeback_on(m)
        w = start_writer(J(m.mnts[1], "data"))
        try:
            m.drop_wb()
        finally:
            h.reap(w)
        check_backing(J(m.srcs[1], "data"))
        assert h.is_efuse_mounted(m.mnts[0]), "the other mount went away too"
        m.mnts = m.mnts[:1]  # only 'keep' must be gone after the stop
        m.stop_clean(signal.SIGTERM)
    finally:
        m.cleanup()


if __name__ == "__main__":
    h.main(globals())
