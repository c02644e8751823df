#!/usr/bin/env python3
"""efused's smoke tests on a stock Debian kernel, run INSIDE the test guest (tests/vm/init
runs it in the chroot of the host's /; Python standard library only).

efused (the host's build, read over 9p) mounts /mnt/data/src (ext4, the data disk) at
/mnt/efuse; the same file operations and a tar extraction run through the mount and on
the native twin /mnt/data/native and must give the same results. Then /metrics: the mount
is up, the negotiated features and fallbacks are what the kernel allows (6.12: passthrough,
no io_uring; 6.1: neither), and the eBPF telemetry either counts what efused served (6.12)
or is off with a reason while the mount works (6.1, no FUSE tracepoints).

Each check prints `PASS name` or `FAIL name: why` and appends the same line to
/mnt/data/out/results.txt, which the host reads after the guest powers off. Exit status 1
when anything failed.
"""
import errno
import hashlib
import os
import signal
import stat
import struct
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, HERE)
from prom_text import parse, scrape, value  # noqa: E402

PROFILE = os.environ.get("efuse_profile", "")
EFUSED = os.environ.get("efuse_efused", os.path.join(REPO, "build", "bin", "efused"))
DATA = "/mnt/data"
SRC, NATIVE = f"{DATA}/src", f"{DATA}/native"
MNT = "/mnt/efuse"
NAME = "efuse"  # efused names a --mount after its mountpoint's last component
PORT = 19567
LOG = "/tmp/efused.log"
RESULTS = f"{DATA}/out/results.txt"
CHECK_TIMEOUT = 300  # seconds; turns a hung check into a failure (TCG is slow, not that slow)

# What each guest kernel offers (ARCHITECTURE.md, "Facts about the machines").
EXPECT = {
    "6.12": {"minor": 41, "passthrough": True, "fuse_module": False, "bpf": True},
    "6.1": {"minor": 38, "passthrough": False, "fuse_module": True, "bpf": False},
}

efused = None
failures = 0


