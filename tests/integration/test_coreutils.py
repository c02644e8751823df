#!/usr/bin/env python3
"""Everyday tools through efused: cp -a in and out, diff -r, mv, rm -rf, ls -lR, du, find,
stat, dd conv=fsync, sha256sum of a 64 MiB file. Results are compared with the native tree
and with the backing directory."""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import read_file, run, write_file  # noqa: E402

J = os.path.join


def make_tree(root, seed=7):
    """A tree with nested dirs, sizes from 0 to ~300 KiB, odd modes, symlinks, hard links,
    a FIFO, xattrs, fixed times and an empty dir."""
    rng = random.Random(seed)
    os.mkdir(root)
    dirs = [root]
    for i in range(30):
        d = J(rng.choice(dirs), f"dir{i} ü")
        os.mkdir(d)
        dirs.append(d)
    files = []
    for i in range(300):
        p = J(rng.choice(dirs), f"file{i}.{rng.choice(['txt', 'bin', 'c', ''])}")
        size = rng.choice([0, 1, 100, 4095, 4096, 4097, 65536, rng.randrange(1, 300000)])
        write_file(p, rng.randbytes(size))
        os.chmod(p, rng.choice([0o644, 0o600, 0o755, 0o444, 0o640]))
        files.append(p)
    for i in range(20):
        src = rng.choice(files)
        os.link(src, J(rng.choice(dirs), f"hard{i}"))
    for i in range(20):
        tgt = os.path.relpath(rng.choice(files), os.path.dirname(files[0]))
        os.symlink(tgt, J(rng.choice(dirs), f"sym{i}"))
    os.symlink("/nonexistent/dangling", J(root, "dangling"))
    os.mkfifo(J(root, "fifo"))
    os.mkdir(J(root, "empty"))
    os.setxattr(files[0], "user.tag", b"coreutils")
    write_file(J(root, "sparse"), b"")
    with open(J(root, "sparse"), "r+b") as f:
        f.seek(5 << 20)
        f.write(b"end")
    t = 1_500_000_000
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            os.utime(J(dirpath, n), ns=(t * 10**9 + 123, t * 10**9 + 456), follow_symlinks=False)
            t += 1
    os.utime(root, ns=(t * 10**9, t * 10**9))


def ls_lr(path, dir_sizes=False):
    """ls -lR with full times, without inode numbers, 'total' lines and the top path.
    Directory sizes depend on a directory's history, so they are masked unless asked for."""
    r = run(["ls", "-lR", "--time-style=+%s.%N", "-n", path], env=dict(os.environ, LC_ALL="C"))
    out = []
    for line in r.out.splitlines():
        if line.startswith("total "):
            continue
        if line.startswith("d") and not dir_sizes:
            f = line.split(" ")
            f = [x for x in f if x != ""]
            f[4] = "<dirsize>"
            line = " ".join(f)
        out.append(line.replace(path, "<ROOT>"))
    return out


def test_cp_in_and_out(m):
    tree = J(m.native, "tree")
    make_tree(tree)
    run(["cp", "-a", tree, m.m("tree")], timeout=300)
    run(["diff", "-r", "--no-dereference", "--exclude=fifo", tree, m.m("tree")], timeout=300)
    h.assert_same_tree(tree, m.m("tree"), times=True)
    h.assert_same_tree(m.m("tree"), m.s("tree"), times=True, dir_size=True)
    assert ls_lr(tree) == ls_lr(m.m("tree"))
    assert ls_lr(m.s("tree"), True) == ls_lr(m.m("tree"), True)

    run(["cp", "-a", m.m("tree"), J(m.native, "back")], timeout=300)
    run(["diff", "-r", "--no-dereference", "--exclude=fifo", tree, J(m.native, "back")], timeout=300)
    h.assert_same_tree(tree, J(m.native, "back"), times=True)
    assert ls_lr(tree) == ls_lr(J(m.native, "back"))

    # cp without -a inside the mount (a copy that reads and writes through efused).
    run(["cp", "-r", m.m("tree"), m.m("plain")], timeout=300)
    run(["diff", "-r", "--no-dereference", "--exclude=fifo", tree, m.m("plain")], timeout=300)


def test_mv_and_rm(m):
    tree = J(m.native, "tree")
    make_tree(tree)
    run(["cp", "-a", tree, m.m("a")])
    run(["mv", m.m("a"), m.m("b")])  # rename within the mount
    assert not os.path.lexists(m.s("a")) and os.path.isdir(m.s("b"))
    h.assert_same_tree(tree, m.m("b"), times=True)
    run(["mv", m.m("b"), J(m.native, "out")], timeout=300)  # across file systems: copy+delete
    assert os.listdir(m.src) == [] and os.listdir(m.mnt) == []
    h.assert_same_tree(tree, J(m.native, "out"), times=True)
    run(["mv", J(m.native, "out"), m.m("in")], timeout=300)
    h.assert_same_tree(tree, m.m("in"), times=True)
    h.assert_same_tree(m.s("in"), m.m("in"), times=True, dir_size=True)
    run(["rm", "-rf", m.m("in")], timeout=300)
    assert os.listdir(m.src) == [], os.listdir(m.src)
    assert os.listdir(m.mnt) == []


