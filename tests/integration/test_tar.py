#!/usr/bin/env python3
"""tar round trip through efused: a few thousand real files (system headers and docs) plus
hard links, symlinks, a FIFO, a sparse file, xattrs, odd modes and owners are archived,
extracted into the mount, compared (tar --compare, diff -r, full metadata), archived again
from the mount, and the two archives' listings must be identical."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run, write_file  # noqa: E402

J = os.path.join
# (directory, find -maxdepth, names to leave out): about 2,800 entries with 30 symlinks,
# files below 1 MiB, plus the synthetic extras below.
SOURCES = [("usr/include/linux", 9, None), ("usr/include/asm-generic", 9, None),
           ("usr/share/doc", 2, "usr/share/doc/l*")]
TAR_META = ["--xattrs", "--xattrs-include=user.*", "--numeric-owner", "--sort=name",
            "--sparse"]
ENV = dict(os.environ, LC_ALL="C", TZ="UTC")


def build_tree(tree, sources=SOURCES):
    os.mkdir(tree)
    srcs = [x for x in sources if os.path.isdir("/" + x[0])]
    assert srcs, "no source directories to copy"
    # Everything below 1 MiB (keeps the test fast), keeping symlinks, modes and times.
    files = "".join(run(["find", s, "-maxdepth", str(depth),
                         *(["!", "-path", skip] if skip else []),
                         "(", "!", "-type", "f", "-o", "-size", "-1024k", ")", "-print0"],
                        cwd="/").out for s, depth, skip in srcs)
    run(f"tar -C / --null --no-recursion -T - -cf - | tar -C {tree} -xpf -", shell=True,
        input=files, timeout=300)
    x = J(tree, "extra")
    os.makedirs(J(x, "deep", *["d"] * 30))
    write_file(J(x, "deep", *["d"] * 30, "leaf"), "deep leaf")
    os.mkdir(J(x, "empty dir"))
    for i in range(5):  # hard link groups, also across directories
        write_file(J(x, f"h{i}"), f"hard {i}\n" * (i * 1000 + 1))
        os.link(J(x, f"h{i}"), J(x, f"h{i}.link"))
        os.link(J(x, f"h{i}"), J(x, "deep", f"h{i}.far"))
    os.symlink("h0", J(x, "rel-link"))
    os.symlink("/etc/hostname", J(x, "abs-link"))
    os.symlink("does/not/exist", J(x, "dangling"))
    os.symlink("deep", J(x, "dir-link"))
    os.mkfifo(J(x, "fifo"))
    with open(J(x, "sparse"), "wb") as f:
        f.write(b"start")
        f.seek(8 << 20)
        f.write(b"end")
    write_file(J(x, "x" * 200 + " ünï 日本"), "long unicode name")
    write_file(J(x, "xattr"), "has xattrs")
    os.setxattr(J(x, "xattr"), "user.one", b"1")
    os.setxattr(J(x, "xattr"), "user.bin", b"\0\1\2")
    for name, mode, owner in (("setuid", 0o4755, (0, 0)), ("sticky-dir", 0o1777, (0, 0)),
                              ("user-file", 0o640, (h.USER_UID, h.USER_GID)),
                              ("odd-owner", 0o600, (4242, 4243))):
        p = J(x, name)
        if name.endswith("dir"):
            os.mkdir(p)
        else:
            write_file(p, name)
        os.chown(p, *owner)
        os.chmod(p, mode)
    for dirpath, dirnames, filenames in os.walk(x, topdown=False):
        for n in filenames + dirnames:
            os.utime(J(dirpath, n), ns=(1_234_567_890_123_456_789, 1_234_567_890_987_654_321),
                     follow_symlinks=False)
    os.utime(x, ns=(1_300_000_000 * 10**9, 1_300_000_000 * 10**9))


def tar_listing(archive):
    out = run(["tar", "-tvf", archive, "--full-time", "--numeric-owner"], env=ENV,
              timeout=300).out.splitlines()
    assert len(out) > 500, f"{archive}: only {len(out)} members"
    return out


def test_tar_round_trip(m):
    tree = J(m.native, "tree")
    build_tree(tree)
    a_tar = J(m.tmp, "a.tar")
    run(["tar", "-C", m.native, *TAR_META, "-cf", a_tar, "tree"], env=ENV, timeout=300)
    nmembers = len(tar_listing(a_tar))
    print(f"  archive has {nmembers} members")

    # Extract into the mount as root (owners, modes, times, xattrs preserved).
    run(["tar", "-C", m.mnt, *TAR_META, "-xpf", a_tar], env=ENV, timeout=300)
    # tar --compare reports content, mode, owner, mtime, link target or hard link mismatches.
    run(["tar", "-C", m.mnt, "--compare", "--numeric-owner", "-f", a_tar], env=ENV, timeout=300)
    run(["diff", "-r", "--no-dereference", "--exclude=fifo", tree, m.m("tree")], env=ENV,
        timeout=300)
    h.assert_same_tree(tree, m.m("tree"), times=True)
    h.assert_same_tree(m.m("tree"), m.s("tree"), times=True, dir_size=True)

    # Archive again, from the mount: the listing must be identical.
    b_tar = J(m.tmp, "b.tar")
    run(["tar", "-C", m.mnt, *TAR_META, "-cf", b_tar, "tree"], env=ENV, timeout=300)
    la, lb = tar_listing(a_tar), tar_listing(b_tar)
    if la != lb:
        diff = [f"- {x}\n+ {y}" for x, y in zip(la, lb) if x != y][:10]
        raise AssertionError(f"listings differ ({len(la)} vs {len(lb)} members):\n" +
                             "\n".join(diff))
    # And it extracts natively to the same tree.
    os.mkdir(J(m.tmp, "c"))
    run(["tar", "-C", J(m.tmp, "c"), *TAR_META, "-xpf", b_tar], env=ENV, timeout=300)
    h.assert_same_tree(tree, J(m.tmp, "c", "tree"), times=True)

    # Extracting again over the existing tree (tar unlinks and recreates) still matches.
    run(["tar", "-C", m.mnt, *TAR_META, "-xpf", a_tar], env=ENV, timeout=300)
    run(["tar", "-C", m.mnt, "--compare", "--numeric-owner", "-f", a_tar], env=ENV, timeout=300)
    h.assert_same_tree(tree, m.m("tree"), times=True)


def test_tar_stream_through_pipe(m):
    # tar reading from and writing into the mount in one pipeline (no intermediate file).
    tree = J(m.native, "tree")
    build_tree(tree, SOURCES[:2])
    run(f"tar -C {m.native} {' '.join(TAR_META)} -cf - tree | tar -C {m.mnt} -xpf - "
        f"--xattrs --xattrs-include='user.*' --numeric-owner", shell=True, env=ENV, timeout=300)
    os.mkdir(m.m("copy"))
    run(f"tar -C {m.mnt} {' '.join(TAR_META)} -cf - tree | tar -C {m.m('copy')} -xpf - "
        f"--xattrs --xattrs-include='user.*' --numeric-owner", shell=True, env=ENV, timeout=300)
    h.assert_same_tree(tree, m.m("copy", "tree"), times=True)
    h.assert_same_tree(m.s("copy", "tree"), m.m("copy", "tree"), times=True, dir_size=True)
    run(["rm", "-rf", m.m("tree"), m.m("copy")], timeout=300)
    assert os.listdir(m.src) == []


if __name__ == "__main__":
    h.main(globals(), require=["tar", "diff", "find"])
