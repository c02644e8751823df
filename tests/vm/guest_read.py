"""READ answered in the kernel (kmod patch 0011, bpf/handlers/efuse_read.bpf.c), run INSIDE
the 6.12 test guest after guest_kmod.py's checks (standard library only; imported by
guest_smoke.py, which reports).

efused serves /mnt/data/ksrc at /mnt/kefuse through efuse.ko with `--io-path cache`, so
file data goes through the kernel's page cache and READ requests reach the module when the
page cache misses: O_DIRECT reads (asynchronous direct I/O: background READs) and reads
after the file's pages were dropped (posix_fadvise DONTNEED: readahead, background READs).
efused stores the blocks of small files its READ replies carried in the mount's block cache
(efuse_read_blocks); the READ handler answers from there. Every byte read must be the
backing file's: after writes and truncates through the mount at once, after outside changes
as soon as the watcher saw them, never a mix of two versions.
"""
import hashlib
import mmap
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import guest_kmod as k  # noqa: E402
import guest_smoke as g  # noqa: E402
from prom_text import value  # noqa: E402

BLOCK = 4096
READ_MAX = 32768  # EFUSE_HANDLER_READ_MAX: files up to this are kept in blocks
SIZES = (1, 100, 4095, 4096, 4097, 8192, 10000, 20000, 32768)
RD = "rd"  # the files, under KSRC and KMNT
ROUNDS = 300  # the random model test


def src(name):
    return f"{k.KSRC}/{RD}/{name}"


def mnt(name):
    return f"{k.KMNT}/{RD}/{name}"


def direct_read(path, offset, length):
    """pread with O_DIRECT (an aligned buffer): the page cache is bypassed, so the kernel
    sends READ (asynchronous direct I/O: from fuse_simple_background)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, max(BLOCK, (length + BLOCK - 1) // BLOCK * BLOCK))
        n = os.preadv(fd, [memoryview(buf)[:length]], offset)
        return bytes(buf[:n])
    finally:
        os.close(fd)


def cold_read(path):
    """The whole file after its pages were dropped: readahead sends READ."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        out = b""
        while chunk := os.read(fd, 1 << 16):
            out += chunk
        return out
    finally:
        os.close(fd)


def backing(name):
    with open(src(name), "rb") as f:
        return f.read()


def read_counts():
    return k.counts("read")


def no_bad_fallbacks():
    bad = [(l, v) for n, l, v in k.samples() if n == "efuse_kernel_handler_fallbacks_total"
           and l.get("reason", "").startswith("bad_") and v
           and (l.get("opcode"), l.get("reason")) != ("lookup", "bad_reply")]
    assert not bad, f"the module refused answers: {bad}"


def settled():
    """Every open released: a file closed for writing stores no blocks until its RELEASE."""
    k.eventually("RELEASE of every open", k.released, 0)


def check_kmod_read_setup():
    """efused on efuse.ko with io_path cache; the READ handler is attached with the rest."""
    with open("/proc/modules") as f:
        if not any(line.split()[0] == "efuse" for line in f):
            subprocess.run(["insmod", f"{g.DATA}/efuse.ko"], check=True, timeout=120,
                           capture_output=True)
    os.makedirs(f"{k.KSRC}/{RD}", exist_ok=True)
    rnd = random.Random(19)
    for size in SIZES:
        with open(src(f"f{size}"), "wb") as f:
            f.write(rnd.randbytes(size))
    with open(src("big"), "wb") as f:
        f.write(rnd.randbytes(100000))
    k.start_efused("--io-path", "cache")
    attached = [l for l in k.log_text().splitlines() if "eBPF handlers attached: " in l]
    assert attached and "read (" in attached[-1], attached or k.log_text()[-800:]
    assert "efuse_read" in k.handler_programs(), k.handler_programs()
    cap = value(k.samples(), "efuse_kernel_read_cache_capacity_bytes", mount=k.KNAME)
    assert cap and cap > 0, f"no READ block cache: {cap}"