def test_du_find_stat(m):
    tree = J(m.native, "tree")
    make_tree(tree)
    run(["cp", "-a", tree, m.m("tree")])
    env = dict(os.environ, LC_ALL="C")

    def du(p, *args):
        return run(["du", *args, p], env=env).out.replace(p, "<ROOT>").splitlines()

    assert du(m.m("tree"), "-s", "-b") == du(tree, "-s", "-b") == du(m.s("tree"), "-s", "-b")
    assert du(m.m("tree"), "-a", "--apparent-size", "-B1") == du(m.s("tree"), "-a", "--apparent-size", "-B1")
    # Allocated blocks: the mount reports what the backing file system reports.
    assert du(m.m("tree"), "-a", "-B1") == du(m.s("tree"), "-a", "-B1")

    fmt = "%P|%y|%m|%s|%n|%U|%G|%l|%T@\n"

    def find(p, *extra):
        return sorted(run(["find", p, *extra, "-printf", fmt], env=env).out.splitlines())

    assert find(m.m("tree")) == find(tree)
    assert find(m.m("tree")) == find(m.s("tree"))
    assert find(m.m("tree"), "-type", "l") == find(tree, "-type", "l")
    assert find(m.m("tree"), "-size", "+4k", "-type", "f") == find(tree, "-size", "+4k", "-type", "f")
    assert find(m.m("tree"), "-name", "*.c") == find(tree, "-name", "*.c")
    assert find(m.m("tree"), "-links", "+1", "-type", "f") == find(tree, "-links", "+1", "-type", "f")

    names = sorted(run(["find", m.m("tree"), "-mindepth", "1"], env=env).out.splitlines())
    sfmt = "%n|%s|%b|%f|%u|%g|%h|%X|%Y|%Z|%N"
    # Same metadata through the mount as in the backing dir (ctime included), for every entry.
    via_mount = run(["stat", "-c", sfmt, *names], env=env).out.replace(m.mnt, "<M>")
    backing = [n.replace(m.mnt, m.src, 1) for n in names]
    via_backing = run(["stat", "-c", sfmt, *backing], env=env).out.replace(m.src, "<M>")
    assert via_mount == via_backing, _first_diff(via_mount, via_backing)
    # stat -f through the mount reports the backing file system's size.
    fs_m = run(["stat", "-f", "-c", "%S %b %c", m.mnt]).out.split()
    fs_b = run(["stat", "-f", "-c", "%S %b %c", m.src]).out.split()
    assert int(fs_m[0]) * int(fs_m[1]) == int(fs_b[0]) * int(fs_b[1]) and fs_m[2] == fs_b[2], (fs_m, fs_b)


def _first_diff(a, b):
    for x, y in zip(a.splitlines(), b.splitlines()):
        if x != y:
            return f"mount: {x}\nbacking: {y}"
    return "different lengths"


def test_dd_fsync_and_direct(m):
    src = J(m.native, "random")
    write_file(src, os.urandom(16 << 20))
    for flags in (["conv=fsync"], ["conv=fdatasync"], ["oflag=sync"], ["oflag=direct"]):
        for where in (m.native, m.mnt):
            run(["dd", f"if={src}", f"of={J(where, 'dd.out')}", "bs=1M", *flags, "status=none"])
        assert h.sha256_file(m.m("dd.out")) == h.sha256_file(src), flags
        assert h.sha256_file(m.s("dd.out")) == h.sha256_file(src), flags
        os.unlink(m.m("dd.out"))
    # Partial overwrite without truncation, and reading back with O_DIRECT.
    run(["dd", f"if={src}", f"of={m.m('dd2')}", "bs=64k", "count=100", "status=none"])
    run(["dd", "if=/dev/zero", f"of={m.m('dd2')}", "bs=4k", "seek=3", "count=5",
         "conv=notrunc,fsync", "status=none"])
    want = bytearray(read_file(src)[:6553600])
    want[3 * 4096:8 * 4096] = b"\0" * 5 * 4096
    assert read_file(m.s("dd2")) == bytes(want)
    run(["dd", f"if={m.m('dd2')}", f"of={J(m.native, 'dd2.back')}", "iflag=direct", "bs=64k",
         "status=none"])
    assert read_file(J(m.native, "dd2.back")) == bytes(want)


def test_sha256_64mib(m):
    src = J(m.native, "big")
    with open(src, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    want = h.sha256_file(src)
    run(["dd", f"if={src}", f"of={m.m('big')}", "bs=1M", "conv=fsync", "status=none"], timeout=300)

    def sha(p):
        return run(["sha256sum", p], timeout=300).out.split()[0]

    assert sha(m.m("big")) == want
    assert sha(m.s("big")) == want
    assert os.stat(m.m("big")).st_size == 64 << 20
    # After a restart (fresh kernel caches) the data read through the mount is the same.
    m.restart_if_persistent()
    assert sha(m.m("big")) == want
    run(["cp", m.m("big"), m.m("big2")], timeout=300)
    assert sha(m.s("big2")) == want


if __name__ == "__main__":
    h.main(globals(), require=["cp", "diff", "mv", "rm", "ls", "du", "find", "stat", "dd",
                               "sha256sum"])
