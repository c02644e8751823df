#!/usr/bin/env python3
"""POSIX operations through efused.

Each test runs the same operations on a native directory and on the mount (Twin.same):
results and errno names must be identical, and key results are also checked against the
expected value. Afterwards the backing directory must hold exactly what the mount shows.
"""

import errno
import fcntl
import mmap
import os
import random
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import as_user, outcome, read_file, write_file  # noqa: E402

J = os.path.join


def opn(path, flags, mode=0o644):
    """open+close, returning None (fd numbers must not leak into comparisons)."""
    os.close(os.open(path, flags, mode))


def mode_of(path):
    return oct(stat.S_IMODE(os.lstat(path).st_mode))


def check_backing(m):
    """The backing dir and the mount show the same tree, and both equal the native twin."""
    h.assert_same_tree(m.mnt, m.src, dir_size=True)
    h.assert_same_tree(m.native, m.mnt)


def rand_bytes(n, seed):
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------- data

def test_create_read_write_append(m):
    def op(b):
        p = J(b, "f")
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
        os.write(fd, b"hello world")
        os.pwrite(fd, b"XY", 6)
        os.lseek(fd, 0, os.SEEK_SET)
        first = os.read(fd, 100)
        os.pwrite(fd, b"tail", 20)  # beyond EOF: bytes 11..19 read as zeros
        os.fsync(fd)
        os.fdatasync(fd)
        os.close(fd)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"+app")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"!")  # O_APPEND ignores the position
        os.close(fd)
        st = os.stat(p)
        return first, read_file(p), st.st_size, mode_of(p)

    first, data, size, mode = m.twin().same(op)
    assert first == b"hello XYrld", first
    assert data == b"hello XYrld" + b"\0" * 9 + b"tail+app!", data
    assert size == 29 and mode == "0o640", (size, mode)
    assert read_file(m.s("f")) == data
    check_backing(m)


def test_large_and_unaligned_io(m):
    blob = rand_bytes(9 * 1024 * 1024 + 123, 1)

    def op(b):
        p = J(b, "big")
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        pos = 0
        for size in [1, 4095, 4096, 4097, 131073, 1 << 20, 3 << 20]:
            n = os.write(fd, blob[pos:pos + size])
            pos += n
        os.write(fd, blob[pos:])
        rng = random.Random(2)
        for _ in range(200):  # scattered unaligned overwrites
            off = rng.randrange(0, len(blob) - 5000)
            os.pwrite(fd, b"\xab" * rng.randrange(1, 5000), off)
        reads = [os.pread(fd, ln, off) for off, ln in
                 [(0, 1), (4095, 2), (123457, 70000), (len(blob) - 10, 100), (len(blob) + 5, 10)]]
        os.close(fd)
        return reads, h.sha256_file(p), os.stat(p).st_size

    reads, digest, size = m.twin().same(op)
    assert size == len(blob) and reads[-1] == b""
    assert h.sha256_file(m.s("big")) == digest


@h.backing_dir("files created in the backing directory behind efused's back")
def test_backing_changes_visible(m):
    # A file created directly in the backing dir is visible and readable through the mount.
    data = rand_bytes(300000, 3)
    write_file(m.s("made-outside"), data)
    os.mkdir(m.s("dir-outside"))
    assert read_file(m.m("made-outside")) == data
    assert os.path.isdir(m.m("dir-outside"))
    assert os.stat(m.m("made-outside")).st_size == len(data)


