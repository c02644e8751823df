#!/usr/bin/env python3
"""io_path: auto chooses cache or passthrough per file from what earlier opens measured
(docs/adaptive-io.md): a small file read again and again ends on the page cache (its reads
stop reaching efused), large files streamed once end on passthrough; each decision shows in
/metrics (efuse_io_path_decisions_total, efuse_io_path_choice) and in `efusectl status a`.

efused runs with --config (adaptive: probe 2) and a private D-Bus, as in test_dbus.py.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port, parse, scrape, value  # noqa: E402
from test_dbus import DbusEfused, require_daemon_contract  # noqa: E402

J = os.path.join
MIB = 1 << 20


class AdaptiveEfused(DbusEfused):
    """DbusEfused whose mount "a" has io_path auto with short probes, /metrics on a port.
    source: None (a directory under /tmp), "tmpfs" (a tmpfs mounted there) or "direct" (a
    file system that does direct I/O: /tmp's if it does, else an ext4 loop image)."""

    def __init__(self, source=None):
        self.port = free_port()
        self.adaptive = "{probe: 2, round: 1000, reprobe_interval: 3600}"
        self.source_mounts = []
        super().__init__(policy="open", start=False)
        self.listen = f"127.0.0.1:{self.port}"
        self.write_config()
        try:
            if source == "tmpfs" or (source == "direct" and fs_type(self.srcs[0]) == "tmpfs"):
                self.mount_source(source)
            self.start()
        except BaseException:
            self.cleanup()
            raise

    def mount_source(self, kind):
        src = self.srcs[0]
        if kind == "tmpfs":
            h.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "efuse-src", src], timeout=30)
        else:
            img = J(self.tmp, "src.img")
            h.run(["truncate", "-s", "256M", img])
            h.run(["mkfs.ext4", "-q", "-F", img], timeout=120)
            h.run(["mount", "-o", "loop", img, src], timeout=30)
        self.source_mounts.append(src)

    def cleanup(self, keep_tmp=False):
        if self.source_mounts:
            if self.proc is not None and self.proc.poll() is None:
                self.stop()
            for m in self.mnts:
                if h.is_fuse_mounted(m):
                    h.detach(m)
            for src in self.source_mounts:
                h.run(["umount", "-l", src], timeout=30, check=False)
            self.source_mounts = []
        super().cleanup(keep_tmp)

    def write_config(self, with_b=False, broken=False):
        lines = ["metrics:", f'  listen: "{getattr(self, "listen", "127.0.0.1:0")}"',
                 "mounts:", "  - name: a", f"    mountpoint: {self.mnts[0]}",
                 "    backend: passthrough", f"    source: {self.srcs[0]}",
                 "    io_path: auto",
                 f"    adaptive: {getattr(self, 'adaptive', '{}')}"]
        lines += getattr(self, "more_keys", [])
        with open(self.cfg + ".new", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(self.cfg + ".new", self.cfg)

    def samples(self):
        return parse(scrape(self.port))

    def epochs(self):
        return value(self.samples(), "efuse_io_path_epochs_measured_total", mount="a") or 0

    def read_measured(self, name, want=None):
        """Opens, reads and closes mnt/NAME, then waits until efused has measured the epoch
        (the kernel sends RELEASE after close() returns), so that each open is decided
        with the previous ones' measurements."""
        n = self.epochs()
        with open(J(self.mnt, name), "rb") as f:
            while True:
                chunk = f.read(MIB)
                if not chunk:
                    break
                if want is not None:
                    assert chunk == want, name
        h.wait_until(lambda: self.epochs() > n, 10, what=f"the epoch of {name} measured")


def fs_type(path):
    return h.run(["stat", "-f", "-c", "%T", path]).out.strip()


class env_set:
    """Sets environment variables for what starts inside (efused inherits them)."""

    def __init__(self, **kw):
        self.kw, self.old = kw, {}

    def __enter__(self):
        for k, v in self.kw.items():
            self.old[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def require_passthrough(m):
    granted = value(m.samples(), "efuse_kernel_feature", mount="a", feature="passthrough")
    if granted != 1:
        h.skip("the kernel did not grant FUSE passthrough (not root, or a kernel without it)")


def choice(samples, klass):
    return {l["path"]: v for n, l, v in samples
            if n == "efuse_io_path_choice" and l.get("mount") == "a" and l.get("class") == klass}


def test_hot_small_file_ends_on_cache_and_large_streams_on_passthrough():
    require_daemon_contract()
    with AdaptiveEfused() as m:
        require_passthrough(m)
        hot = J(m.src, "hot")
        h.write_file(hot, b"h" * 4096)
        # Read it again and again (open, read, close): the first opens probe both paths; a
        # warm reopen on the cache costs nothing, so the file settles on the cache.
        for _ in range(40):
            m.read_measured("hot", b"h" * 4096)
        # Now it is served from the page cache: opens still reach efused, but no READ and no
        # passthrough open does.
        s = m.samples()
        before = [value(s, "efuse_requests_total", mount="a", opcode=op) or 0
                  for op in ("open", "read")]
        pt_before = value(s, "efuse_passthrough_opens_total", mount="a") or 0
        for _ in range(10):
            with open(J(m.mnt, "hot"), "rb") as f:
                assert f.read() == b"h" * 4096
        s = m.samples()
        after = [value(s, "efuse_requests_total", mount="a", opcode=op) or 0
                 for op in ("open", "read")]
        assert after[0] - before[0] == 10 and after[1] == before[1], (before, after)
        assert (value(s, "efuse_passthrough_opens_total", mount="a") or 0) == pt_before
        assert choice(s, "small_warm_read") == {"cache": 1, "passthrough": 0}, \
            choice(s, "small_warm_read")
        assert (value(s, "efuse_io_path_decisions_total", mount="a", decision="cache") or 0) >= 5

        # Large files read once each: the probe's cache epochs cost a READ per request, a
        # passthrough epoch one backing registration, and the class commits to passthrough.
        for i in range(6):
            with open(J(m.src, f"big{i}"), "wb") as f:
                f.write(os.urandom(MIB) * 12)
        pt_before = value(m.samples(), "efuse_passthrough_opens_total", mount="a") or 0
        for i in range(6):
            m.read_measured(f"big{i}")
        s = m.samples()
        assert choice(s, "large_cold_read") == {"cache": 0, "passthrough": 1}, \
            choice(s, "large_cold_read")
        predicted = value(s, "efuse_io_path_decisions_total", mount="a",
                          decision="passthrough", reason="predicted")
        assert predicted and predicted >= 2, predicted
        assert value(s, "efuse_passthrough_opens_total", mount="a") - pt_before >= 4
        cost = {l["path"]: v for n, l, v in s if n == "efuse_io_path_predicted_cost_seconds"
                and l.get("mount") == "a" and l.get("class") == "large_cold_read"}
        assert cost["cache"] > cost["passthrough"], cost

        # efusectl status shows the same choices.
        text = m.ctl("status", "a").out
        assert "io_path_choices.classes.small_warm_read.choice: cache" in text, text
        assert "io_path_choices.classes.large_cold_read.choice: passthrough" in text, text
        view = json.loads(m.ctl("--json", "status", "a").out)
        assert view["io_path_choices"]["classes"]["large_cold_read"]["phase"] == "commit", view
        assert view["io_path_choices"]["decisions"]["passthrough_predicted"] >= 2, view


def test_adaptive_settings_apply_live_and_bad_values_are_refused():
    require_daemon_contract()
    with AdaptiveEfused() as m:
        h.write_file(J(m.src, "f"), b"f" * 1000)
        m.read_measured("f")
        before = json.loads(m.ctl("--json", "status", "a").out)
        # A change of adaptive: applied live, not by remounting: the session's counters go on.
        m.adaptive = "{probe: 3, round: 10, reprobe_interval: 0.5}"
        m.write_config()
        m.ctl("reload")
        m.read_measured("f")
        after = json.loads(m.ctl("--json", "status", "a").out)
        assert after["state"] == "mounted", after
        assert after["requests"] > before["requests"], (before["requests"], after["requests"])
        # One more open decision (cache or passthrough). A READ it may cost adds a kernel or
        # device decision too, whether the file's pages stayed or were invalidated meanwhile
        # (the watcher reports the file's creation on its own schedule): not counted here.
        def opens(view):
            return sum(v for k, v in view["io_path_choices"]["decisions"].items()
                       if k.startswith(("cache_", "passthrough_")))
        assert opens(after) == opens(before) + 1, (before, after)
        # Out of range: the reload is refused with FILE:LINE:COLUMN and changes nothing.
        m.adaptive = "{probe: 0}"
        m.write_config()
        r = m.ctl("reload", expect=1)
        assert f"{m.cfg}:9:" in r.err and \
            "mounts[0].adaptive.probe must be between 1 and 64, not 0" in r.err, r.err
        m.adaptive = "{probes: 4}"
        m.write_config()
        r = m.ctl("reload", expect=1)
        assert "unknown key 'probes' in mounts[0].adaptive; did you mean 'probe'?" in r.err, r.err
        r = h.run([h.EFUSED, "--check-config", m.cfg], check=False)
        assert r.rc == 1 and "did you mean 'probe'?" in r.err, r
        assert json.loads(m.ctl("--json", "status", "a").out)["state"] == "mounted"


def test_fsync_is_balanced_and_visible():
    """FSYNC goes through the queue balancing scheduler: every one is counted by how it was
    served, and `efusectl status a` shows its state. (Which way wins depends on the storage:
    tests/unit/accel/offload_test.cpp drives that with simulated times.)"""
    require_daemon_contract()
    with AdaptiveEfused() as m:
        with open(J(m.mnt, "synced"), "wb") as f:
            for i in range(12):
                f.write(b"x" * 4096)
                os.fsync(f.fileno())
        s = m.samples()
        served = value(s, "efuse_blocking_requests_total", mount="a", opcode="fsync")
        assert served == 12, served
        # The probe tried both: its first decision is the guess (offload), then inline; a
        # probe that finds one way 8 times dearer ends there, and the engine does not probe
        # again while the cheap way stays that cheap (docs/adaptive-io.md), so offload may
        # have no decision labelled `probe`.
        def tried(path):
            return sum(value(s, "efuse_blocking_requests_total", mount="a", opcode="fsync",
                             path=path, reason=r) or 0 for r in ("guess", "probe"))
        assert tried("offload") >= 1 and tried("inline") >= 1, (tried("offload"), tried("inline"))
        assert value(s, "efuse_blocking_predicted_seconds", mount="a", opcode="fsync",
                     path="inline") is not None
        with open(J(m.src, "synced"), "rb") as f:
            assert f.read() == b"x" * 4096 * 12
        q = json.loads(m.ctl("--json", "status", "a").out)["queue_balancing"]["fsync"]
        assert q["inline"] + q["offload"] == 12 and q["phase"] in ("probe", "commit"), q
        assert "queue_balancing.fsync.choice:" in m.ctl("status", "a").out


def test_queue_balancing_off_serves_fsync_inline():
    """EFUSE_QUEUE_BALANCING=0 (the bench's efused-nobalance side): FSYNC is served on the
    queue that read it, without consulting the scheduler."""
    port = free_port()
    old = os.environ.get("EFUSE_QUEUE_BALANCING")
    os.environ["EFUSE_QUEUE_BALANCING"] = "0"
    try:
        m = h.EfusedMount(args=["--metrics", f"127.0.0.1:{port}"], tag="efuse-adaptive")
    finally:
        if old is None:
            del os.environ["EFUSE_QUEUE_BALANCING"]
        else:
            os.environ["EFUSE_QUEUE_BALANCING"] = old
    with m:
        name = os.path.basename(m.mnt)
        with open(J(m.mnt, "synced"), "wb") as f:
            for _ in range(6):
                f.write(b"y" * 4096)
                os.fsync(f.fileno())
        s = parse(scrape(port))
        assert value(s, "efuse_requests_total", mount=name, opcode="fsync") == 6
        assert value(s, "efuse_blocking_requests_total", mount=name) is None


def test_fixed_io_path_counts_fixed_decisions():
    port = free_port()
    with h.EfusedMount(args=["--io-path", "cache", "--metrics", f"127.0.0.1:{port}"],
                       tag="efuse-adaptive") as m:
        name = os.path.basename(m.mnt)
        h.write_file(J(m.src, "f"), b"x" * 100000)
        for _ in range(3):
            with open(J(m.mnt, "f"), "rb") as f:
                assert len(f.read()) == 100000
        s = parse(scrape(port))
        # An open that comes before the previous one's RELEASE joins its path (no decision).
        assert value(s, "efuse_io_path_decisions_total", mount=name, decision="cache",
                     reason="fixed") >= 1
        assert value(s, "efuse_io_path_decisions_total", mount=name,
                     decision="passthrough") is None
        assert not [n for n, l, v in s if n == "efuse_io_path_choice" and l.get("mount") == name]


def drop_backing_pages(path):
    """Evicts PATH's pages from the backing page cache (this file only: no host-wide drop)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sha256(path, direct=False):
    import hashlib
    d = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(MIB)
            if not chunk:
                break
            d.update(chunk)
    return d.hexdigest()


def device_decisions(samples):
    return {(l["decision"], l["reason"]): v for n, l, v in samples
            if n == "efuse_io_path_decisions_total" and l.get("mount") == "a"
            and l["decision"] in ("kernel", "device")}


def test_device_path_reads_verify_on_a_direct_io_file_system():
    """Reads efused serves itself (here every open: passthrough is masked) go through the
    device or kernel path as the large_device and small_device engines decide; either way
    the data is the file's, at every offset, aligned or not (fio --verify through the
    mount, checksums of whole files, odd-sized preads)."""
    require_daemon_contract()
    h.require_tools("fio")
    with env_set(EFUSE_MASK_KERNEL_FEATURES="passthrough"), AdaptiveEfused(source="direct") as m:
        assert fs_type(m.src) != "tmpfs"
        # Large files read once each, cold (their backing pages dropped): the probe tries
        # both paths, then the class commits to the cheaper per MiB.
        sums = {}
        for i in range(6):
            name = f"big{i}"
            with open(J(m.src, name), "wb") as f:
                f.write(os.urandom(MIB) * 9 + os.urandom(12345))  # an unaligned end
            sums[name] = sha256(J(m.src, name))
            drop_backing_pages(J(m.src, name))
        for name in sums:
            assert sha256(J(m.mnt, name)) == sums[name], name
        # Unaligned reads of one more large file, compared with the backing file.
        with open(J(m.src, "odd"), "wb") as f:
            f.write(os.urandom(MIB * 9 + 777))
        drop_backing_pages(J(m.src, "odd"))
        with open(J(m.src, "odd"), "rb") as want, open(J(m.mnt, "odd"), "rb") as got:
            for off, n in ((1, 4095), (4097, 65536 + 3), (MIB * 9 - 10, 4096), (5 * MIB + 1, 1)):
                assert os.pread(got.fileno(), n, off) == os.pread(want.fileno(), n, off), off
        # Each epoch is measured at its RELEASE, which the kernel sends after close(). A
        # completed probe predicts both paths (the class may have started another since:
        # cold reads vary, and a 2x drift probes again).
        def large_costs():
            return {l["path"]: v for n, l, v in m.samples()
                    if n == "efuse_io_path_predicted_cost_seconds" and l.get("mount") == "a"
                    and l.get("class") == "large_device"}
        h.wait_until(lambda: len(large_costs()) == 2, 10, what="the large_device probe done")
        # fio writes through the mount and verifies what it reads back with O_DIRECT (each
        # read a READ that efused serves, on whichever path the class chose).
        h.run(["fio", "--name=v", f"--filename={J(m.mnt, 'fio')}", "--size=12M", "--bs=64k",
               "--rw=write", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
               "--ioengine=psync"], timeout=300)
        h.run(["fio", "--name=r", f"--filename={J(m.mnt, 'fio')}", "--size=12M", "--bs=64k",
               "--rw=read", "--verify=crc32c", "--verify_only=1", "--verify_fatal=1",
               "--direct=1", "--ioengine=psync"], timeout=300)
        s = m.samples()
        d = device_decisions(s)
        # The probe tried both paths on the large files; nothing was unsupported here.
        assert d.get(("device", "probe"), 0) >= 1 and d.get(("kernel", "guess"), 0) >= 1, d
        assert ("kernel", "unsupported") not in d, d
        cost = large_costs()
        assert cost.get("kernel", 0) > 0 and cost.get("device", 0) > 0, cost
        view = json.loads(m.ctl("--json", "status", "a").out)["io_path_choices"]
        large = view["classes"]["large_device"]
        # fio's reads may have started another probe (drift): committed once is what counts.
        assert large["probes"] >= 1 and large["choice"] in ("kernel", "device", ""), large
        assert large["device_cost_us"] > 0 and large["kernel_cost_us"] > 0, large
        assert view["decisions"]["device_probe"] >= 1, view
        assert "io_path_choices.classes.large_device.choice:" in m.ctl("status", "a").out
        # The device probe read its files ahead (a stream per file, as deep as the backing
        # device's read-ahead, logged once), and every stream's buffers went with its file.
        assert value(s, "efuse_device_readahead_chunk_reads_total", mount="a") > 0
        waits = value(s, "efuse_device_readahead_chunk_waits_total", mount="a")
        assert waits is not None and waits >= 0
        h.wait_until(lambda: value(m.samples(), "efuse_device_readahead_streams", mount="a") == 0
                     and value(m.samples(), "efuse_device_readahead_buffer_bytes", mount="a") == 0,
                     10, what="the streams gone with their files' last release")
        log = m.log_text()
        assert log.count("sequential reads of files on") == 1, m.log_tail()
        assert "KiB ahead" in log, m.log_tail()


def test_device_path_is_not_used_on_tmpfs_and_says_so():
    """tmpfs does no direct I/O (it accepts O_DIRECT since Linux 6.6 but reports no direct
    I/O alignment: there is no device to go to): the kernel path serves, every decision
    says `unsupported`, the log says it once, and the data is right."""
    require_daemon_contract()
    with env_set(EFUSE_MASK_KERNEL_FEATURES="passthrough"), AdaptiveEfused(source="tmpfs") as m:
        assert fs_type(m.src) == "tmpfs"
        data = {}
        for i in range(4):
            data[f"f{i}"] = os.urandom(MIB * 2 + 100 * i)
            h.write_file(J(m.src, f"f{i}"), data[f"f{i}"])
        for name, want in data.items():
            with open(J(m.mnt, name), "rb") as f:
                assert f.read() == want, name
        d = device_decisions(m.samples())
        assert d == {("kernel", "unsupported"): 4}, d
        log = m.log_text()
        assert log.count("does no direct I/O") == 1, m.log_tail()
        view = json.loads(m.ctl("--json", "status", "a").out)["io_path_choices"]
        assert view["decisions"]["kernel_unsupported"] == 4, view
        assert "large_device" not in view["classes"] and "small_device" not in view["classes"]


def test_worker_count_grows_when_every_worker_is_busy():
    """Queue balancing off (every fsync inline) and one /dev/fuse worker to start with: when
    that worker serves an fsync that blocks (its storage, a stopped FUSE mount below, does not
    answer), a second worker starts and serves the stat() calls queued behind it. Classic
    transport only: over io_uring the queues serve the requests."""
    from test_queue_balancing import Stacked, fsync_blocked_while_stats_run
    port = free_port()
    args = ["--transport", "classic", "--threads", "1", "--max-threads", "2", "--io-path",
            "cache", "--attr-timeout", "0", "--metrics", f"127.0.0.1:{port}"]
    with Stacked(args, env={"EFUSE_QUEUE_BALANCING": "0"}) as st:
        s = fsync_blocked_while_stats_run(st, port)
        name = os.path.basename(st.upper.mnt)
        assert value(s, "efuse_classic_workers", mount=name) == 2, s
        assert value(s, "efuse_classic_worker_changes_total", mount=name, change="grown") >= 1
        assert value(s, "efuse_classic_workers_limit", mount=name, bound="min") == 1
        assert value(s, "efuse_classic_workers_limit", mount=name, bound="max") == 2
        assert value(s, "efuse_offloaded_requests_total", mount=name) == 0
        assert value(s, "efuse_blocking_requests_total", mount=name) is None


class FdStoreListener:
    """A datagram socket standing in for systemd's notify socket that also takes the
    descriptors sent with FDSTORE=1 (SCM_RIGHTS): it counts them per FDNAME and closes them
    at once (a /dev/fuse descriptor held here would keep the connection)."""

    def __init__(self, path):
        import socket
        import threading
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.fds = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.pump, daemon=True)
        self.thread.start()

    def pump(self):
        import array
        import socket
        while not self.stop.is_set():
            try:
                msg, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
            except socket.timeout:
                continue
            except OSError:
                return
            got = array.array("i")
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got.frombytes(data[:len(data) - len(data) % got.itemsize])
            for fd in got:
                os.close(fd)
            text = msg.decode(errors="replace")
            if "FDSTORE=1" in text:
                name = [l[7:] for l in text.split("\n") if l.startswith("FDNAME=")]
                key = name[0] if name else ""
                self.fds[key] = self.fds.get(key, 0) + len(got)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_a_grown_workers_descriptor_goes_to_the_fd_store():
    """Restart keeps a mount's FUSE connection in systemd's descriptor store, every /dev/fuse
    descriptor of it included. A worker the channel grows after start brings a clone of its
    own: it is stored when it is made (FDSTORE=1, FDNAME=efuse.NAME.clone). One worker to
    start with and a maximum of 2: the first request finds every worker busy."""
    import tempfile
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="efuse-fdstore-", dir="/tmp"))
    listener = FdStoreListener(J(tmp, "notify"))
    port = free_port()
    try:
        with h.EfusedMount(args=["--transport", "classic", "--threads", "1", "--max-threads",
                                 "2", "--metrics", f"127.0.0.1:{port}"],
                           env={"NOTIFY_SOCKET": J(tmp, "notify")}, tag="efuse-adaptive") as m:
            name = os.path.basename(m.mnt)
            if "cannot record its state" in m.log_text() or "will remount it" in m.log_text():
                raise AssertionError("the mount is not kept for a restart here:\n" + m.log_tail())
            h.wait_until(lambda: listener.fds.get(f"efuse.{name}.conn", 0) == 1, 10,
                         what="the connection stored")
            assert listener.fds.get(f"efuse.{name}.clone", 0) == 0, listener.fds
            for i in range(20):
                h.write_file(J(m.mnt, f"f{i}"), b"x")
            s = parse(scrape(port))
            assert value(s, "efuse_classic_worker_changes_total", mount=name, change="grown") >= 1
            assert value(s, "efuse_classic_workers_limit", mount=name, bound="max") == 2
            h.wait_until(lambda: listener.fds.get(f"efuse.{name}.clone", 0) == 1, 10,
                         what="the grown worker's clone stored")
            grown = value(s, "efuse_classic_worker_changes_total", mount=name, change="grown")
            # Only a new clone is stored: a worker started again reuses a parked one's.
            assert listener.fds[f"efuse.{name}.clone"] == 1, (listener.fds, grown)
    finally:
        listener.close()
        h.shutil.rmtree(tmp, ignore_errors=True)


def test_worker_and_pool_limits_apply_live_and_bad_values_are_refused():
    """max_threads, offload_threads and offload_queue change on reload without a remount and
    show in `efusectl status`; values out of range, or a max_threads below threads, are
    refused with FILE:LINE:COLUMN and leave the running mount as it was."""
    require_daemon_contract()
    with AdaptiveEfused() as m:
        view = json.loads(m.ctl("--json", "status", "a").out)
        assert view["workers"]["min"] == 4 and view["workers"]["max"] == 16, view["workers"]
        assert view["offload_pool"]["max_threads"] == 4, view["offload_pool"]
        assert view["offload_pool"]["max_queued"] == 256, view["offload_pool"]
        # io_uring queues with their threads' scheduling class (none over /dev/fuse).
        if view["transport"] == "uring":
            assert view["queues"] and all(q["class"] in ("idle", "batch") and q["starved"] >= 0
                                          for q in view["queues"]), view["queues"]
            assert [q["queue"] for q in view["queues"]] == list(range(len(view["queues"])))
        else:
            assert view["queues"] == [], view["queues"]
        m.more_keys = ["    max_threads: 6", "    offload_threads: 2", "    offload_queue: 32"]
        m.write_config()
        m.ctl("reload")
        after = json.loads(m.ctl("--json", "status", "a").out)
        assert after["state"] == "mounted" and after["requests"] >= view["requests"], after
        assert after["workers"]["max"] == 6 and after["workers"]["running"] >= 4, after["workers"]
        assert after["offload_pool"]["max_threads"] == 2, after["offload_pool"]
        assert after["offload_pool"]["max_queued"] == 32, after["offload_pool"]
        text = m.ctl("status", "a").out
        assert "workers.max: 6" in text and "offload_pool.max_threads: 2" in text, text
        for extra, message in (
                (["    threads: 4", "    max_threads: 2"],
                 "mount 'a': max_threads (2) is below threads (4), the workers that start "
                 "with the mount; raise max_threads or lower threads"),
                (["    offload_threads: 0"],
                 "mounts[0].offload_threads must be between 1 and 64, not 0"),
                (["    offload_queue: 100000"],
                 "mounts[0].offload_queue must be between 1 and 65536, not 100000"),
                (["    max_threads: 257"],
                 "mounts[0].max_threads must be between 1 and 256, not 257")):
            m.more_keys = extra
            m.write_config()
            r = m.ctl("reload", expect=1)
            assert f"{m.cfg}:" in r.err and message in r.err, (extra, r.err)
            r = h.run([h.EFUSED, "--check-config", m.cfg], check=False)
            assert r.rc == 1 and message in r.err, r
            now = json.loads(m.ctl("--json", "status", "a").out)
            assert now["state"] == "mounted", now
            assert now["workers"]["max"] == 6 and now["offload_pool"]["max_threads"] == 2, now
        with open(J(m.mnt, "still"), "wb") as f:
            f.write(b"ok")
            os.fsync(f.fileno())
        r = h.run([h.EFUSED, "--mount", f"{m.src}:{m.mnt}", "--threads", "4",
                   "--max-threads", "3"], check=False, timeout=30)
        assert r.rc == 2 and "--max-threads (3) must not be below --threads (4)" in r.err, r
        r = h.run([h.EFUSED, "--mount", f"{m.src}:{m.mnt}", "--offload-threads", "65"],
                  check=False, timeout=30)
        assert r.rc == 2 and "--offload-threads must be 1..64, not '65'" in r.err, r


if __name__ == "__main__":
    h.main(globals())