def report(verdict, name, why=""):
    global failures
    line = f"{verdict} {name}" + (": " + " | ".join(why.strip().splitlines()) if why else "")
    print(line, flush=True)
    with open(RESULTS, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    failures += verdict == "FAIL"


class Hung(Exception):
    pass


def _alarm(signum, frame):
    raise Hung("check did not finish within its time limit")


def check(fn):
    name = fn.__name__.removeprefix("check_")
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(getattr(fn, "timeout", CHECK_TIMEOUT))
    try:
        fn()
        report("PASS", name)
    except Exception as e:
        tb = traceback.format_exc().strip().splitlines()
        report("FAIL", name, f"{type(e).__name__}: {e} (at {tb[-3].strip() if len(tb) > 2 else ''})")
    finally:
        signal.alarm(0)


def log_text():
    try:
        with open(LOG, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def fstypes_at(path):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == path:
                out.append(parts[parts.index("-") + 1])
    return out


def metrics():
    return parse(scrape(PORT))


# ------------------------------------------------------------------------------------------
# Comparisons
# ------------------------------------------------------------------------------------------

def tree(root):
    """{relative path: (type, mode, size, sha256 | link target, nlink)} of a tree."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            else:
                what = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                        st.st_size if not stat.S_ISDIR(st.st_mode) else None, what, st.st_nlink)
    return out


def diff(a, b, what):
    if a == b:
        return
    only_a = sorted(set(a) - set(b))[:5]
    only_b = sorted(set(b) - set(a))[:5]
    differ = [(k, a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k]][:5]
    raise AssertionError(f"{what} differ: only first {only_a}, only second {only_b}, "
                         f"different {differ}")


def errno_of(fn, *args):
    try:
        fn(*args)
        return 0
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)


def file_ops(root):
    """The same operations anywhere; returns what was observed (compared across sides)."""
    seen = []
    d = os.path.join(root, "ops")
    os.mkdir(d)
    a = os.path.join(d, "a.txt")
    data = bytes(range(256)) * 400  # 100 KiB
    with open(a, "wb") as f:
        f.write(data)
    with open(a, "rb") as f:
        seen.append(("read", hashlib.sha256(f.read()).hexdigest()))
    with open(a, "ab") as f:
        f.write(b"tail\n")
    os.truncate(a, 50000)
    os.chmod(a, 0o640)
    st = os.stat(a)
    seen.append(("stat", st.st_size, stat.S_IMODE(st.st_mode), st.st_nlink))
    with open(a, "r+b") as f:
        f.seek(1000)
        f.write(b"X" * 10)
        f.seek(995)
        seen.append(("pread", f.read(20)))
    os.mkdir(os.path.join(d, "sub"))
    os.rename(a, os.path.join(d, "sub", "b.txt"))
    with open(os.path.join(d, "c.txt"), "w") as f:
        f.write("c\n")
    with open(os.path.join(d, "d.txt"), "w") as f:
        f.write("d\n")
    os.rename(os.path.join(d, "c.txt"), os.path.join(d, "d.txt"))  # over an existing name
    os.symlink("sub/b.txt", os.path.join(d, "sym"))
    os.link(os.path.join(d, "d.txt"), os.path.join(d, "hard"))
    seen.append(("readlink", os.readlink(os.path.join(d, "sym"))))
    seen.append(("nlink", os.stat(os.path.join(d, "hard")).st_nlink))
    with open(os.path.join(d, "sym"), "rb") as f:
        seen.append(("via symlink", hashlib.sha256(f.read()).hexdigest()))
    seen.append(("readdir", sorted(os.listdir(d)), sorted(os.listdir(os.path.join(d, "sub")))))
    os.unlink(os.path.join(d, "hard"))
    seen.append(("unlinked", sorted(os.listdir(d)), os.stat(os.path.join(d, "d.txt")).st_nlink))
    seen.append(("errors", errno_of(os.rmdir, os.path.join(d, "sub")),
                 errno_of(os.stat, os.path.join(d, "missing")),
                 errno_of(os.mkdir, os.path.join(d, "sub")),
                 errno_of(os.unlink, os.path.join(d, "sub"))))
    with open(os.path.join(root, "seed.txt")) as f:
        seen.append(("seed", f.read()))
    return seen


# ------------------------------------------------------------------------------------------
# Checks, in order
# ------------------------------------------------------------------------------------------

def check_efused_starts():
    global efused
    os.makedirs(MNT, exist_ok=True)
    logf = open(LOG, "wb")
    # Every request timed (1 in 1): check_bpf_telemetry pairs each send with its end.
    efused = subprocess.Popen([EFUSED, "--mount", f"{SRC}:{MNT}", "--metrics",
                               f"127.0.0.1:{PORT}", "--telemetry-sample-every", "1"],
                              stdout=logf, stderr=logf,
                              stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while "efused: ready" not in log_text():
        if efused.poll() is not None:
            raise AssertionError(f"efused exited {efused.returncode}: {log_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no ready line within 120 s: {log_text()[-2000:]}")
        time.sleep(0.2)
    assert "fuse.efuse" in fstypes_at(MNT), f"no fuse.efuse mount at {MNT}: {fstypes_at(MNT)}"


def check_fuse_module():
    builtin = os.path.exists("/sys/module/fuse") and not os.path.exists("/sys/module/fuse/initstate")
    with open("/proc/modules") as f:
        loaded = any(line.split()[0] == "fuse" for line in f)
    if EXPECT[PROFILE]["fuse_module"]:
        assert loaded, "fuse.ko is not loaded (efused opened /dev/fuse, which should load it)"
    else:
        assert builtin and not loaded, f"expected FUSE built in: builtin={builtin} module={loaded}"


def check_file_ops():
    diff(dict(enumerate(file_ops(MNT))), dict(enumerate(file_ops(NATIVE))),
         "operations through the mount and natively")
    diff(tree(os.path.join(MNT, "ops")), tree(os.path.join(SRC, "ops")),
         "the mount's tree and its backing directory")


def requests_by_opcode(s, mount):
    out = {}
    for n, l, v in s:
        if n == "efuse_requests_total" and l.get("mount") == mount and "opcode" in l:
            out[l["opcode"]] = out.get(l["opcode"], 0) + v
    return out


def check_tar_extract():
    for root in (MNT, NATIVE):
        os.mkdir(os.path.join(root, "tar"))
        before = requests_by_opcode(metrics(), NAME) if root == MNT else None
        subprocess.run(["tar", "-xf", f"{DATA}/sample.tar", "-C", os.path.join(root, "tar")],
                       check=True, timeout=CHECK_TIMEOUT)
        if before is not None:
            # Requests per archive entry on the stock tier (RELEASE is asynchronous: a few
            # may still be on their way).
            entries = len(subprocess.run(["tar", "-tf", f"{DATA}/sample.tar"],
                                         capture_output=True, text=True, check=True,
                                         timeout=CHECK_TIMEOUT).stdout.splitlines())
            up = {k: v - before.get(k, 0) for k, v in requests_by_opcode(metrics(), NAME).items()}
            up = {k: v for k, v in up.items() if v}
            per_op = ", ".join(f"{k} {v / entries:.2f}" for k, v in sorted(up.items()))
            print(f"  tar: {entries} entries, {sum(up.values()) / entries:.2f} requests per "
                  f"entry to efused ({per_op})", flush=True)
    through = tree(os.path.join(MNT, "tar"))
    assert len(through) > 100, f"only {len(through)} entries extracted"
    diff(through, tree(os.path.join(NATIVE, "tar")), "tar extracted through the mount and natively")
    diff(through, tree(os.path.join(SRC, "tar")), "the mount's tree and its backing directory")


def check_mount_up():
    s = metrics()
    assert value(s, "efuse_mount_up", mount=NAME) == 1, \
        f"efuse_mount_up{{mount={NAME}}} = {value(s, 'efuse_mount_up', mount=NAME)}"


def check_kernel_features():
    s = metrics()
    e = EXPECT[PROFILE]
    got = {
        "protocol minor": value(s, "efuse_kernel_protocol_minor", mount=NAME),
        "passthrough offered": value(s, "efuse_kernel_feature_offered", mount=NAME, feature="passthrough"),
        "passthrough": value(s, "efuse_kernel_feature", mount=NAME, feature="passthrough"),
        "io_uring offered": value(s, "efuse_kernel_feature_offered", mount=NAME, feature="io_uring"),
        "io_uring": value(s, "efuse_kernel_feature", mount=NAME, feature="io_uring"),
        "classic transport": value(s, "efuse_mount_info", mount=NAME, transport="classic"),
    }
    want = {"protocol minor": e["minor"], "passthrough offered": int(e["passthrough"]),
            "passthrough": int(e["passthrough"]), "io_uring offered": 0, "io_uring": 0,
            "classic transport": 1}
    assert got == want, f"got {got}, want {want}"
    assert "io_uring unavailable" in log_text(), "no log line saying why io_uring is not used"
    # efuse.ko is not loaded yet: kernel_module auto falls back to the stock tier, saying why.
    tier = value(s, "efuse_mount_info", mount=NAME, tier="stock", kernel_module="auto")
    assert tier == 1 and "kernel_module auto: the efuse kernel module is not loaded" in \
        log_text(), f"tier: efuse_mount_info{{tier=stock}} = {tier}"


def check_data_path():
    # big.bin (1 MiB) was read by tree(): with passthrough the kernel reads the backing file
    # itself, without it efused serves READs; the writes of file_ops likewise.
    s = metrics()
    opens = value(s, "efuse_passthrough_opens_total", mount=NAME) or 0
    reads = value(s, "efuse_requests_total", mount=NAME, opcode="read") or 0
    writes = value(s, "efuse_requests_total", mount=NAME, opcode="write") or 0
    if EXPECT[PROFILE]["passthrough"]:
        assert opens > 0, f"no passthrough opens (reads {reads}, writes {writes})"
    else:
        assert opens == 0 and reads > 0 and writes > 0, \
            f"passthrough opens {opens}, READs {reads}, WRITEs {writes}: efused must serve the I/O"


def check_bpf_telemetry():
    s = metrics()
    up = value(s, "efuse_bpf_up")
    bpf_lines = [l for l in log_text().splitlines() if "bpf:" in l]
    if not EXPECT[PROFILE]["bpf"]:
        # No FUSE tracepoints before 6.12: off, with the reason logged once, mount served.
        assert up == 0, f"efuse_bpf_up = {up} on a kernel without FUSE tracepoints"
        off = [l for l in bpf_lines if "telemetry off:" in l]
        assert len(off) == 1 and "fuse_request_send" in off[0], f"bpf log lines: {bpf_lines}"
        # A clean skip, not a refusal: nothing counts as a load failure.
        failures = value(s, "efuse_bpf_load_failures_total")
        assert failures == 0, f"efuse_bpf_load_failures_total = {failures} for a clean skip"
        assert value(s, "efuse_bpf_off_reason", reason="unsupported") == 1, \
            [(n, l, v) for n, l, v in s if n.startswith("efuse_bpf")]
        assert os.listdir(MNT), "mount not served"
        return
    assert up == 1, f"efuse_bpf_up = {up}: {bpf_lines}"
    # Requests made now, with the programs attached: the kernel's count must match efused's.
    d = os.path.join(MNT, "bpf")
    os.mkdir(d)
    for i in range(20):
        p = os.path.join(d, f"f{i}")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, b"x")
        os.fsync(fd)
        os.close(fd)
        os.unlink(p)
    s = metrics()
    wrong = []
    for op in ("create", "unlink", "fsync"):
        k = value(s, "efuse_kernel_requests_total", mount=NAME, opcode=op) or 0
        served = value(s, "efuse_requests_total", mount=NAME, opcode=op) or 0
        if served < 20 or k != served:
            wrong.append(f"{op}: kernel-side telemetry counted {k:g}, efused served {served:g}")
        # Every request timed: each end found its send (keyed by the struct fuse_req).
        timed = value(s, "efuse_kernel_request_duration_seconds_count", mount=NAME,
                      opcode=op) or 0
        if timed != k:
            wrong.append(f"{op}: {timed:g} of {k:g} requests timed with every request timed")
    # In flight: the kernel's own count, from fusectl (systemd's mount, or efused's own).
    inflight = value(s, "efuse_kernel_requests_in_flight", mount=NAME)
    if inflight != 0:
        wrong.append(f"efuse_kernel_requests_in_flight = {inflight} with nothing running")
    dropped = {l.get("reason"): v for n, l, v in s if n == "efuse_bpf_events_dropped_total" and v}
    hint = ""
    if dropped.get("duplicate_send"):
        # Debian's 6.12 fires fuse_request_send before the request's unique is assigned
        # (ARCHITECTURE.md): requests are keyed by their struct fuse_req address for that.
        hint = (" - sends and ends did not pair: does the telemetry still key requests by "
                "their struct fuse_req address (docs/bpf.md, Request key)?")
    assert not wrong, "; ".join(wrong) + f" (events dropped: {dropped}){hint}"


def check_clean_stop():
    efused.send_signal(signal.SIGTERM)
    try:
        rc = efused.wait(timeout=60)
    except subprocess.TimeoutExpired:
        efused.kill()
        raise AssertionError("efused did not exit within 60 s of SIGTERM")
    assert rc == 0, f"efused exited {rc}: {log_text()[-1500:]}"
    assert not fstypes_at(MNT), f"left mounted: {fstypes_at(MNT)}"


def check_kmod_efuse():
    """kmod/'s efuse.ko (built on the host for this kernel, on the data disk) loads beside
    the built-in fuse and serves a mount of type efuse through /dev/efuse."""
    ko = f"{DATA}/efuse.ko"
    assert os.path.exists(ko), f"{ko} missing: the host did not build the module"
    subprocess.run(["insmod", ko], check=True, timeout=120, capture_output=True)
    with open("/proc/modules") as f:
        assert any(line.split()[0] == "efuse" for line in f), "efuse not in /proc/modules"
    st, fuse = os.stat("/dev/efuse"), os.stat("/dev/fuse")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 10 and \
        os.minor(st.st_rdev) != 229, f"/dev/efuse is {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    assert (os.major(fuse.st_rdev), os.minor(fuse.st_rdev)) == (10, 229), "/dev/fuse changed"
    with open("/proc/filesystems") as f:
        fstypes = {line.split()[-1] for line in f}
    missing = {"fuse", "fuseblk", "fusectl", "efuse", "efuseblk", "efusectl"} - fstypes
    assert not missing, f"file system types missing: {missing}"
    assert os.path.isdir("/sys/fs/efuse/connections"), "no /sys/fs/efuse/connections"
    for ev in ("efuse_request_send", "efuse_request_end", "efuse_handler_entry"):
        assert os.path.isdir(f"/sys/kernel/tracing/events/efuse/{ev}"), f"no tracepoint {ev}"
    # efused opens /dev/fuse only; a raw-protocol server proves that a mount of type efuse
    # works and that FUSE passthrough works through /dev/efuse.
    import raw_fuse
    mnt = "/mnt/efuse-raw"
    os.makedirs(mnt, exist_ok=True)
    backing = f"{DATA}/efuse-backing.bin"
    with open(backing, "wb") as f:
        f.write(os.urandom(256 << 10))
    with open(backing, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    server = raw_fuse.RawServer("/dev/efuse", mnt, "efuse", backing)
    try:
        client = subprocess.Popen(
            [sys.executable, "-c", "import hashlib,os,sys; s=os.stat(sys.argv[1]); "
             "print(s.st_ino, s.st_size, oct(s.st_mode), flush=True); "
             "print(hashlib.sha256(open(sys.argv[2], 'rb').read()).hexdigest())",
             mnt, os.path.join(mnt, "f")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = client.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.abort()  # releases the client from the kernel's wait for a reply
            client.kill()
            stdout, stderr = client.communicate(timeout=30)
            stderr += " (client timed out after 60 s: connection aborted)"
        assert "efuse" in fstypes_at(mnt), f"mount types at {mnt}: {fstypes_at(mnt)}"
    finally:
        server.stop()
    seen = f"(requests seen {server.seen})"
    out = stdout.split()
    assert out[:3] == ["1", str(raw_fuse.ROOT_SIZE), "0o40755"], \
        f"stat through the efuse mount: {stdout!r} {stderr!r} {seen}"
    assert server.seen[:1] == [raw_fuse.OP_INIT], seen
    assert server.passthrough, "the kernel did not offer passthrough at INIT on /dev/efuse"
    assert out[3:] == [want], f"content of f through the efuse mount: {stdout!r} {stderr!r}"
    assert server.backing_ids and raw_fuse.OP_READ not in server.seen, \
        f"passthrough: backing ids {server.backing_ids}, but READs reached the server {seen}"
    assert not fstypes_at(mnt), f"left mounted: {fstypes_at(mnt)}"
    subprocess.run(["rmmod", "efuse"], check=True, timeout=60, capture_output=True)


# /sys/fs/efuse/handler/<name> (kmod patch 0004; enum efuse_handler_stat in
# bpf/handlers/efuse_handler.h, same order).
HANDLER_STATS = ("answered", "declined", "no_memory", "disconnected", "bad_verdict",
                 "bad_nodeid", "bad_error", "bad_size", "bad_opcode", "bad_reply")
HANDLER_ANSWER = struct.Struct("<QiI256s")  # efuse_handler_answer: nodeid error size data
NEVER = struct.pack("<Q", 2**64 - 1)  # efuse_handler_entry.expires: the answer, then this
AT_FDCWD, AT_STATX_FORCE_SYNC, STATX_BASIC_STATS = -100, 0x2000, 0x7FF


def handler_stats():
    out = {}
    for name in HANDLER_STATS:
        with open(f"/sys/fs/efuse/handler/{name}") as f:
            out[name] = int(f.read())
    return out


def statx_sync(path):
    """(ino, size, mode) by statx(AT_STATX_FORCE_SYNC): exactly one GETATTR reaches FUSE
    for the last component, whatever the attribute cache holds (os.stat may be served from
    the cache within the same jiffy)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    if libc.statx(AT_FDCWD, path.encode(), AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, buf):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    mode, = struct.unpack_from("<H", buf, 28)
    ino, size = struct.unpack_from("<QQ", buf, 32)
    return ino, size, mode


def check_kmod_handler():
    """kmod patches 0002-0004: bpf/handlers/efuse_getattr.bpf.o, attached to efuse.ko's
    writable tracepoint efuse_handler, answers GETATTR from its map in the kernel; nodes not
    in the map and malformed answers go up to the server (counted by reason); with no
    handler attached everything goes up; a dead connection gets ENOTCONN, not map data."""
    import bpf_sys
    import raw_fuse
    build = os.path.dirname(os.path.dirname(EFUSED))
    obj = os.path.join(build, "bpf", "handlers", "efuse_getattr.bpf.o")
    lookup_obj = os.path.join(build, "bpf", "handlers", "efuse_lookup.bpf.o")
    bounds = os.path.join(build, "tests", "vm", "handler_bounds.bpf.o")
    for o in (obj, lookup_obj, bounds):
        assert os.path.exists(o), f"{o} missing: build efuse (scripts/build.sh) first"
    with open("/proc/modules") as f:
        if not any(line.split()[0] == "efuse" for line in f):
            subprocess.run(["insmod", f"{DATA}/efuse.ko"], check=True, timeout=120,
                           capture_output=True)
    mnt, backing = "/mnt/efuse-handler", f"{DATA}/efuse-handler-backing.bin"
    pin_prog, pin_maps = "/sys/fs/bpf/efuse_getattr", "/sys/fs/bpf/efuse_getattr_maps"
    pin_bounds = "/sys/fs/bpf/efuse_handler_bounds"
    pin_lookup, pin_lookup_maps = "/sys/fs/bpf/efuse_lookup", "/sys/fs/bpf/efuse_lookup_maps"
    os.makedirs(mnt, exist_ok=True)
    with open(backing, "wb") as f:
        f.write(b"x" * 12345)
    fnode = raw_fuse.FILE_NODE

    def attr_answer(nodeid, mode, size, answer_nodeid=None, error=0, body_size=None):
        body = raw_fuse.ATTR_VALID.pack(0, 0, 0) + raw_fuse.ATTR.pack(
            nodeid, size, 0, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)
        return HANDLER_ANSWER.pack(nodeid if answer_nodeid is None else answer_nodeid, error,
                                   len(body) if body_size is None else body_size, body)

    server = raw_fuse.RawServer("/dev/efuse", mnt, "efuse", backing)
    link = prog_fd = map_fd = -1
    try:
        def step(path):
            """statx path; returns its (ino, size, mode) or the errno, the requests the
            server read meanwhile and the counters' changes."""
            before, n = handler_stats(), len(server.requests)
            try:
                result = statx_sync(path)
            except OSError as e:
                result = e.errno
            after = handler_stats()
            return result, server.requests[n:], {k: after[k] - before[k] for k in after
                                                 if after[k] != before[k]}

        # No handler attached: stock behaviour, nothing counted.
        got, reqs, delta = step(mnt)
        assert got[1] == raw_fuse.ROOT_SIZE and (raw_fuse.OP_GETATTR, 1) in reqs and \
            not delta, f"no handler: stat {got}, server read {reqs}, counters moved {delta}"

        # The verifier bounds a handler to the module's buffer: a program writing its last
        # byte attaches, one writing the byte after it is refused (both load).
        subprocess.run(["bpftool", "prog", "loadall", bounds, pin_bounds], check=True,
                       timeout=120, capture_output=True)
        for name, want in (("efuse_last_byte", 0), ("efuse_past_end", errno.EINVAL)):
            fd = bpf_sys.obj_get(f"{pin_bounds}/{name}")
            try:
                os.close(bpf_sys.raw_tracepoint_open("efuse_handler", fd))
                err = 0
            except OSError as e:
                err = e.errno
            finally:
                os.close(fd)
            assert err == want, f"attaching {name}: errno {err}, want {want}"

        subprocess.run(["bpftool", "prog", "load", obj, pin_prog, "pinmaps", pin_maps],
                       check=True, timeout=120, capture_output=True)
        prog_fd = bpf_sys.obj_get(pin_prog)
        map_fd = bpf_sys.obj_get(f"{pin_maps}/efuse_getattr_answers")
        link = bpf_sys.raw_tracepoint_open("efuse_handler", prog_fd)
        key = lambda nodeid: struct.pack("<Q", nodeid)  # noqa: E731
        bpf_sys.map_update(map_fd, key(1), attr_answer(1, 0o40755, 7777) + NEVER)

        # In the map: answered in the kernel, the server reads nothing.
        got, reqs, delta = step(mnt)
        assert got[1] == 7777 and got[2] == 0o40755 and not reqs and \
            delta == {"answered": 1}, \
            f"root in the map: stat {got}, server read {reqs}, counters moved {delta}"

        # Not in the map: goes up; every request the server reads was declined once.
        got, reqs, delta = step(f"{mnt}/f")
        assert got[1] == 12345 and reqs.count((raw_fuse.OP_GETATTR, fnode)) == 1 and \
            delta == {"declined": len(reqs)}, \
            f"f not in the map: stat {got}, server read {reqs}, counters moved {delta}"

        # Malformed answers: refused, counted by reason, the request goes up and the
        # server's attributes come back (a directory's mode for a regular file would make
        # the stock reply path mark the inode bad; the module must refuse it first).
        for reason, answer in (
                ("bad_nodeid", attr_answer(fnode, 0o100644, 1, answer_nodeid=1)),
                ("bad_size", attr_answer(fnode, 0o100644, 1, body_size=100)),
                ("bad_error", attr_answer(fnode, 0o100644, 1, error=-5)),
                ("bad_reply", attr_answer(fnode, 0o40755, 1)),
                ("bad_reply", attr_answer(fnode, 0, 1))):
            bpf_sys.map_update(map_fd, key(fnode), answer + NEVER)
            got, reqs, delta = step(f"{mnt}/f")
            declined = len(reqs) - 1
            want = {reason: 1, **({"declined": declined} if declined else {})}
            assert got[1] == 12345 and got[2] == 0o100644 and \
                reqs.count((raw_fuse.OP_GETATTR, fnode)) == 1 and delta == want, \
                f"{reason}: stat {got}, server read {reqs}, counters moved {delta}, want {want}"

        # LOOKUP (patch 0005): negative answers are taken; a positive entry (patch 0008)
        # only for an inode the kernel holds (below), not for nodeid 999, which it does not.
        # Each name is looked up for the first time (a negative dentry cached for
        # entry_valid 0 could still be valid within the same jiffy).
        subprocess.run(["bpftool", "prog", "load", lookup_obj, pin_lookup, "pinmaps",
                        pin_lookup_maps], check=True, timeout=120, capture_output=True)
        lookup_fd = bpf_sys.obj_get(pin_lookup)
        lookup_map = bpf_sys.obj_get(f"{pin_lookup_maps}/efuse_lookup_answers")
        lookup_link = bpf_sys.raw_tracepoint_open("efuse_handler", lookup_fd)
        name_key = lambda parent, name: struct.pack("<Q256s", parent, name.encode())  # noqa
        no_attr = raw_fuse.ATTR.pack(*[0] * 16)

        def entry(nodeid):  # entry_valid 0, attr_valid 0; attributes of a regular file
            return raw_fuse.ENTRY_OUT.pack(nodeid, 0, 0, 0, 0, 0) + raw_fuse.ATTR.pack(
                nodeid, 1, 0, 0, 0, 0, 0, 0, 0, 0o100644, 1, 0, 0, 0, 4096, 0)
        for name, answer, want_stat in (
                ("gone", HANDLER_ANSWER.pack(1, -errno.ENOENT, 0, b""), {"answered": 1}),
                ("neg", HANDLER_ANSWER.pack(1, 0, len(entry(0)), entry(0)), {"answered": 1}),
                ("pos", HANDLER_ANSWER.pack(1, 0, len(entry(999)), entry(999)),
                 {"bad_reply": 1}),
                ("eio", HANDLER_ANSWER.pack(1, -errno.EIO, 0, b""), {"bad_error": 1}),
                ("body", HANDLER_ANSWER.pack(1, -errno.ENOENT, 8, no_attr), {"bad_error": 1}),
                ("other", HANDLER_ANSWER.pack(2, -errno.ENOENT, 0, b""), {"bad_nodeid": 1})):
            bpf_sys.map_update(lookup_map, name_key(1, name), answer + NEVER)
            got, reqs, delta = step(f"{mnt}/{name}")
            want_reqs = [] if "answered" in want_stat else [(raw_fuse.OP_LOOKUP, 1)]
            assert got == errno.ENOENT and reqs == want_reqs and delta == want_stat, \
                f"lookup {name}: got {got}, server read {reqs} (want {want_reqs}), " \
                f"counters moved {delta} (want {want_stat})"
        # A positive entry for f, whose inode the steps above left in the kernel's cache:
        # taken (no LOOKUP reaches the server; the statx's GETATTR of f goes up, refused:
        # the GETATTR map still holds the last malformed answer for f).
        bpf_sys.map_update(lookup_map, name_key(1, "pos-f"),
                           HANDLER_ANSWER.pack(1, 0, len(entry(fnode)), entry(fnode)) + NEVER)
        got, reqs, delta = step(f"{mnt}/pos-f")
        assert isinstance(got, tuple) and (raw_fuse.OP_LOOKUP, 1) not in reqs \
            and delta.get("answered") == 1, \
            f"lookup pos-f: got {got}, server read {reqs}, counters moved {delta}"
        os.close(lookup_link)
        os.close(lookup_map)
        os.close(lookup_fd)

        # Detached: stock again although the map still answers for the root.
        os.close(link)
        link = -1
        got, reqs, delta = step(mnt)
        assert got[1] == raw_fuse.ROOT_SIZE and reqs == [(raw_fuse.OP_GETATTR, 1)] and \
            not delta, f"detached: stat {got}, server read {reqs}, counters moved {delta}"

        # The server killed: its device descriptor moves to a process of its own (the
        # serving thread stopped first: a thread blocked in select() on the descriptor would
        # keep the file open), which is then SIGKILLed; its exit releases the last
        # reference, and the kernel aborts the connection as for a killed efused.
        link = bpf_sys.raw_tracepoint_open("efuse_handler", prog_fd)
        os.write(server.stop_w, b"x")
        server.thread.join(30)
        assert not server.thread.is_alive(), "the raw server's thread did not stop"
        holder = subprocess.Popen(["sleep", "600"], pass_fds=[server.fd])
        server.abort()  # the holder has the only descriptor now
        try:
            # Still alive: the map answers (in a child: a request going up now would wait
            # for a server that no longer reads; killing the holder releases it).
            probe = subprocess.run(
                [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                 "from guest_smoke import statx_sync; print(statx_sync(sys.argv[2])[1])",
                 HERE, mnt], capture_output=True, text=True, timeout=60)
            assert probe.stdout.split() == ["7777"], \
                f"server alive, root in the map: {probe.stdout!r} {probe.stderr!r}"
        finally:
            holder.kill()
            holder.wait()
        before = handler_stats()
        try:
            got = statx_sync(mnt)
            raise AssertionError(f"stat after the server was killed: {got}, not ENOTCONN")
        except OSError as e:
            assert e.errno == errno.ENOTCONN, f"stat after the server was killed: {e}"
        assert handler_stats() == before, "counters moved after the server was killed"
    finally:
        for fd in (link, map_fd, prog_fd):
            if fd >= 0:
                os.close(fd)
        server.stop()
        subprocess.run(["rm", "-rf", pin_prog, pin_maps, pin_bounds, pin_lookup,
                        pin_lookup_maps])
    subprocess.run(["rmmod", "efuse"], check=True, timeout=60, capture_output=True)


def run_module(part):
    """The checks of guest_<part>.py in order, then its cleanup (which unloads efuse.ko)."""
    mod = __import__(f"guest_{part}")
    before = failures
    try:
        for fn in mod.CHECKS:
            check(fn)
    finally:
        mod.cleanup(failures > before)


# Taint flags that mean the kernel went wrong while efuse ran (bit: letter); the module's own
# O (out of tree) and E (unsigned) are expected.
KERNEL_TROUBLE = {5: "B (bad page)", 7: "D (died: an Oops or BUG)", 9: "W (a WARN fired)",
                  14: "L (soft lockup)"}


def check_kernel_clean():
    """Nothing efuse did made the guest kernel Oops, BUG, WARN or lock up, whatever the checks
    themselves saw (a request that Oopsed in one process may leave the others passing)."""
    with open("/proc/sys/kernel/tainted") as f:
        tainted = int(f.read())
    bad = [what for bit, what in KERNEL_TROUBLE.items() if tainted >> bit & 1]
    if bad:
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
        at = max(dmesg.find(m) for m in ("Oops", "BUG:", "WARNING:", "watchdog:", "Bad page"))
        raise AssertionError(f"kernel tainted {', '.join(bad)}: "
                             + (dmesg[max(at - 300, 0):][:4000] if at >= 0 else dmesg[-2000:]))


def main():
    code = run_checks()
    check(check_kernel_clean)
    return 1 if failures else code


def run_checks():
    if PROFILE not in EXPECT:
        report("FAIL", "setup", f"efuse_profile={PROFILE!r} is not one of {sorted(EXPECT)}")
        return 1
    print(f"guest: kernel {os.uname().release}, profile {PROFILE}, efused {EFUSED}", flush=True)
    only = os.environ.get("efuse_only", "")
    if only and not only.startswith("kmod:") and os.environ.get("efuse_kmod") == "1":
        # EFUSE_VM_ONLY=swap, read or read,swap (tests/vm/README.md): those checks alone
        for part in only.split(","):
            run_module(part)
        return 1 if failures else 0
    if only.startswith("kmod:") and os.environ.get("efuse_kmod") == "1":
        import guest_kmod  # EFUSE_VM_ONLY=kmod:open_flush,kill9: those checks of guest_kmod
        names = [f"check_kmod_efused_{n}" for n in only[5:].split(",") if n]
        unknown = [n for n in names if not hasattr(guest_kmod, n)]
        if unknown:
            report("FAIL", "setup", f"EFUSE_VM_ONLY names unknown checks: {unknown}")
            return 1
        try:  # the tier check loads the module and starts efused first
            for fn in [guest_kmod.check_kmod_efused_tier] + [getattr(guest_kmod, n)
                                                              for n in names]:
                check(fn)
        finally:
            guest_kmod.cleanup(failures > 0)
        return 1 if failures else 0
    check(check_efused_starts)
    if efused is None or efused.poll() is not None:
        report("FAIL", "rest", "efused is not running; nothing else can be checked")
    else:
        for fn in (check_fuse_module, check_file_ops, check_tar_extract, check_mount_up,
                   check_kernel_features, check_data_path, check_bpf_telemetry, check_clean_stop):
            check(fn)
    if os.environ.get("efuse_kmod") == "1":
        check(check_kmod_efuse)
        check(check_kmod_handler)
        run_module("kmod")  # efused on the kernel module tier
        run_module("read")  # READ answered in the kernel (kmod patch 0011)
        run_module("swap")  # handler hot swap (issue 20)
    if efused is not None and efused.poll() is None:
        efused.kill()
        efused.wait()
    subprocess.run(["umount", "-l", MNT], stderr=subprocess.DEVNULL)
    if failures:
        print(f"--- efused log (last 40 lines) ---\n" + "\n".join(log_text().splitlines()[-40:]),
              flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