def test_mmap_shared(m):
    def op(b):
        p = J(b, "mm")
        write_file(p, b"\0" * 3 * 4096)
        fd = os.open(p, os.O_RDWR)
        mm = mmap.mmap(fd, 3 * 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[100:105] = b"hello"
        mm[8190:8194] = b"WXYZ"
        mm.flush()
        mm.close()
        os.close(fd)
        fd = os.open(p, os.O_RDONLY)
        mm = mmap.mmap(fd, 3 * 4096, mmap.MAP_SHARED, mmap.PROT_READ)
        seen = mm[95:110], mm[8188:8196]
        mm.close()
        os.close(fd)
        return seen, h.sha256_file(p)

    seen, digest = m.twin().same(op)
    assert seen == (b"\0" * 5 + b"hello" + b"\0" * 5, b"\0\0WXYZ\0\0"), seen
    assert h.sha256_file(m.s("mm")) == digest


def test_truncate_shrink_grow(m):
    def op(b):
        p = J(b, "t")
        write_file(p, bytes(range(256)) * 40)  # 10240 bytes
        assert len(read_file(p)) == 10240  # pull the data into the page cache first
        os.truncate(p, 5000)
        s1, d1 = os.stat(p).st_size, read_file(p)
        os.truncate(p, 20000)  # the grown part must read as zeros, not as old data
        d2 = read_file(p)
        fd = os.open(p, os.O_RDWR)
        os.ftruncate(fd, 100)
        os.write(fd, b"abc")
        os.ftruncate(fd, 3000)
        os.close(fd)
        d3 = read_file(p)
        opn(p, os.O_WRONLY | os.O_TRUNC)
        return s1, d1, d2, d3, os.stat(p).st_size

    s1, d1, d2, d3, s4 = m.twin().same(op)
    base = bytes(range(256)) * 40
    assert s1 == 5000 and d1 == base[:5000]
    assert d2 == base[:5000] + b"\0" * 15000
    assert d3 == b"abc" + base[3:100] + b"\0" * 2900
    assert s4 == 0
    check_backing(m)


def test_open_flags(m):
    # Flags an application may pass to open(2) on a regular file, a directory and a symlink.
    def op(b):
        f, d = J(b, "f"), J(b, "d")
        write_file(f, b"0123456789")
        os.mkdir(d)
        os.symlink("f", J(b, "l"))
        r = []
        for flags in (os.O_RDONLY | os.O_NOFOLLOW, os.O_RDWR | os.O_NOFOLLOW,
                      os.O_RDONLY | os.O_NOATIME, os.O_RDWR | os.O_SYNC,
                      os.O_WRONLY | os.O_DSYNC, os.O_RDONLY | os.O_NONBLOCK,
                      os.O_RDONLY | os.O_NOCTTY, os.O_RDWR | os.O_CLOEXEC,
                      os.O_RDONLY | os.O_DIRECT, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW,
                      os.O_PATH, os.O_PATH | os.O_NOFOLLOW):
            r.append(outcome(opn, f, flags))
        r.append(outcome(opn, d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))
        r.append(outcome(opn, J(b, "l"), os.O_RDONLY | os.O_NOFOLLOW))
        r.append(outcome(opn, J(b, "l"), os.O_PATH | os.O_NOFOLLOW))
        r.append(outcome(opn, J(b, "l"), os.O_RDONLY))
        r.append(outcome(opn, J(b, "new"), os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW))
        r.append(outcome(opn, J(b, "new2"), os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_SYNC))
        fd = os.open(f, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        os.write(fd, b"new")
        os.close(fd)
        r.append(read_file(f))
        return r

    r = m.twin().same(op)
    assert r[:13] == [("ok", None)] * 13, r
    assert r[13] == ("err", "ELOOP") and r[14:18] == [("ok", None)] * 4, r
    assert r[18] == b"new", r
    check_backing(m)


# ---------------------------------------------------------------- attributes

def test_chmod(m):
    def op(b):
        p = J(b, "c")
        write_file(p, "x")
        d = J(b, "d")
        os.mkdir(d)
        seen = []
        for mode in (0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o000, 0o644):
            os.chmod(p, mode)
            seen.append(mode_of(p))
        fd = os.open(p, os.O_RDONLY)
        os.fchmod(fd, 0o640)
        os.close(fd)
        seen.append(mode_of(p))
        os.chmod(d, 0o3711)
        seen.append(mode_of(d))
        return seen

    seen = m.twin().same(op)
    assert seen == ["0o600", "0o755", "0o4755", "0o2750", "0o1777", "0o0", "0o644", "0o640",
                    "0o3711"], seen
    assert mode_of(m.s("c")) == "0o640" and mode_of(m.s("d")) == "0o3711"
    check_backing(m)


def test_chown(m):
    def op(b):
        p = J(b, "c")
        write_file(p, "x")
        os.symlink("c", J(b, "l"))
        seen = []
        os.chown(p, 1234, 5678)
        st = os.stat(p)
        seen.append((st.st_uid, st.st_gid))
        os.chown(p, -1, 42)
        st = os.stat(p)
        seen.append((st.st_uid, st.st_gid))
        os.lchown(J(b, "l"), 777, 888)  # the link, not its target
        st, lst = os.stat(p), os.lstat(J(b, "l"))
        seen.append(((st.st_uid, st.st_gid), (lst.st_uid, lst.st_gid)))
        os.chmod(p, 0o6755)
        os.chown(p, 1235, 42)  # chown of an executable clears set-user/group-ID (even by root)
        seen.append(mode_of(p))
        return seen

    seen = m.twin().same(op)
    assert seen[:3] == [(1234, 5678), (1234, 42), ((1234, 42), (777, 888))], seen
    st, lst = os.stat(m.s("c")), os.lstat(m.s("l"))
    assert (st.st_uid, st.st_gid, lst.st_uid, lst.st_gid) == (1235, 42, 777, 888)
    check_backing(m)


def test_chown_unprivileged(m):
    def op(b):
        p = J(b, "mine")
        write_file(p, "x")
        os.chown(p, h.USER_UID, h.USER_GID)

        def child():
            return [outcome(os.chown, p, 0, -1),  # give away: EPERM
                    outcome(os.chown, p, -1, 4242),  # group we are not in: EPERM
                    outcome(os.chown, p, h.USER_UID, h.USER_GID)]  # no-op: allowed
        return as_user(child)

    res = m.twin().same(op)
    assert res == [("err", "EPERM"), ("err", "EPERM"), ("ok", None)], res


def test_utimes(m):
    def op(b):
        p = J(b, "u")
        write_file(p, "x")
        seen = []
        os.utime(p, ns=(1_000_000_123, 2_000_000_456))
        st = os.stat(p)
        seen.append((st.st_atime_ns, st.st_mtime_ns))
        h.utimensat(p, h.UTIME_OMIT, (3, 999))  # only mtime
        st = os.stat(p)
        seen.append((st.st_atime_ns, st.st_mtime_ns))
        h.utimensat(p, (5, 7), h.UTIME_OMIT)  # only atime
        st = os.stat(p)
        seen.append((st.st_atime_ns, st.st_mtime_ns))
        fd = os.open(p, os.O_RDONLY)
        os.utime(fd, ns=(11, 12))  # futimens
        os.close(fd)
        st = os.stat(p)
        seen.append((st.st_atime_ns, st.st_mtime_ns))
        return seen

    seen = m.twin().same(op)
    assert seen == [(1_000_000_123, 2_000_000_456), (1_000_000_123, 3_000_000_999),
                    (5_000_000_007, 3_000_000_999), (11, 12)], seen
    st = os.stat(m.s("u"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (11, 12)

    # UTIME_NOW for one time, UTIME_OMIT for the other, and os.utime(None) for both.
    p = m.m("u")
    os.utime(p, ns=(10**9, 2 * 10**9))
    before = time.time_ns()
    h.utimensat(p, h.UTIME_OMIT, h.UTIME_NOW)
    after = time.time_ns()
    for path in (p, m.s("u")):
        st = os.stat(path)
        assert st.st_atime_ns == 10**9, (path, st.st_atime_ns)
        # The kernel clock is coarse: allow 1 s slack (this bounds correctness, not speed).
        assert before - 10**9 <= st.st_mtime_ns <= after + 10**9, (path, before, st.st_mtime_ns)
    h.utimensat(p, h.UTIME_NOW, h.UTIME_OMIT)
    st = os.stat(p)
    assert before - 10**9 <= st.st_atime_ns <= time.time_ns() + 10**9
    os.utime(p, ns=(1, 1))
    os.utime(p)
    st = os.stat(p)
    assert st.st_mtime_ns > 10**18 and st.st_atime_ns > 10**18, st

    # touch -d / -a / -m / -h with fixed dates, compared with native.
    env = dict(os.environ, TZ="UTC")

    def touch_op(b):
        f = J(b, "touched")
        write_file(f, "y")
        os.symlink("touched", J(b, "tl"))
        h.run(["touch", "-d", "2001-02-03 04:05:06.789", f], env=env)
        st = os.stat(f)
        r = [(st.st_atime_ns, st.st_mtime_ns)]
        h.run(["touch", "-a", "-d", "2002-01-01 00:00:00", f], env=env)
        h.run(["touch", "-m", "-d", "2003-01-01 00:00:00.5", f], env=env)
        st = os.stat(f)
        r.append((st.st_atime_ns, st.st_mtime_ns))
        h.run(["touch", "-h", "-d", "2004-01-01 00:00:00", J(b, "tl")], env=env)
        lst, st = os.lstat(J(b, "tl")), os.stat(f)
        r.append((lst.st_mtime_ns, st.st_mtime_ns))
        return r

    r = m.twin().same(touch_op)
    assert r == [(981173106789000000, 981173106789000000),
                 (1009843200000000000, 1041379200500000000),
                 (1072915200000000000, 1041379200500000000)], r
    assert os.stat(m.s("touched")).st_mtime_ns == 1041379200500000000


# ---------------------------------------------------------------- namespace

def test_mkdir_rmdir(m):
    def op(b):
        d = J(b, "d")
        r = [outcome(os.mkdir, d, 0o750), outcome(os.mkdir, d), mode_of(d)]
        write_file(J(d, "f"), "x")
        os.mkdir(J(d, "sub"))
        r += [outcome(os.rmdir, d), outcome(os.rmdir, J(d, "f")),
              outcome(os.mkdir, J(b, "nope", "x")), os.stat(d).st_nlink]
        os.unlink(J(d, "f"))
        os.rmdir(J(d, "sub"))
        r += [os.stat(d).st_nlink, outcome(os.rmdir, d), outcome(os.rmdir, d),
              os.path.lexists(d)]
        return r

    r = m.twin().same(op)
    assert r == [("ok", None), ("err", "EEXIST"), "0o750", ("err", "ENOTEMPTY"),
                 ("err", "ENOTDIR"), ("err", "ENOENT"), 3, 2, ("ok", None), ("err", "ENOENT"),
                 False], r
    assert os.listdir(m.src) == []
    check_backing(m)


def test_unlink(m):
    def op(b):
        p = J(b, "f")
        write_file(p, "data")
        os.mkdir(J(b, "d"))
        r = [outcome(os.unlink, p), outcome(os.unlink, p), outcome(os.unlink, J(b, "d"))]
        # An unlinked file stays usable through an open descriptor.
        write_file(p, "still here")
        fd = os.open(p, os.O_RDWR)
        os.unlink(p)
        os.pwrite(fd, b"THERE", 6)
        r += [os.fstat(fd).st_nlink, os.pread(fd, 100, 0), os.path.lexists(p)]
        os.close(fd)
        return r

    r = m.twin().same(op)
    assert r == [("ok", None), ("err", "ENOENT"), ("err", "EISDIR"), 0, b"still THERE",
                 False], r
    assert sorted(os.listdir(m.src)) == ["d"]
    check_backing(m)


def test_rename(m):
    def op(b):
        r = []
        a, c = J(b, "a"), J(b, "c")
        write_file(a, "A")
        write_file(c, "C")
        fd = os.open(c, os.O_RDONLY)  # the replaced file stays readable through its fd
        r.append(outcome(os.rename, a, c))
        r += [read_file(c), os.path.lexists(a), os.pread(fd, 10, 0)]
        os.close(fd)
        os.makedirs(J(b, "d1", "inner"))
        write_file(J(b, "d1", "inner", "f"), "F")
        os.mkdir(J(b, "d2"))
        r.append(outcome(os.rename, J(b, "d1"), J(b, "d2")))  # over an empty dir
        r.append(read_file(J(b, "d2", "inner", "f")))
        os.makedirs(J(b, "d3", "x"))
        r.append(outcome(os.rename, J(b, "d2"), J(b, "d3")))  # over a non-empty dir
        r.append(outcome(os.rename, c, J(b, "d3")))  # file over dir
        r.append(outcome(os.rename, J(b, "d3"), c))  # dir over file
        r.append(outcome(os.rename, c, J(b, "d2", "inner", "moved")))  # across dirs
        r.append(outcome(os.rename, J(b, "d2"), J(b, "d2", "inner", "loop")))  # into itself
        r.append(outcome(os.rename, J(b, "missing"), J(b, "x")))
        write_file(J(b, "same"), "S")
        r.append(outcome(os.rename, J(b, "same"), J(b, "same")))
        os.link(J(b, "same"), J(b, "same2"))
        r.append(outcome(os.rename, J(b, "same"), J(b, "same2")))  # hard links: no-op
        r += [os.path.lexists(J(b, "same")), os.stat(J(b, "same2")).st_nlink]
        # The renamed dir's contents are reachable by the new path; the old path is gone.
        r.append(sorted(os.listdir(J(b, "d2", "inner"))))
        r.append(os.path.lexists(J(b, "d1")))
        os.rename(J(b, "d2"), J(b, "d9"))
        r.append(read_file(J(b, "d9", "inner", "moved")))
        return r

    r = m.twin().same(op)
    assert r == [("ok", None), b"A", False, b"C", ("ok", None), b"F", ("err", "ENOTEMPTY"),
                 ("err", "EISDIR"), ("err", "ENOTDIR"), ("ok", None), ("err", "EINVAL"),
                 ("err", "ENOENT"), ("ok", None), ("ok", None), True, 2, ["f", "moved"],
                 False, b"A"], r
    check_backing(m)


def test_rename_noreplace(m):
    def op(b):
        write_file(J(b, "a"), "A")
        write_file(J(b, "b"), "B")
        r = [outcome(h.renameat2, J(b, "a"), J(b, "b"), h.RENAME_NOREPLACE),
             read_file(J(b, "a")), read_file(J(b, "b")),
             outcome(h.renameat2, J(b, "a"), J(b, "c"), h.RENAME_NOREPLACE),
             os.path.lexists(J(b, "a")), read_file(J(b, "c"))]
        return [x if not (isinstance(x, tuple) and x[0] == "ok") else ("ok", 0) for x in r]

    r = m.twin().same(op)
    assert r == [("err", "EEXIST"), b"A", b"B", ("ok", 0), False, b"A"], r
    check_backing(m)


def test_rename_exchange(m):
    def op(b):
        write_file(J(b, "a"), "A")
        write_file(J(b, "b"), "B")
        os.mkdir(J(b, "d"))
        write_file(J(b, "d", "in"), "IN")
        ok = lambda x: x if x[0] == "err" else ("ok", 0)  # noqa: E731
        r = [ok(outcome(h.renameat2, J(b, "a"), J(b, "b"), h.RENAME_EXCHANGE)),
             read_file(J(b, "a")), read_file(J(b, "b")),
             ok(outcome(h.renameat2, J(b, "a"), J(b, "d"), h.RENAME_EXCHANGE)),  # file <-> dir
             read_file(J(b, "d")), read_file(J(b, "a", "in")),
             ok(outcome(h.renameat2, J(b, "b"), J(b, "missing"), h.RENAME_EXCHANGE)),
             ok(outcome(h.renameat2, J(b, "b"), J(b, "d"),
                        h.RENAME_EXCHANGE | h.RENAME_NOREPLACE))]
        return r

    r = m.twin().same(op)
    assert r == [("ok", 0), b"B", b"A", ("ok", 0), b"B", b"IN", ("err", "ENOENT"),
                 ("err", "EINVAL")], r
    check_backing(m)


def test_hardlink(m):
    def op(b):
        f, g = J(b, "f"), J(b, "g")
        write_file(f, "data")
        os.mkdir(J(b, "dir"))
        os.link(f, g)
        sf, sg = os.stat(f), os.stat(g)
        r = [sf.st_nlink, sg.st_nlink, sf.st_ino == sg.st_ino]
        with open(g, "ab") as fh:
            fh.write(b"+more")
        r.append(read_file(f))
        r += [outcome(os.link, f, g), outcome(os.link, J(b, "dir"), J(b, "dl")),
              outcome(os.link, J(b, "missing"), J(b, "x"))]
        for i in range(3):
            os.link(f, J(b, f"h{i}"))
        r.append(os.stat(g).st_nlink)
        os.unlink(f)
        r += [os.stat(g).st_nlink, os.stat(J(b, "h2")).st_nlink, read_file(J(b, "h1"))]
        return r

    r = m.twin().same(op)
    assert r == [2, 2, True, b"data+more", ("err", "EEXIST"), ("err", "EPERM"),
                 ("err", "ENOENT"), 5, 4, 4, b"data+more"], r
    assert os.stat(m.s("g")).st_nlink == 4
    assert os.stat(m.s("g")).st_ino == os.stat(m.s("h0")).st_ino
    check_backing(m)


def test_symlink_readlink(m):
    long_target = "/".join(["abcdefghi"] * 400)  # 3999 bytes

    def op(b):
        write_file(J(b, "f"), "content")
        os.symlink("target/rel", J(b, "l1"))
        os.symlink("/abs/path", J(b, "l2"))
        os.symlink("f", J(b, "l3"))
        os.symlink(long_target, J(b, "l4"))
        os.symlink("loop", J(b, "loop"))
        r = [os.readlink(J(b, n)) for n in ("l1", "l2", "l3")]
        r.append(os.readlink(J(b, "l4")) == long_target)
        r.append([stat.S_ISLNK(os.lstat(J(b, n)).st_mode) for n in ("l1", "l2", "l3", "l4")])
        r.append(os.lstat(J(b, "l1")).st_size)
        r.append(read_file(J(b, "l3")))
        r += [outcome(os.stat, J(b, "l1")), outcome(os.readlink, J(b, "f")),
              outcome(os.symlink, "x", J(b, "l1")), outcome(os.stat, J(b, "loop")),
              outcome(opn, J(b, "l3"), os.O_RDONLY | os.O_NOFOLLOW)]
        return r

    r = m.twin().same(op)
    assert r == ["target/rel", "/abs/path", "f", True, [True] * 4, 10, b"content",
                 ("err", "ENOENT"), ("err", "EINVAL"), ("err", "EEXIST"), ("err", "ELOOP"),
                 ("err", "ELOOP")], r
    assert os.readlink(m.s("l4")) == long_target
    check_backing(m)


def test_mknod_fifo(m):
    def op(b):
        r = []
        os.mkfifo(J(b, "fifo"), 0o640)
        st = os.lstat(J(b, "fifo"))
        r += [stat.S_ISFIFO(st.st_mode), oct(stat.S_IMODE(st.st_mode))]
        os.mknod(J(b, "reg"), stat.S_IFREG | 0o600)
        st = os.lstat(J(b, "reg"))
        r += [stat.S_ISREG(st.st_mode), st.st_size, oct(stat.S_IMODE(st.st_mode))]
        os.mknod(J(b, "chr"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        st = os.lstat(J(b, "chr"))
        r += [stat.S_ISCHR(st.st_mode), st.st_rdev == os.makedev(1, 3)]
        os.mknod(J(b, "sock"), stat.S_IFSOCK | 0o600)
        r.append(stat.S_ISSOCK(os.lstat(J(b, "sock")).st_mode))
        r.append(outcome(os.mkfifo, J(b, "fifo")))
        # The FIFO works through the mount (non-blocking so a bug cannot hang the test).
        fd = os.open(J(b, "fifo"), os.O_RDWR | os.O_NONBLOCK)
        os.write(fd, b"ping")
        r.append(os.read(fd, 10))
        os.close(fd)
        return r

    r = m.twin().same(op)
    assert r == [True, "0o640", True, 0, "0o600", True, True, True, ("err", "EEXIST"),
                 b"ping"], r
    assert stat.S_ISFIFO(os.lstat(m.s("fifo")).st_mode)
    assert os.lstat(m.s("chr")).st_rdev == os.makedev(1, 3)
    check_backing(m)


def test_statfs(m):
    a, b = os.statvfs(m.mnt), os.statvfs(m.src)
    total = b.f_blocks * b.f_frsize
    assert a.f_blocks * a.f_frsize == total, (a, b)
    assert abs(a.f_bavail * a.f_frsize - b.f_bavail * b.f_frsize) <= max(64 << 20, total // 100), (a, b)
    assert abs(a.f_bfree * a.f_frsize - b.f_bfree * b.f_frsize) <= max(64 << 20, total // 100), (a, b)
    assert a.f_files == b.f_files, (a, b)
    assert abs(a.f_ffree - b.f_ffree) <= 10000, (a, b)
    assert a.f_namemax == b.f_namemax, (a, b)
    assert a.f_bsize > 0 and a.f_frsize > 0


def test_access(m):
    modes = {"m000": 0o000, "m400": 0o400, "m200": 0o200, "m100": 0o100, "m755": 0o755,
             "m644": 0o644, "m606": 0o606}
    checks = [os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK]

    def results(b):
        return [[os.access(J(b, n), c) for c in checks] for n in sorted(modes)] + \
               [[os.access(J(b, "private", "f"), c) for c in checks],
                [os.access(J(b, "missing"), os.F_OK)]]

    def op(b):
        for n, md in modes.items():
            write_file(J(b, n), "x")
            os.chmod(J(b, n), md)
        os.mkdir(J(b, "private"), 0o700)
        write_file(J(b, "private", "f"), "x")
        return results(b), as_user(results, b)

    as_root, as_usr = m.twin().same(op)
    assert as_root[sorted(modes).index("m000")] == [True, True, True, False, True], as_root
    assert as_usr[sorted(modes).index("m644")] == [True, True, False, False, False], as_usr
    assert as_usr[sorted(modes).index("m606")] == [True, True, True, False, True], as_usr
    assert as_usr[-2] == [False] * 5, as_usr  # cannot search the 0700 dir


def test_xattrs(m):
    big = bytes(range(256)) * 8  # 2 KiB: fits an ext4 xattr block

    def op(b):
        p = J(b, "x")
        write_file(p, "x")
        os.mkdir(J(b, "d"))
        os.symlink("x", J(b, "l"))
        users = lambda path: sorted(n for n in os.listxattr(path) if n.startswith("user."))  # noqa: E731
        os.setxattr(p, "user.a", b"1")
        os.setxattr(p, "user.big", big)
        os.setxattr(p, "user.bin", b"\0\xff\0")
        os.setxattr(p, "user.empty", b"")
        r = [users(p), os.getxattr(p, "user.big") == big, os.getxattr(p, "user.bin"),
             os.getxattr(p, "user.empty"),
             outcome(os.getxattr, p, "user.missing"),
             outcome(os.setxattr, p, "user.a", b"2", os.XATTR_CREATE),
             outcome(os.setxattr, p, "user.new", b"2", os.XATTR_REPLACE)]
        os.setxattr(p, "user.a", b"22", os.XATTR_REPLACE)
        r.append(os.getxattr(p, "user.a"))
        os.removexattr(p, "user.a")
        r += [outcome(os.removexattr, p, "user.a"), outcome(os.getxattr, p, "user.a"), users(p)]
        fd = os.open(p, os.O_RDONLY)
        os.setxattr(fd, "user.viafd", b"fd")
        r.append(os.getxattr(fd, "user.viafd"))
        os.close(fd)
        os.setxattr(J(b, "d"), "user.dir", b"D")
        r += [os.getxattr(J(b, "d"), "user.dir"),
              outcome(os.setxattr, J(b, "l"), "user.x", b"1", follow_symlinks=False),
              outcome(os.setxattr, p, "bogus.ns", b"1"),
              outcome(os.getxattr, J(b, "missing"), "user.a")]
        return r

    r = m.twin().same(op)
    assert r == [["user.a", "user.big", "user.bin", "user.empty"], True, b"\0\xff\0", b"",
                 ("err", "ENODATA"), ("err", "EEXIST"), ("err", "ENODATA"), b"22",
                 ("err", "ENODATA"), ("err", "ENODATA"), ["user.big", "user.bin", "user.empty"],
                 b"fd", b"D", ("err", "EPERM"), ("err", h.errname(errno.EOPNOTSUPP)), ("err", "ENOENT")], r
    assert h.user_xattrs(m.s("x")) == h.user_xattrs(m.m("x"))
    assert h.user_xattrs(m.s("x"))["user.big"] == big
    check_backing(m)


def test_fallocate_and_punch_hole(m):
    mib = 1 << 20
    pattern = rand_bytes(mib, 4)

    def op(b):
        p = J(b, "fa")
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        os.posix_fallocate(fd, 0, mib)
        r = [os.fstat(fd).st_size, os.pread(fd, mib, 0) == b"\0" * mib]
        os.pwrite(fd, pattern, 0)
        os.fsync(fd)
        h.fallocate(fd, h.FALLOC_FL_PUNCH_HOLE | h.FALLOC_FL_KEEP_SIZE, 4 * 4096, 8 * 4096)
        data = os.pread(fd, mib, 0)
        r += [os.fstat(fd).st_size, data[4 * 4096:12 * 4096] == b"\0" * 8 * 4096,
              data[:4 * 4096] == pattern[:4 * 4096], data[12 * 4096:] == pattern[12 * 4096:]]
        h.fallocate(fd, h.FALLOC_FL_KEEP_SIZE, 2 * mib, mib)  # beyond EOF, size unchanged
        r.append(os.fstat(fd).st_size)
        h.fallocate(fd, 0, mib, mib)
        r.append(os.fstat(fd).st_size)
        r.append(outcome(h.fallocate, fd, h.FALLOC_FL_PUNCH_HOLE, 0, 4096))  # needs KEEP_SIZE
        os.close(fd)
        return r, h.sha256_file(p)

    r, digest = m.twin().same(op)
    assert r == [mib, True, mib, True, True, True, mib, 2 * mib, ("err", h.errname(errno.EOPNOTSUPP))], r
    assert h.sha256_file(m.s("fa")) == digest
    # The hole is real in the backing file: fewer blocks than the fully written 2 MiB.
    assert os.stat(m.s("fa")).st_blocks * 512 < 2 * mib + mib, os.stat(m.s("fa"))


def test_seek_data_hole(m):
    mib = 1 << 20

    def op(b):
        p = J(b, "sparse")
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        os.pwrite(fd, b"a" * 4096, 0)
        os.pwrite(fd, b"b" * 4096, mib)
        os.ftruncate(fd, 2 * mib)
        # Flushed first: with a kernel write-back cache, unflushed pages are invisible to
        # the server's lseek (FUSE_LSEEK does not flush), which is a kernel limitation.
        os.fsync(fd)
        r = [os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE),
             os.lseek(fd, 4096, os.SEEK_DATA), os.lseek(fd, mib, os.SEEK_HOLE),
             os.lseek(fd, mib + 4096, os.SEEK_HOLE),
             outcome(os.lseek, fd, mib + 8192, os.SEEK_DATA),
             outcome(os.lseek, fd, 3 * mib, os.SEEK_HOLE)]
        os.close(fd)
        return r

    r = m.twin().same(op)
    assert r == [0, 4096, mib, mib + 4096, mib + 4096, ("err", "ENXIO"), ("err", "ENXIO")], r


def test_copy_file_range(m):
    data = rand_bytes(3 << 20, 5)

    def copy_all(fi, fo, count, off_in, off_out):
        done = 0
        while done < count:
            n = os.copy_file_range(fi, fo, count - done, off_in + done, off_out + done)
            if n == 0:
                break
            done += n
        return done

    def op(b):
        write_file(J(b, "src"), data)
        write_file(J(b, "dst"), b"z" * 100)
        fi = os.open(J(b, "src"), os.O_RDONLY)
        fo = os.open(J(b, "dst"), os.O_RDWR)
        r = [copy_all(fi, fo, 2 << 20, 1000, 50)]  # overlaps existing data, extends file
        r.append(copy_all(fi, fo, 100, len(data) - 40, 0))  # short: only 40 bytes left
        os.close(fi)
        os.close(fo)
        return r, h.sha256_file(J(b, "dst")), os.stat(J(b, "dst")).st_size

    r, digest, size = m.twin().same(op)
    assert r == [2 << 20, 40] and size == 50 + (2 << 20), (r, size)
    want = data[-40:] + b"z" * 10 + data[1000:1000 + (2 << 20)]
    assert read_file(m.m("dst")) == want
    assert h.sha256_file(m.s("dst")) == digest


# ---------------------------------------------------------------- locks

_FLOCK_CHILD = r"""
import errno, fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, int(sys.argv[2]))
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


def _flock_child(path, op):
    r = h.run([sys.executable, "-c", _FLOCK_CHILD, path, str(op)], timeout=30)
    return r.out.strip()


def test_flock(m):
    EX_NB, SH_NB = fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_SH | fcntl.LOCK_NB

    def op(b):
        p = J(b, "lock")
        write_file(p, "x")
        fd = os.open(p, os.O_RDWR)
        fd2 = os.open(p, os.O_RDWR)  # flock is per open file description
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = [_flock_child(p, EX_NB), _flock_child(p, SH_NB),
             outcome(fcntl.flock, fd2, EX_NB)]
        fcntl.flock(fd, fcntl.LOCK_UN)
        r.append(_flock_child(p, EX_NB))
        fcntl.flock(fd, fcntl.LOCK_SH)
        r += [_flock_child(p, SH_NB), _flock_child(p, EX_NB)]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd2)
        # A blocked LOCK_EX waiter gets the lock once the holder releases it.
        fcntl.flock(fd, fcntl.LOCK_EX)
        w = h.spawn([sys.executable, "-c", _FLOCK_CHILD, p, str(fcntl.LOCK_EX)],
                    stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)
            r.append(w.poll())  # still waiting (None): the lock was not wrongly granted
            fcntl.flock(fd, fcntl.LOCK_UN)
            out, _ = w.communicate(timeout=30)
            r.append(out.strip())
        finally:
            h.reap(w)
        os.close(fd)
        return r

    r = m.twin().same(op)
    assert r == ["EAGAIN", "EAGAIN", ("err", "EAGAIN"), "ok", "ok", "EAGAIN", None, "ok"], r


def test_flock_read_only_opens(m):
    # Plain read-only opens of a file share one backing descriptor inside efused; flock
    # must still see two open file descriptions, and closing one must drop only its lock.
    EX_NB, SH_NB = fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_SH | fcntl.LOCK_NB

    def op(b):
        p = J(b, "lock")
        write_file(p, "x")
        a, c = os.open(p, os.O_RDONLY), os.open(p, os.O_RDONLY)
        r = [outcome(fcntl.flock, a, EX_NB), outcome(fcntl.flock, c, EX_NB),
             outcome(fcntl.flock, c, SH_NB), _flock_child(p, SH_NB)]
        os.close(a)  # its lock goes with it
        r += [outcome(fcntl.flock, c, EX_NB), _flock_child(p, SH_NB)]
        fcntl.flock(c, fcntl.LOCK_UN)
        r.append(_flock_child(p, EX_NB))
        os.close(c)
        return r

    r = m.twin().same(op)
    assert r == [("ok", None), ("err", "EAGAIN"), ("err", "EAGAIN"), "EAGAIN",
                 ("ok", None), "EAGAIN", "ok"], r


def test_flock_free_as_soon_as_close_returns(m):
    # The kernel drops a server-side flock with the RELEASE it sends after close() has
    # returned; a lock taken right after the close must still find it free, as natively.
    EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB

    def op(b):
        p = J(b, "lock")
        write_file(p, "x")
        failed = []
        for i in range(300):
            flags = os.O_RDONLY if i % 2 else os.O_RDWR  # shared and private handles
            a, c = os.open(p, flags), os.open(p, flags)
            fcntl.flock(a, fcntl.LOCK_EX)
            os.close(a)
            failed.append(outcome(fcntl.flock, c, EX_NB))
            os.close(c)
        return sorted(set(failed), key=str)

    assert m.twin().same(op) == [("ok", None)]


def test_flock_kept_while_a_dup_is_open(m):
    # Closing one of two descriptors of a locked open file description keeps the flock
    # (the kernel sends FLUSH but no RELEASE); closing the last drops it.
    EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB

    def op(b):
        p = J(b, "lock")
        write_file(p, "x")
        a = os.open(p, os.O_RDWR)
        fcntl.flock(a, fcntl.LOCK_EX)
        d = os.dup(a)
        os.close(a)
        r = [_flock_child(p, EX_NB), _flock_child(p, EX_NB)]
        os.close(d)
        r.append(_flock_child(p, EX_NB))
        return r

    assert m.twin().same(op) == ["EAGAIN", "EAGAIN", "ok"]


_LOCK_CHILD = r"""
import errno, fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
out = []
for spec in sys.argv[2:]:
    cmd, typ, start, ln = spec.split(":")
    typ = {"r": fcntl.F_RDLCK, "w": fcntl.F_WRLCK, "u": fcntl.F_UNLCK}[typ]
    arg = struct.pack("hhqqi4x", typ, os.SEEK_SET, int(start), int(ln), 0)
    c = {"set": fcntl.F_SETLK, "get": fcntl.F_GETLK, "wait": fcntl.F_SETLKW}[cmd]
    try:
        res = fcntl.fcntl(fd, c, arg)
        t, w, s, l, pid = struct.unpack("hhqqi4x", res)
        if cmd == "get":
            name = {fcntl.F_RDLCK: "r", fcntl.F_WRLCK: "w", fcntl.F_UNLCK: "u"}[t]
            who = "parent" if pid == os.getppid() else str(pid)
            out.append(f"{name}:{s}:{l}:{who}" if name != "u" else "u")
        else:
            out.append("ok")
    except OSError as e:
        out.append(errno.errorcode[e.errno])
print(" ".join(out))
"""


def _lock_child(path, *specs):
    return h.run([sys.executable, "-c", _LOCK_CHILD, path, *specs], timeout=30).out.split()


def test_posix_locks(m):
    def op(b):
        p = J(b, "plock")
        write_file(p, b"x" * 100)
        fd = os.open(p, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)  # bytes 0..9
        r = _lock_child(p, "set:w:5:10", "set:w:10:10", "set:r:0:1", "get:w:0:100",
                        "get:w:20:10")
        fcntl.lockf(fd, fcntl.LOCK_UN, 10, 0)
        r += _lock_child(p, "set:w:0:10", "get:w:0:100")
        fcntl.lockf(fd, fcntl.LOCK_SH, 10, 50)  # bytes 50..59 shared
        r += _lock_child(p, "set:r:50:10", "set:w:55:1", "get:w:0:0")
        fcntl.lockf(fd, fcntl.LOCK_EX, 0, 0)  # upgrade to the whole file
        w = h.spawn([sys.executable, "-c", _LOCK_CHILD, p, "wait:w:0:1"],
                    stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)
            r.append(w.poll())  # F_SETLKW is still waiting
            fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
            out, _ = w.communicate(timeout=30)
            r.append(out.strip())
        finally:
            h.reap(w)
        os.close(fd)
        return r

    r = m.twin().same(op)
    assert r == ["EAGAIN", "ok", "EAGAIN", "w:0:10:parent", "u", "ok", "u", "ok", "EAGAIN",
                 "r:50:10:parent", None, "ok"], r


def test_posix_locks_belong_to_the_process(m):
    # POSIX record locks are owned by the process, not by the open file description:
    # a second descriptor of the same process does not conflict, and closing ANY descriptor
    # of the file drops all of the process's locks on it.
    def op(b):
        p = J(b, "plock2")
        write_file(p, b"x" * 100)
        fd1 = os.open(p, os.O_RDWR)
        fd2 = os.open(p, os.O_RDWR)
        fcntl.lockf(fd1, fcntl.LOCK_EX, 10, 0)
        r = [outcome(fcntl.lockf, fd2, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 5)]  # same owner
        r += _lock_child(p, "set:w:0:1", "get:w:0:100")
        os.close(fd2)  # drops every lock this process holds on the file
        r += _lock_child(p, "set:w:0:1", "get:w:0:100")
        fd3 = os.open(p, os.O_RDWR)
        fcntl.lockf(fd3, fcntl.LOCK_EX, 0, 0)
        r += _lock_child(p, "set:r:99:1")
        os.close(fd1)
        r += _lock_child(p, "set:r:99:1")
        os.close(fd3)
        return r

    r = m.twin().same(op)
    assert r == [("ok", None), "EAGAIN", "w:0:10:parent", "ok", "u", "EAGAIN", "ok"], r


# ---------------------------------------------------------------- directories

ODD_NAMES = ["with space", "  leading and trailing  ", "ünïcödé", "日本語のファイル",
             "emoji 😀", "new\nline", "-dash", ".hidden", "..dots", "tab\there", "a" * 255,
             "quote'\"", "back\\slash", "*?[glob]", "%s%n"]


def _scan(b):
    return sorted((e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False),
                   e.is_symlink()) for e in os.scandir(b))


def test_readdir_names_and_types(m):
    def op(b):
        for i, n in enumerate(ODD_NAMES):
            write_file(J(b, n), n.encode())
        os.mkdir(J(b, "dir x"))
        os.symlink("ünïcödé", J(b, "link ü"))
        os.mkfifo(J(b, "fifo"))
        # A name that is not valid UTF-8 (legal on Linux).
        os.close(os.open(os.fsencode(b) + b"/raw\xff\xfe", os.O_CREAT | os.O_WRONLY, 0o644))
        return _scan(b), [read_file(J(b, n)) for n in ODD_NAMES], sorted(os.listdir(os.fsencode(b)))

    scan, contents, raw = m.twin().same(op)
    assert contents == [n.encode() for n in ODD_NAMES]
    assert b"raw\xff\xfe" in raw
    assert len(scan) == len(ODD_NAMES) + 4
    h.assert_listing_equal(m.mnt, m.src)
    assert _scan(m.mnt) == _scan(m.src)
    check_backing(m)


def test_readdir_2000_entries(m):
    n = 2000
    os.mkdir(m.m("via-mount"))
    for i in range(n):
        write_file(m.m("via-mount", f"file-{i:05d}-{'x' * (i % 50)}"), b"y" * (i % 7))
    want = sorted(f"file-{i:05d}-{'x' * (i % 50)}" for i in range(n))
    assert h.assert_listing_equal(m.m("via-mount"), m.s("via-mount")) == want

    # Created in the backing dir only, then listed through the mount for the first time.
    os.mkdir(m.s("via-backing"))
    for i in range(n):
        write_file(m.s("via-backing", f"b{i}"), b"z" * (i % 13))
    got = h.assert_listing_equal(m.m("via-backing"), m.s("via-backing"))
    assert got == sorted(f"b{i}" for i in range(n))
    sizes = {e.name: e.stat(follow_symlinks=False).st_size for e in os.scandir(m.m("via-backing"))}
    assert sizes == {f"b{i}": i % 13 for i in range(n)}

    # Remove every other entry through the mount: listing shows exactly the rest.
    for i in range(0, n, 2):
        os.unlink(m.m("via-mount", f"file-{i:05d}-{'x' * (i % 50)}"))
    left = h.assert_listing_equal(m.m("via-mount"), m.s("via-mount"))
    assert left == sorted(f"file-{i:05d}-{'x' * (i % 50)}" for i in range(1, n, 2))
    # getdents in small pieces (a fresh listing per entry batch) must not repeat or skip.
    with os.scandir(m.m("via-mount")) as it:
        names = [e.name for e in it]
    assert len(names) == len(set(names)) == n // 2


# ---------------------------------------------------------------- errors

def test_errnos(m):
    def op(b):
        f, d = J(b, "file"), J(b, "dir")
        write_file(f, "x")
        os.mkdir(d)
        long_, ok255 = "n" * 256, "n" * 255
        return [
            outcome(opn, J(b, "missing"), os.O_RDONLY),
            outcome(os.stat, J(b, "missing", "x")),
            outcome(os.listdir, J(b, "missing")),
            outcome(opn, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY),
            outcome(os.mkdir, d),
            outcome(os.mkdir, f),
            outcome(os.symlink, "x", f),
            outcome(os.mkfifo, d),
            outcome(os.stat, J(f, "x")),
            outcome(opn, J(f, "x"), os.O_CREAT | os.O_WRONLY),
            outcome(os.listdir, f),
            outcome(opn, f, os.O_RDONLY | os.O_DIRECTORY),
            outcome(opn, d, os.O_WRONLY),
            outcome(opn, d, os.O_RDWR),
            outcome(opn, J(b, long_), os.O_CREAT | os.O_WRONLY),
            outcome(os.mkdir, J(b, long_)),
            outcome(os.stat, J(b, long_)),
            outcome(os.rename, f, J(b, long_)),
            outcome(os.symlink, "x", J(b, long_)),
            outcome(os.link, f, J(b, long_)),
            outcome(opn, J(b, ok255), os.O_CREAT | os.O_WRONLY),
            outcome(os.rmdir, J(d, ".")),
            outcome(os.rename, d, J(d, "sub")),
            outcome(os.truncate, d, 0),
            outcome(os.truncate, f, -1),
        ]

    r = m.twin().same(op)
    want = ["ENOENT", "ENOENT", "ENOENT", "EEXIST", "EEXIST", "EEXIST", "EEXIST", "EEXIST",
            "ENOTDIR", "ENOTDIR", "ENOTDIR", "ENOTDIR", "EISDIR", "EISDIR", "ENAMETOOLONG",
            "ENAMETOOLONG", "ENAMETOOLONG", "ENAMETOOLONG", "ENAMETOOLONG", "ENAMETOOLONG",
            None, "EINVAL", "EINVAL", "EISDIR", "EINVAL"]
    got = [x[1] if x[0] == "err" else None for x in r]
    assert got == want, list(zip(got, want))
    check_backing(m)


# ---------------------------------------------------------------- handles, not paths

@h.backing_dir("renames and removals in the backing directory behind efused's back")
def test_open_file_survives_backing_rename(m):
    write_file(m.m("f"), "hello")
    fd = os.open(m.m("f"), os.O_RDWR)
    try:
        os.mkdir(m.s("sub"))
        os.rename(m.s("f"), m.s("sub", "moved"))  # behind the server's back
        os.pwrite(fd, b"WORLD", 5)
        os.fsync(fd)
        assert os.pread(fd, 100, 0) == b"helloWORLD"
        assert os.fstat(fd).st_size == 10
        assert read_file(m.s("sub", "moved")) == b"helloWORLD"
        assert read_file(m.m("sub", "moved")) == b"helloWORLD"
    finally:
        os.close(fd)

    # Unlinked in the backing dir while open: the descriptor still reads the data.
    write_file(m.m("g"), "keep me")
    fd = os.open(m.m("g"), os.O_RDONLY)
    try:
        os.unlink(m.s("g"))
        assert os.pread(fd, 100, 0) == b"keep me"
    finally:
        os.close(fd)

    # A directory renamed in the backing tree: lookups under the (kernel-cached) directory
    # and openat() relative to an open directory fd resolve by inode, not by the old path.
    os.mkdir(m.m("d"))
    write_file(m.m("d", "a"), "A")
    dfd = os.open(m.m("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(m.s("d"), m.s("d-renamed"))
        write_file(m.s("d-renamed", "new"), "NEW")

        def opened():
            # A name made behind efused's back shows once the watcher reported it: on the
            # kernel module tier "d", made through the mount, is a directory whose names
            # efused knows, and a LOOKUP of one it lacks is answered in the kernel until
            # then (README, Kernel module tier: negative LOOKUPs of new names).
            try:
                return os.open("new", os.O_RDONLY, dir_fd=dfd)
            except FileNotFoundError:
                return None

        fd = h.wait_until(opened, 30, what="the name made in the backing directory")
        try:
            assert os.read(fd, 10) == b"NEW"
        finally:
            os.close(fd)
        fd = os.open("created", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd)
        os.write(fd, b"C")
        os.close(fd)
        assert read_file(m.s("d-renamed", "created")) == b"C"
        assert sorted(os.listdir(dfd)) == ["a", "created", "new"]
    finally:
        os.close(dfd)


# ---------------------------------------------------------------- credentials

def test_write_and_truncate_clear_setid_bits(m):
    # A write, truncate or O_TRUNC open by someone without CAP_FSETID clears set-user-ID and
    # (group-executable) set-group-ID bits, as natively; root keeps them. efused negotiates
    # FUSE_HANDLE_KILLPRIV_V2, so it does this itself, also for files it would otherwise
    # open with kernel passthrough.
    # "held": a large file already open read-only (so efused chose kernel passthrough for
    # it) when the user opens it for writing.
    def op(b):
        names = {"w": 0o6755, "t": 0o4755, "o": 0o6755, "noexec": 0o2644, "root": 0o4755,
                 "held": 0o4755}
        for n, mode in names.items():
            write_file(J(b, n), "0123456789" * (20000 if n == "held" else 1))
            if n != "root":
                os.chown(J(b, n), h.USER_UID, h.USER_GID)
            os.chmod(J(b, n), mode)

        def child(b):
            with open(J(b, "w"), "r+b") as f:
                f.write(b"x")
            os.truncate(J(b, "t"), 3)
            os.close(os.open(J(b, "o"), os.O_WRONLY | os.O_TRUNC))
            with open(J(b, "noexec"), "r+b") as f:
                f.write(b"x")
            with open(J(b, "held"), "r+b") as f:
                f.write(b"x")
            return True

        with open(J(b, "held"), "rb") as held:
            held.read(1)
            as_user(child, b)
        with open(J(b, "root"), "r+b") as f:  # root (CAP_FSETID) keeps them
            f.write(b"x")
        return {n: mode_of(J(b, n)) for n in names}

    res = m.twin().same(op)
    assert res == {"w": "0o755", "t": "0o755", "o": "0o755", "noexec": "0o2644",
                   "root": "0o4755", "held": "0o755"}, res
    for n, mode in res.items():  # the backing files agree
        assert oct(os.stat(m.s(n)).st_mode & 0o7777) == mode, n


def test_nonroot_creates_owned_by_caller(m):
    def make(b):
        os.mkdir(J(b, "pub"))
        os.chmod(J(b, "pub"), 0o777)
        os.mkdir(J(b, "sg"))
        os.chown(J(b, "sg"), 0, 4242)
        os.chmod(J(b, "sg"), 0o2777)

        def child(b):
            pub = J(b, "pub")
            os.umask(0o022)
            write_file(J(pub, "file"), "u", mode=0o666)
            os.mkdir(J(pub, "dir"), 0o777)
            os.symlink("file", J(pub, "sym"))
            os.mkfifo(J(pub, "fifo"), 0o666)
            os.link(J(pub, "file"), J(pub, "hard"))
            os.umask(0o077)
            write_file(J(pub, "private"), "p", mode=0o666)
            os.mkdir(J(pub, "privdir"), 0o777)
            os.umask(0o022)
            write_file(J(b, "sg", "file"), "g", mode=0o666)
            os.mkdir(J(b, "sg", "dir"))
            return True

        as_user(child, b)
        res = {}
        for d in ("pub", "sg"):
            for n in sorted(os.listdir(J(b, d))):
                st = os.lstat(J(b, d, n))
                res[f"{d}/{n}"] = (st.st_uid, st.st_gid, oct(st.st_mode))
        return res

    res = m.twin().same(make)
    u, g = h.USER_UID, h.USER_GID
    for name in ("file", "dir", "sym", "fifo", "hard", "private", "privdir"):
        assert res[f"pub/{name}"][:2] == (u, g), (name, res[f"pub/{name}"])
    assert res["pub/file"][2] == oct(stat.S_IFREG | 0o644)
    assert res["pub/private"][2] == oct(stat.S_IFREG | 0o600)
    assert res["pub/privdir"][2] == oct(stat.S_IFDIR | 0o700)
    assert res["sg/file"][:2] == (u, 4242)
    assert res["sg/dir"][:2] == (u, 4242) and res["sg/dir"][2] == oct(stat.S_IFDIR | 0o2755)
    # And the backing store agrees with what the mount reports.
    for key, (uid, gid, _) in res.items():
        st = os.lstat(m.s(*key.split("/")))
        assert (st.st_uid, st.st_gid) == (uid, gid), (key, st)
    check_backing(m)


def test_supplementary_group_access(m):
    # Access granted only through a supplementary group must work for every operation,
    # including creating, renaming and removing entries in a group-writable directory.
    def op(b):
        d = J(b, "team")
        os.mkdir(d)
        os.chown(d, 0, 4242)
        os.chmod(d, 0o770)
        write_file(J(d, "shared"), "team data")
        os.chown(J(d, "shared"), 0, 4242)
        os.chmod(J(d, "shared"), 0o660)

        def child(d):
            write_file(J(d, "new"), "from member")
            os.mkdir(J(d, "newdir"))
            os.rename(J(d, "new"), J(d, "renamed"))
            os.symlink("renamed", J(d, "link"))
            with open(J(d, "shared"), "ab") as f:
                f.write(b"+appended")
            os.unlink(J(d, "link"))
            res = sorted(os.listdir(d)), read_file(J(d, "shared"))
            st = os.stat(J(d, "renamed"))
            return res, (st.st_uid, st.st_gid)

        in_group = as_user(child, d, groups=(4242,))
        outsider = outcome(as_user, child, d)  # same user without the group
        return in_group, outsider

    (listing, owner), outsider = m.twin().same(op)
    assert listing == (["newdir", "renamed", "shared"], b"team data+appended"), listing
    assert owner == (h.USER_UID, h.USER_GID), owner
    assert outsider == ("err", "EACCES"), outsider
    check_backing(m)


def test_posix_acl(m):
    # ACLs set through the mount are stored and enforced like natively: a named-user entry
    # grants access the mode bits alone would deny, and a default ACL is inherited.
    def op(b):
        p = J(b, "f")
        write_file(p, "x")
        os.chmod(p, 0o600)
        run = h.run
        run(["setfacl", "-m", f"u:{h.USER_UID}:rw", p])
        d = J(b, "d")
        os.mkdir(d, 0o700)
        run(["setfacl", "-m", f"u:{h.USER_UID}:rwx", "-d", "-m", f"u:{h.USER_UID}:rw", d])

        def child(b):
            with open(J(b, "f"), "ab") as f:
                f.write(b"+user")
            write_file(J(b, "d", "created"), "by user", mode=0o640)
            return read_file(J(b, "f"))

        got = outcome(as_user, child, b)
        acls = [run(["getfacl", "-c", "-n", "-p", x]).out for x in (p, d, J(d, "created"))
                if os.path.lexists(x)]
        return got, acls, mode_of(p)

    got, acls, mode = m.twin().same(op)
    assert got == ("ok", b"x+user"), got
    assert f"user:{h.USER_UID}:rw-" in acls[0] and len(acls) == 3, acls
    h.assert_same_tree(m.mnt, m.src, dir_size=True)


def acl_access(uid, perms):
    """system.posix_acl_access's value: the owner rwx, user `uid` with `perms`, the group
    rwx, mask rwx, others nothing (struct posix_acl_xattr_header and entries, version 2)."""
    import struct
    entries = [(0x01, 7, 0xFFFFFFFF), (0x02, perms, uid), (0x04, 7, 0xFFFFFFFF),
               (0x10, 7, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_posix_acl_clears_sgid_unless_in_group(m):
    # Setting an access ACL clears the set-group-ID bit when the caller (here the owner) is
    # neither in the file's group nor has CAP_FSETID, as posix_acl_update_mode does natively
    # (through FUSE: FUSE_SETXATTR_ACL_KILL_SGID); a caller in the group keeps it.
    def op(b):
        modes = {}
        for name, groups in (("outsider", ()), ("member", (4243,))):
            p = J(b, name)
            write_file(p, "x")
            os.chown(p, h.USER_UID, 4243)
            os.chmod(p, 0o2770)
            got = outcome(as_user, os.setxattr, p, "system.posix_acl_access",
                          acl_access(h.USER_UID + 1, 6), groups=groups)
            modes[name] = (got, mode_of(p))
        return modes

    modes = m.twin().same(op)
    assert modes == {"outsider": (("ok", None), "0o770"),
                     "member": (("ok", None), "0o2770")}, modes
    check_backing(m)


def test_permission_denied_for_other_user(m):
    def op(b):
        write_file(J(b, "rootfile"), "root data", mode=0o644)
        os.chmod(J(b, "rootfile"), 0o644)
        os.mkdir(J(b, "ro"), 0o755)
        write_file(J(b, "ro", "inner"), "x")
        os.mkdir(J(b, "closed"), 0o700)
        write_file(J(b, "mine"), "m")
        os.chown(J(b, "mine"), h.USER_UID, h.USER_GID)
        os.chmod(J(b, "mine"), 0o600)

        def child(b):
            f = J(b, "rootfile")
            return [
                outcome(opn, f, os.O_WRONLY),
                outcome(read_file, f),
                outcome(opn, f, os.O_RDWR | os.O_TRUNC),
                outcome(os.truncate, f, 0),
                outcome(os.chmod, f, 0o666),
                outcome(os.utime, f, ns=(1, 1)),
                outcome(os.utime, f),
                outcome(os.setxattr, f, "user.x", b"1"),
                outcome(os.unlink, J(b, "ro", "inner")),
                outcome(opn, J(b, "ro", "new"), os.O_CREAT | os.O_WRONLY),
                outcome(os.mkdir, J(b, "ro", "newdir")),
                outcome(os.rename, J(b, "ro", "inner"), J(b, "ro", "x")),
                outcome(os.listdir, J(b, "closed")),
                outcome(os.stat, J(b, "closed", "anything")),
                outcome(write_file, J(b, "mine"), "mine!"),
                outcome(read_file, J(b, "mine")),
            ]
        return as_user(child, b), read_file(J(b, "rootfile"))

    r, data = m.twin().same(op)
    assert data == b"root data"
    errs = [x[1] if x[0] == "err" else "ok" for x in r]
    assert errs == ["EACCES", "ok", "EACCES", "EACCES", "EPERM", "EPERM", "EACCES", "EACCES",
                    "EACCES", "EACCES", "EACCES", "EACCES", "EACCES", "EACCES", "ok", "ok"], errs
    assert read_file(m.s("mine")) == b"mine!"
    check_backing(m)


if __name__ == "__main__":
    h.main(globals())