def check_kmod_read_answers():
    """Each small file: the first O_DIRECT read goes to efused, the second is answered in the
    kernel with the same bytes; reads spanning blocks, reaching past the end and starting
    in the last block are answered in the kernel with the backing file's bytes; a cold
    (readahead) read too; a large file's reads all go to efused. sha256 against the
    backing file throughout."""
    settled()
    answered0 = read_counts()[0]
    for size in SIZES:
        name = f"f{size}"
        want = backing(name)
        whole = (size + BLOCK - 1) // BLOCK * BLOCK
        # Asked for more than the file holds: the short reply shows efused where it ends.
        first, at1 = k.where("read", lambda: direct_read(mnt(name), 0, whole + BLOCK))
        second, at2 = k.where("read", lambda: direct_read(mnt(name), 0, whole + BLOCK))
        assert (at1, at2) == ("efused", "kernel"), f"{name}: from {at1}, then {at2}"
        for got in (first, second):
            assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), \
                f"{name}: {len(got)} bytes, not the backing file's {len(want)}"
        # O_DIRECT offsets and lengths in 512-byte units (a miss makes efused read its
        # backing file with O_DIRECT, which ext4 wants aligned): within a block, across
        # two, from the last one past the end, and the longest read at any offset.
        last = (size - 1) // 512 * 512
        spans = [(0, 512), (3584, 1024), (3584, 8704), (last, 2048),
                 (size // 1024 * 512, (size + 511) // 512 * 512),
                 (512, READ_MAX)]
        for off, length in spans:
            if off >= size:
                continue
            got, at = k.where("read", lambda: direct_read(mnt(name), off, length))
            assert got == want[off:off + length], f"{name} [{off}, +{length}): wrong bytes"
            assert at == "kernel", f"{name} [{off}, +{length}) went to {at}"
        got = cold_read(mnt(name))
        assert got == want, f"{name}: cold read {len(got)} bytes differ"
    # Readahead after the pages were dropped: answered in the kernel, no READ to efused.
    answered, served = read_counts()
    got = cold_read(mnt("f20000"))
    a2, s2 = read_counts()
    assert got == backing("f20000") and s2 == served and a2 > answered, \
        f"cold read: {a2 - answered} answered in the kernel, {s2 - served} by efused"
    # A file larger than READ_MAX is never kept: its READs go to efused.
    want = backing("big")
    for _ in range(2):
        got, at = k.where("read", lambda: direct_read(mnt("big"), 40960, 8192))
        assert (got, at) == (want[40960:49152], "efused"), f"big: {at}"
    s = k.samples()
    assert (value(s, "efuse_kernel_map_entries", mount=k.KNAME, map="read_blocks") or 0) >= \
        sum((n + BLOCK) // BLOCK for n in SIZES) - len(SIZES)
    print(f"  {read_counts()[0] - answered0:.0f} READs answered in the kernel", flush=True)
    no_bad_fallbacks()


def write_through(name, offset, data):
    with open(mnt(name), "r+b") as f:
        f.seek(offset)
        f.write(data)


def expect_now(name, what):
    """Right after a change through the mount, every read is the backing file's."""
    want = backing(name)
    settled()
    for _ in range(2):  # efused (blocks dropped), then the kernel (stored again)
        got = direct_read(mnt(name), 0, READ_MAX + BLOCK)
        assert got == want, f"after {what}: {len(got)} bytes read, backing {len(want)}, " \
                            f"first difference at {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}"
    assert cold_read(mnt(name)) == want, f"after {what}: cold read differs"


def check_kmod_read_own_changes():
    """Writes, truncates, fallocate, copy_file_range, rename over and unlink through the
    mount: the next read is the new content (the blocks went before the reply)."""
    for size in (10000, 4096):
        name = f"f{size}"
        expect_now(name, "nothing")
        cases = [
            ("write", lambda: write_through(name, 4000, b"W" * 300)),
            ("append", lambda: open(mnt(name), "ab").write(b"A" * 5000)),
            ("truncate down", lambda: os.truncate(mnt(name), 5000)),
            ("truncate up", lambda: os.truncate(mnt(name), 9000)),
            ("fallocate", lambda: fallocate(name, 9000, 3000)),
            ("copy_file_range", lambda: copy_range("f20000", name)),
            ("rename over", lambda: rename_over(name)),
            ("unlink and create", lambda: recreate(name)),
        ]
        for what, change in cases:
            expect_now(name, "priming")  # blocks stored and answered
            change()
            expect_now(name, what)
    no_bad_fallbacks()


def fallocate(name, offset, length):
    fd = os.open(mnt(name), os.O_RDWR)
    try:
        os.posix_fallocate(fd, offset, length)
    finally:
        os.close(fd)


def copy_range(src_name, dst_name):
    fi = os.open(mnt(src_name), os.O_RDONLY)
    fo = os.open(mnt(dst_name), os.O_RDWR)
    try:
        os.copy_file_range(fi, fo, 3000, 100, 200)
    finally:
        os.close(fi)
        os.close(fo)


def rename_over(name):
    with open(mnt("new"), "wb") as f:
        f.write(os.urandom(7000))
    os.rename(mnt("new"), mnt(name))


def recreate(name):
    os.unlink(mnt(name))
    with open(mnt(name), "wb") as f:
        f.write(os.urandom(6000))


def check_kmod_read_outside_changes():
    """Changes in the backing directory: the mount shows the new bytes as soon as the
    watcher saw them, and until then only the old ones (never a mix)."""
    name = "f8192"
    for what, change in (("outside write", lambda f: (f.seek(100), f.write(b"O" * 5000))),
                         ("outside truncate", lambda f: f.truncate(3000)),
                         ("outside append", lambda f: (f.seek(0, 2), f.write(b"P" * 9000)))):
        expect_now(name, "priming")
        old = backing(name)
        with open(src(name), "r+b") as f:
            change(f)
        new = backing(name)
        deadline = time.monotonic() + k.EVENTUALLY
        while True:
            got = direct_read(mnt(name), 0, READ_MAX + BLOCK)
            if got == new:
                break
            assert got == old, f"{what}: read neither the old nor the new bytes"
            assert time.monotonic() < deadline, f"{what}: still the old bytes after {k.EVENTUALLY} s"
            time.sleep(0.1)
        expect_now(name, what)
    no_bad_fallbacks()


def check_kmod_read_exact():
    """A random model test (seeded, printed): ROUNDS operations on small files through the
    mount and behind it (writes, truncates, renames over, outside writes), with O_DIRECT and
    cold reads of random ranges compared with the model after each; then fio --verify with
    O_DIRECT, its verify passes run again on files nobody writes."""
    seed = int.from_bytes(os.urandom(4), "little")
    rnd = random.Random(seed)
    names = [f"m{i}" for i in range(4)]
    model = {}
    for n in names:
        model[n] = rnd.randbytes(rnd.randrange(1, READ_MAX + 1))
        with open(mnt(n), "wb") as f:
            f.write(model[n])
    answered0, served0 = read_counts()
    reads = 0
    for step in range(ROUNDS):
        n = rnd.choice(names)
        op = rnd.random()
        where = f"seed {seed} step {step} {n}"
        if op < 0.15:
            off = rnd.randrange(0, READ_MAX)
            data = rnd.randbytes(rnd.randrange(1, 5000))
            write_through(n, off, data)
            m = model[n]
            m = m + b"\0" * max(0, off - len(m))
            model[n] = m[:off] + data + m[off + len(data):]
        elif op < 0.22:
            size = rnd.randrange(0, READ_MAX + 1)
            os.truncate(mnt(n), size)
            model[n] = model[n][:size] + b"\0" * max(0, size - len(model[n]))
        elif op < 0.27:
            other = rnd.choice(names)
            if other != n:
                os.rename(mnt(other), mnt(n))
                with open(mnt(other), "wb") as f:
                    f.write(model[other])  # the name comes back with its old bytes
                model[n] = model[other]
        else:
            length = rnd.randrange(1, READ_MAX // 512 + 1) * 512  # O_DIRECT units
            off = rnd.randrange(0, len(model[n]) // 512 + 1) * 512
            if rnd.random() < 0.8:
                got = direct_read(mnt(n), off, length)
                want = model[n][off:off + length]
            else:
                got, want = cold_read(mnt(n)), model[n]
            reads += 1
            assert got == want, f"{where}: read {len(got)} bytes at {off}, model {len(want)}"
        if step % 50 == 49:
            settled()  # RELEASEs arrive: blocks are stored again
    answered, served = read_counts()
    print(f"  model test seed {seed}: {ROUNDS} operations, {reads} reads checked, "
          f"{answered - answered0:.0f} READs answered in the kernel, {served - served0:.0f} "
          "by efused", flush=True)
    assert answered > answered0, "no READ answered in the kernel"
    # fio --verify with O_DIRECT: 8 files of 32 KiB written and verified, then the verify
    # passes again with nothing writing (the blocks efused stored answer them).
    d = f"{k.KMNT}/{RD}/fio"
    os.makedirs(d, exist_ok=True)
    base = ["fio", "--name=readverify", f"--directory={d}", "--nrfiles=8", "--filesize=32k",
            "--size=256k", "--bs=4k", "--direct=1", "--ioengine=psync", "--verify=crc32c"]
    r = subprocess.run(base + ["--rw=write", "--do_verify=1"], capture_output=True, text=True,
                       timeout=g.CHECK_TIMEOUT)
    assert r.returncode == 0, f"fio --verify: {r.stdout[-800:]} {r.stderr[-800:]}"
    settled()
    a0, s0 = read_counts()
    # Read-only passes (opened O_RDONLY: blocks are stored, then answer), each block's
    # header and crc32c checked.
    for _ in range(3):
        r = subprocess.run(base + ["--rw=read", "--readonly"], capture_output=True, text=True,
                           timeout=g.CHECK_TIMEOUT)
        assert r.returncode == 0, f"fio read --verify: {r.stdout[-800:]} {r.stderr[-800:]}"
    a1, s1 = read_counts()
    print(f"  fio --verify=crc32c read passes x3 (O_DIRECT): {a1 - a0:.0f} READs answered in "
          f"the kernel, {s1 - s0:.0f} by efused", flush=True)
    assert a1 > a0, "fio's verify reads: none answered in the kernel"
    no_bad_fallbacks()


def check_kmod_read_stop():
    k.close_nodes()
    k.stop_efused()
    k.eventually("handler programs freed after SIGTERM", k.handler_programs, [])


CHECKS = (check_kmod_read_setup, check_kmod_read_answers, check_kmod_read_own_changes,
          check_kmod_read_outside_changes, check_kmod_read_exact, check_kmod_read_stop)
check_kmod_read_exact.timeout = 1200


def cleanup(failed):
    k.cleanup(failed)
