#!/usr/bin/env python3
"""A tree with more entries than efused may open descriptors: efused runs with
RLIMIT_NOFILE 1024 (so its inode descriptor budget is 512) and serves a 3,000-entry tree
that the kernel keeps cached. Without file handles this is EMFILE (a descriptor per cached
inode); with them, least recently used inodes close their descriptor and reopen by handle.
Real programs (tar, diff, find, rm) check the data, /metrics shows the evictions and
reopens, and the process never holds more than its limit allows."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run, write_file  # noqa: E402
from prom_text import free_port, parse, scrape, value  # noqa: E402

J = os.path.join
NOFILE = 1024
BUDGET = NOFILE // 2
DIRS, FILES = 30, 100  # 3,000 files, 30 directories, plus links
PORT = free_port()
ENV = dict(os.environ, LC_ALL="C", TZ="UTC")


def build_tree(tree):
    os.mkdir(tree)
    for d in range(DIRS):
        dd = J(tree, f"d{d:02}")
        os.mkdir(dd)
        for f in range(FILES):
            write_file(J(dd, f"f{f:03}"), f"{d}/{f}\n" * (f % 7 + 1))
        os.symlink(f"f{d:03}", J(dd, "link"))
        # tar extracts links leading out of their directory as placeholder files first and
        # swaps in the symlinks at the end: the placeholders' inode numbers get reused.
        os.symlink(f"../d{(d + 1) % DIRS:02}/f000", J(dd, "up"))
        os.link(J(dd, "f000"), J(tree, f"hard{d:02}"))


def limited(m):
    """Start `m` with RLIMIT_NOFILE NOFILE:NOFILE (prlimit execs efused: same PID)."""
    inner = m.cmd
    m.cmd = lambda: ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"] + inner()
    m.start()


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics():
    s = parse(scrape(PORT))
    names = ("efuse_inodes", "efuse_inode_fds", "efuse_inode_fd_evictions_total",
             "efuse_inode_fd_reopens_total", "efuse_inode_fd_reopen_failures_total")
    got = {n: value(s, n) for n in names}
    for by in ("evictor", "request"):
        got[f"passes by {by}"] = value(s, "efuse_inode_fd_eviction_passes_total", by=by)
    return got


@h.mount_options(args=["--metrics", f"127.0.0.1:{PORT}"], start=False)
def test_tree_larger_than_the_descriptor_limit(m):
    limited(m)
    with open(f"/proc/{m.proc.pid}/limits") as f:
        assert any(line.startswith("Max open files") and f" {NOFILE} " in line for line in f)
    tree = J(m.native, "tree")
    build_tree(tree)
    archive = J(m.tmp, "tree.tar")
    run(["tar", "-C", m.native, "--sort=name", "-cf", archive, "tree"], env=ENV, timeout=300)

    # Extract into the mount: new entries stay in the kernel's caches, so efused holds an
    # inode for each of the 3,000+ entries. On a busy host the kernel may have let some go
    # (memory pressure, another process dropping caches): a walk looks them up again.
    run(["tar", "-C", m.mnt, "-xpf", archive], env=ENV, timeout=300)
    peak = fd_count(m.proc.pid)
    got = metrics()
    for walk in range(5):
        if got["efuse_inodes"] >= DIRS * FILES:
            break
        print(f"  walk {walk + 1}: the kernel let inodes go ({got['efuse_inodes']} held)")
        for root, dirs, files in os.walk(m.m("tree")):
            for name in dirs + files:
                os.lstat(J(root, name))
        peak = max(peak, fd_count(m.proc.pid))
        got = metrics()
    print(f"  after extraction: {got}, efused fds {peak}")
    assert got["efuse_inodes"] >= DIRS * FILES, "the kernel holds the tree's inodes"
    # Requests evict only past the hard limit (half again the budget); the mount's evictor
    # thread brings the count back within the budget.
    assert got["efuse_inode_fds"] <= BUDGET + BUDGET // 2, f"hard limit exceeded: {got}"
    h.wait_until(lambda: metrics()["efuse_inode_fds"] <= BUDGET, 10,
                 what="inode descriptors back within the budget")
    assert got["efuse_inode_fd_evictions_total"] > 0, got
    assert got["passes by evictor"] > 0, f"no pass by the evictor thread: {got}"
    assert peak < NOFILE, f"efused holds {peak} descriptors, its limit is {NOFILE}"

    # Read everything back through the mount (reopens evicted inodes) and compare.
    run(["tar", "-C", m.mnt, "--compare", "-f", archive], env=ENV, timeout=300)
    run(["diff", "-r", "--no-dereference", tree, m.m("tree")], env=ENV, timeout=300)
    h.assert_same_tree(tree, m.m("tree"))  # tar --compare checked mtimes (to the second)
    out = run(["find", m.m("tree"), "-type", "f", "-links", "2"], timeout=120).out.split()
    assert len(out) == 2 * DIRS, f"hard links: {len(out)} files with 2 links"
    got = metrics()
    print(f"  after reading back: {got}")
    assert got["efuse_inode_fd_reopens_total"] > 0, got
    assert got["efuse_inode_fd_reopen_failures_total"] == 0, got
    assert got["efuse_inode_fds"] <= BUDGET, got

    # Changes behind efused's back still reach evicted inodes: rename and rewrite one.
    os.rename(m.s("tree", "d00", "f050"), m.s("tree", "d00", "moved"))
    write_file(m.s("tree", "d00", "moved"), "rewritten\n")
    h.wait_until(lambda: os.path.exists(m.m("tree", "d00", "moved"))
                 and not os.path.exists(m.m("tree", "d00", "f050")), 5, what="rename seen")
    h.wait_until(lambda: h.read_file(m.m("tree", "d00", "moved")) == b"rewritten\n", 5,
                 what="new content seen")

    # Removal through the mount leaves nothing behind in the backing tree.
    run(["rm", "-rf", m.m("tree")], timeout=300)
    assert os.listdir(m.src) == []
    assert fd_count(m.proc.pid) < NOFILE


@h.mount_options(args=["--metrics", f"127.0.0.1:{PORT}"], start=False)
def test_removed_behind_the_back_while_evicted(m):
    # Twice as many files as the limit, all stat'ed through the mount (so the kernel caches
    # them and most are evicted), then removed in the backing tree: the mount shows them
    # gone and keeps serving.
    limited(m)
    os.mkdir(m.s("many"))
    for i in range(2 * NOFILE):
        write_file(m.s("many", f"f{i:04}"), str(i))
    names = sorted(os.listdir(m.m("many")))
    assert len(names) == 2 * NOFILE
    for n in names:
        os.stat(m.m("many", n))
    assert metrics()["efuse_inode_fd_evictions_total"] > 0
    run(["rm", "-rf", m.s("many")], timeout=120)
    h.wait_until(lambda: not os.path.exists(m.m("many")), 5, what="removal seen")
    os.mkdir(m.m("again"))
    write_file(m.m("again", "f"), "still serving")
    assert h.read_file(m.s("again", "f")) == b"still serving"


if __name__ == "__main__":
    h.main(globals(), require=["tar", "diff", "find", "prlimit"])
