#!/usr/bin/env python3
"""Exact invalidation: with every kernel cache timeout at an hour, changes made in the
backing tree behind efused's back (create, rename, unlink, write, truncate, chmod, chown,
utimes, xattr, mkdir/rmdir) must show through the mount within a few seconds, and nothing
stale may remain afterwards. Runs with passthrough I/O and with I/O through the page cache
(keep_cache), where data invalidation matters. Directory listings the kernel caches
(FOPEN_CACHE_DIR) must be served from its cache and still show every change."""

import errno
import os
import stat
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port, parse, scrape, value  # noqa: E402

HOUR = ["--entry-timeout", "3600", "--attr-timeout", "3600", "--negative-timeout", "3600"]
DEADLINE = 5.0  # seconds a change may take to show (polling, not a speed assertion)
PORT = free_port()


def metric(name, **labels):
    """The mount's /metrics value of `name` now (None if it has no sample)."""
    return value(parse(scrape(PORT)), name, **labels)


def eventually(what, fn, expect):
    """Poll fn() until it returns expect; fail with what it last saw."""
    last = [None]

    def ok():
        try:
            last[0] = fn()
        except OSError as e:
            last[0] = e
        return last[0] == expect

    try:
        h.wait_until(ok, DEADLINE, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: still {last[0]!r} after {DEADLINE}s, want {expect!r}")


def exists(p):
    return os.path.lexists(p)


def warm(m, *names):
    """Make the kernel cache names, attributes and data (and absences)."""
    for n in names:
        p = m.m(n)
        try:
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                h.read_file(p)
            elif stat.S_ISDIR(st.st_mode):
                os.listdir(p)
        except FileNotFoundError:
            pass


def scenario(m):
    s, mnt = m.s, m.m
    h.write_file(s("f"), b"version one\n")
    os.mkdir(s("dir"))
    h.write_file(s("dir/inner"), b"inner\n")
    h.write_file(s("gone"), b"bye\n")
    h.write_file(s("old-name"), b"moving\n")
    h.write_file(s("linked"), b"links\n")
    warm(m, "f", "dir", "dir/inner", "gone", "old-name", "new-name", "created", "newdir",
         "linked", "dir/link")
    # Caches are warm and valid for an hour. Now change everything behind efused's back.
    h.write_file(s("created"), b"hello\n")
    eventually("create shows", lambda: h.read_file(mnt("created")), b"hello\n")

    os.rename(s("old-name"), s("new-name"))
    eventually("rename: old name gone", lambda: exists(mnt("old-name")), False)
    eventually("rename: new name there", lambda: h.read_file(mnt("new-name")), b"moving\n")

    os.unlink(s("gone"))
    eventually("unlink shows", lambda: exists(mnt("gone")), False)

    with open(s("f"), "r+b") as f:  # same size, new bytes: only data invalidation shows it
        f.write(b"VERSION")
    eventually("overwrite shows", lambda: h.read_file(mnt("f")), b"VERSION one\n")

    with open(s("f"), "ab") as f:
        f.write(b"appended\n")
    eventually("append shows", lambda: h.read_file(mnt("f")), b"VERSION one\nappended\n")

    os.truncate(s("f"), 4)
    eventually("truncate shows", lambda: (os.stat(mnt("f")).st_size, h.read_file(mnt("f"))),
               (4, b"VERS"))

    os.chmod(s("f"), 0o600)
    eventually("chmod shows", lambda: stat.S_IMODE(os.stat(mnt("f")).st_mode), 0o600)

    os.chown(s("f"), 4242, 4343)
    eventually("chown shows", lambda: (os.stat(mnt("f")).st_uid, os.stat(mnt("f")).st_gid),
               (4242, 4343))

    os.utime(s("f"), ns=(1_000_000_000, 2_000_000_000))
    eventually("utimes shows", lambda: os.stat(mnt("f")).st_mtime_ns, 2_000_000_000)

    os.setxattr(s("f"), "user.color", b"blue")
    eventually("setxattr shows", lambda: os.getxattr(mnt("f"), "user.color"), b"blue")
    os.removexattr(s("f"), "user.color")
    eventually("removexattr shows", lambda: "user.color" in os.listxattr(mnt("f")), False)

    # A hard link made or removed elsewhere changes the link count of every other name's
    # file, though inotify reports only the name that came or went.
    links = lambda: (os.stat(mnt("linked")).st_nlink, os.stat(mnt("dir/link")).st_nlink)  # noqa: E731
    os.link(s("linked"), s("dir/link"))
    eventually("a new hard link counts", links, (2, 2))
    os.link(s("linked"), s("link3"))
    eventually("another hard link counts", links, (3, 3))
    os.unlink(s("link3"))
    eventually("an unlinked hard link counts", links, (2, 2))
    os.rename(s("linked"), s("dir/link"))  # replaces the other name of the same file: no-op
    os.unlink(s("dir/link"))
    eventually("back to one link", lambda: (os.stat(mnt("linked")).st_nlink,
                                            exists(mnt("dir/link"))), (1, False))
    os.mkdir(s("newdir"))
    h.write_file(s("newdir/x"), b"x\n")
    eventually("mkdir shows", lambda: sorted(os.listdir(mnt("newdir"))), ["x"])
    h.write_file(s("dir/second"), b"2\n")
    eventually("dir listing grows", lambda: sorted(os.listdir(mnt("dir"))), ["inner", "second"])
    os.unlink(s("dir/inner"))
    os.unlink(s("dir/second"))
    os.rmdir(s("dir"))
    eventually("rmdir shows", lambda: exists(mnt("dir")), False)

    # Nothing stale left: the mount now agrees with the backing tree on every name,
    # attribute and byte.
    time.sleep(0.2)
    assert_same_tree(m)


def assert_same_tree(m):
    for root, dirs, files in os.walk(m.src):
        rel = os.path.relpath(root, m.src)
        mroot = os.path.normpath(os.path.join(m.mnt, rel))
        assert sorted(os.listdir(mroot)) == sorted(dirs + files), f"listing of {rel} differs"
        for name in dirs + files:
            a, b = os.lstat(os.path.join(root, name)), os.lstat(os.path.join(mroot, name))
            for field in ("st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_nlink"):
                assert getattr(a, field) == getattr(b, field), \
                    f"{rel}/{name}: {field} backing {getattr(a, field)} mount {getattr(b, field)}"
            if stat.S_ISREG(a.st_mode):
                assert h.read_file(os.path.join(root, name)) == \
                    h.read_file(os.path.join(mroot, name)), f"{rel}/{name}: data differs"


@h.mount_options(args=HOUR)
def test_outside_changes_show_passthrough(m):
    scenario(m)


@h.mount_options(args=HOUR + ["--io-path", "cache", "--keep-cache"])
def test_outside_changes_show_page_cache(m):
    scenario(m)


@h.mount_options(args=HOUR)
def test_own_changes_need_no_invalidation_round_trip(m):
    # Changes made through the mount are already known to the kernel: the same scenario
    # through the mount must leave mount and backing tree equal too.
    os.mkdir(m.m("d"))
    h.write_file(m.m("d/a"), b"a\n")
    os.rename(m.m("d/a"), m.m("d/b"))
    os.chmod(m.m("d/b"), 0o640)
    os.setxattr(m.m("d/b"), "user.k", b"v")
    h.write_file(m.m("d/c"), b"c\n")
    os.unlink(m.m("d/c"))
    time.sleep(0.2)
    assert_same_tree(m)


@h.mount_options(args=HOUR)
def test_listing_names_known_inodes(m):
    # A listing gives the kernel bare names (no nodeid) for inodes it already holds. Every
    # name must still resolve to the right file: a new hard link of a known file, a known
    # file renamed behind efused's back, and both again after a second listing.
    os.mkdir(m.s("d"))
    h.write_file(m.s("d", "a"), b"aaa\n")
    h.write_file(m.s("d", "c"), b"cc\n")
    assert sorted(os.listdir(m.m("d"))) == ["a", "c"]
    ino_a, ino_c = os.stat(m.m("d", "a")).st_ino, os.stat(m.m("d", "c")).st_ino
    os.link(m.s("d", "a"), m.s("d", "b"))
    os.rename(m.s("d", "c"), m.s("d", "e"))
    eventually("listing after link and rename", lambda: sorted(os.listdir(m.m("d"))),
               ["a", "b", "e"])
    fields = ("st_ino", "st_nlink", "st_size", "st_mode")
    for _ in range(2):
        for name in ("a", "b", "e"):  # a's link count changed too
            want = os.lstat(m.s("d", name))
            eventually(f"attributes of {name}",
                       lambda: [getattr(os.lstat(m.m("d", name)), f) for f in fields],
                       [getattr(want, f) for f in fields])
        assert os.stat(m.m("d", "b")).st_ino == ino_a
        assert os.stat(m.m("d", "e")).st_ino == ino_c
        assert h.read_file(m.m("d", "b")) == b"aaa\n" and h.read_file(m.m("d", "e")) == b"cc\n"
        assert sorted(os.listdir(m.m("d"))) == ["a", "b", "e"]


def listing_requests():
    """READDIR and READDIRPLUS requests efused has answered so far."""
    s = parse(scrape(PORT))
    return sum(value(s, "efuse_requests_total", opcode=o) or 0 for o in ("readdir", "readdirplus"))


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"])
def test_cached_listings_stay_exact(m):
    os.mkdir(m.s("d"))
    names = {f"f{i:03}" for i in range(300)}  # several pages of listing
    for n in names:
        h.write_file(m.s("d", n), b"x")

    def listed():
        return set(os.listdir(m.m("d")))

    def served_from_cache(what):
        # For 2 s after a change of its entries (kListingGraceNs, passthrough_dir.cpp) a
        # directory's listings go through efused, and the watcher's last invalidation can
        # land after a listing that already shows the change; then five listings in a row
        # must come from the kernel's cache. (Polling, not a speed assertion.)
        def cached_run():
            assert listed() == names, what
            before = listing_requests()
            for _ in range(5):
                assert listed() == names, what
            return listing_requests() == before
        h.wait_until(cached_run, DEADLINE + 10, what=f"{what}: listings served from the cache")

    served_from_cache("fresh directory")
    # Through the mount: the kernel knows at once.
    h.write_file(m.m("d", "new"), b"n")
    names.add("new")
    os.rename(m.m("d", "f000"), m.m("d", "g000"))
    names ^= {"f000", "g000"}
    os.unlink(m.m("d", "f001"))
    names.discard("f001")
    os.mkdir(m.m("d", "sub"))
    names.add("sub")
    served_from_cache("after changes through the mount")
    # Behind efused's back: within a few seconds.
    h.write_file(m.s("d", "outside"), b"o")
    names.add("outside")
    eventually("outside create listed", listed, names)
    os.rename(m.s("d", "f002"), m.s("d", "h002"))
    names ^= {"f002", "h002"}
    eventually("outside rename listed", listed, names)
    os.unlink(m.s("d", "f003"))
    names.discard("f003")
    eventually("outside unlink listed", listed, names)
    os.rmdir(m.s("d", "sub"))
    names.discard("sub")
    eventually("outside rmdir listed", listed, names)
    served_from_cache("after changes behind efused's back")
    assert metric("efuse_listing_cache_drops_total") is not None


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"])
def test_directories_are_opened_without_opendir(m):
    # Invalidation is exact, so efused answers the first OPENDIR with ENOSYS and the kernel
    # opens directories itself from then on: no OPENDIR or RELEASEDIR, and once the tree's
    # listings are cached a walk of it costs no request at all.
    for d in range(5):
        os.makedirs(m.s("t", f"d{d}", "sub"))
        for f in range(5):
            h.write_file(m.s("t", f"d{d}", f"f{f}"), b"x")

    def walk():
        return sorted((top, sorted(dirs), sorted(files)) for top, dirs, files in os.walk(m.m("t")))

    first = walk()
    assert len(first) == 11 and sum(len(files) for _, _, files in first) == 25
    requests = lambda: metric("efuse_requests_total") or 0  # noqa: E731

    def quiet_walk():  # polling: a directory changed less than 2 s ago is listed by efused
        before = requests()
        assert walk() == first
        return requests() == before
    h.wait_until(quiet_walk, DEADLINE + 10, what="a warm walk without requests")
    s = parse(scrape(PORT))
    assert value(s, "efuse_requests_total", opcode="opendir") == 1, "answered ENOSYS once"
    assert not value(s, "efuse_requests_total", opcode="releasedir")
    # Still exact: a change through the mount and one behind efused's back both show.
    h.write_file(m.m("t", "d0", "new"), b"n")
    assert "new" in os.listdir(m.m("t", "d0"))
    os.unlink(m.s("t", "d1", "f0"))
    eventually("outside unlink listed", lambda: "f0" in os.listdir(m.m("t", "d1")), False)


@h.mount_options(args=["--attr-timeout", "0", "--metrics", f"127.0.0.1:{PORT}"])
def test_cached_listings_are_checked_against_the_mtime_when_attributes_expire(m):
    # Changes inotify cannot see (a network file system changed from another host) reach a
    # cached listing through the directory's mtime: once its attributes have expired, a
    # listing asks for them (GETATTR) before using the cache, and the kernel lists again if
    # the mtime moved. With attr_timeout 0 every listing checks.
    os.mkdir(m.s("d"))
    for i in range(20):
        h.write_file(m.s("d", f"f{i}"), b"x")
    assert len(os.listdir(m.m("d"))) == 20
    getattrs = lambda: metric("efuse_requests_total", opcode="getattr") or 0  # noqa: E731
    for _ in range(3):
        before = getattrs()
        assert len(os.listdir(m.m("d"))) == 20
        assert getattrs() > before, "a cached listing used without checking the mtime"


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"])
def test_read_only_opens_share_the_inode_descriptor(m):
    # Plain read-only opens reuse the inode's descriptor: efused opens nothing for them,
    # and they still read what the backing file holds after outside rewrites.
    small, big = m.s("small"), m.s("big")
    h.write_file(small, b"one\n")
    h.write_file(big, b"b" * (1 << 20))  # passthrough-sized
    shared = lambda: metric("efuse_shared_opens_total")  # noqa: E731
    # The opens efused serves (on the kernel module tier the OPEN handler answers all but
    # the first of each file in the kernel: those never reach efused).
    served = lambda: metric("efuse_requests_total", opcode="open") or 0  # noqa: E731

    def backing_fds(name):  # efused's descriptors on a backing file
        d = f"/proc/{m.proc.pid}/fd"
        return sum(1 for fd in os.listdir(d) if os.path.realpath(os.path.join(d, fd)) == os.path.realpath(name))

    # An open file keeps its inode in the kernel: without one, a host-wide drop_caches (or
    # memory pressure) between the reads and the check can make the kernel forget the
    # inodes, and efused close their descriptors, on a busy host.
    holders = [os.open(m.m("small"), os.O_RDONLY), os.open(m.m("big"), os.O_RDONLY)]
    try:
        before, opens = shared(), served()
        for _ in range(10):
            assert h.read_file(m.m("small")) == b"one\n"
            assert h.read_file(m.m("big")) == b"b" * (1 << 20)
        # (Every open efused served here was a shared one: the module tier's hold of each
        # node, also a shared open, was taken with the holders' opens, before.)
        assert shared() - before == served() - opens, (before, shared(), opens, served())
        if os.environ.get("EFUSE_FSTYPE") != "efuse.efuse":
            assert served() - opens == 20, (opens, served())
        assert backing_fds(small) == 1 and backing_fds(big) == 1, "only the inodes' own"
    finally:
        for fd in holders:
            os.close(fd)
    h.write_file(small, b"two, longer\n")
    eventually("outside rewrite read through a shared open", lambda: h.read_file(m.m("small")),
               b"two, longer\n")
    with open(big, "r+b") as f:
        f.write(b"B")
    eventually("outside write to a passthrough file", lambda: h.read_file(m.m("big"))[:2], b"Bb")


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"])
def test_an_outside_change_right_behind_one_of_ours_shows(m):
    # The chmod through the mount and the one behind efused's back queue identical
    # IN_ATTRIB events, which inotify merges into one: that event must not be taken for
    # efused's own change alone.
    h.write_file(m.s("f"), b"x")
    for mode in (0o600, 0o640, 0o604, 0o644):
        os.chmod(m.m("f"), 0o700)
        os.chmod(m.s("f"), mode)
        eventually(f"outside chmod {mode:o} behind ours", lambda: stat.S_IMODE(os.stat(m.m("f")).st_mode), mode)
    assert metric("efuse_watch_failures_total") == 0


CWD_PROBE = r"""
import os, sys, time
src, mnt = sys.argv[1:3]
os.mkdir(src)
os.chdir(mnt)  # before the watcher has seen the mkdir: the kernel looks the name up now
time.sleep(0.5)  # the watcher has invalidated the new name by now (DEADLINE is 5 s)
print(os.getcwd())
"""


@h.mount_options(args=HOUR)
def test_a_working_directory_in_a_new_outside_directory_stays(m):
    # The watcher tells the kernel about a name that appeared behind efused's back. A
    # process that already entered the new directory through the mount must keep a working
    # directory that getcwd() can name: the name is expired, not dropped (FUSE_EXPIRE_ONLY,
    # where the kernel speaks FUSE 7.38), and the kernel finds the same directory again.
    for i in range(5):
        d = f"cwd{i}"
        r = h.run([sys.executable, "-c", CWD_PROBE, m.s(d), m.m(d)], check=False, timeout=30)
        assert r.rc == 0 and r.out.strip() == m.m(d), (d, r.rc, r.out, r.err[-800:])
        os.mkdir(m.s(d, "sub"))  # and the name still leads to the directory, refreshed
        eventually(f"{d}: an outside change inside it shows", lambda: os.listdir(m.m(d)), ["sub"])


# A file capability (struct vfs_cap_data, revision 2): CAP_NET_BIND_SERVICE permitted.
CAPS = struct.pack("<5I", 0x02000000, 1 << 10, 0, 0, 0)
CAPS_NAME = "security.capability"


def caps_of(p):
    try:
        return os.getxattr(p, CAPS_NAME)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise


@h.mount_options(args=HOUR)
def test_a_known_absent_capability_stays_exact(m):
    # efused keeps "no security.capability" per file (the kernel asks before the first
    # write after each attribute refresh and before every chown), so every way one can
    # appear must drop that: SETXATTR through the mount, and an outside setcap.
    fd = os.open(m.m("cap"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    os.write(fd, b"#!/bin/sh\n")  # the kernel's check before the write: a stored absence
    os.close(fd)
    assert caps_of(m.m("cap")) is None
    os.setxattr(m.m("cap"), CAPS_NAME, CAPS)
    assert caps_of(m.m("cap")) == CAPS and caps_of(m.s("cap")) == CAPS
    os.removexattr(m.m("cap"), CAPS_NAME)
    assert caps_of(m.m("cap")) is None and caps_of(m.s("cap")) is None
    # Behind efused's back, right after the absence was read (and stored) again.
    os.setxattr(m.s("cap"), CAPS_NAME, CAPS)
    eventually("an outside setcap shows", lambda: caps_of(m.m("cap")), CAPS)
    # The kernel removes a capability at a write by a caller: only if it sees it.
    with open(m.m("cap"), "ab") as f:
        f.write(b"true\n")
    assert caps_of(m.s("cap")) is None, "a write through the mount left the capability"
    assert caps_of(m.m("cap")) is None
    os.setxattr(m.s("cap"), CAPS_NAME, CAPS)
    eventually("a second outside setcap shows", lambda: caps_of(m.m("cap")), CAPS)
    os.removexattr(m.s("cap"), CAPS_NAME)
    eventually("an outside removal shows", lambda: caps_of(m.m("cap")), None)


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"])
def test_a_file_written_on_and_on_costs_one_invalidation(m):
    # Writes through a passthrough open reach the backing file directly, so inotify reports
    # each like an outside write. The kernel's attributes are dropped once; until someone
    # asks for them again there is nothing more to drop, however many batches of writes come.
    assert metric("efuse_watched_directories") >= 1
    with open(m.m("log"), "wb") as f:
        events, sent = metric("efuse_watch_events_total"), metric("efuse_watch_invalidations_total")
        for _ in range(40):  # spread over many 10 ms batches
            f.write(b"x" * 4096)
            f.flush()
            time.sleep(0.005)
        eventually("the writes are seen", lambda: metric("efuse_watch_events_total") > events, True)
        time.sleep(0.1)  # let the last batch go out
        assert metric("efuse_watch_invalidations_total") - sent <= 1, \
            (sent, metric("efuse_watch_invalidations_total"))
        assert os.stat(m.m("log")).st_size == 40 * 4096
        os.stat(m.m("log"))  # the kernel holds attributes again: the next change is sent
        with open(m.s("log"), "ab") as g:
            g.write(b"outside")
        eventually("an outside append after a stat", lambda: os.stat(m.m("log")).st_size, 40 * 4096 + 7)


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"])
def test_a_file_open_for_writing_has_its_write_events_muted(m):
    # Every write to a file of an inotify-watched directory queues an event, writes
    # through passthrough opens included. fanotify reports the writes instead, and a file
    # open for writing through the mount has them dropped in the kernel until it closes;
    # an outside write meanwhile shows when efused next compares attributes (1 s).
    assert metric("efuse_watch_fanotify_directories") >= 1, m.log_tail()
    with open(m.m("log"), "wb") as f:
        for _ in range(20):  # spread over several 10 ms batches
            f.write(b"x" * 4096)
            f.flush()
            time.sleep(0.005)
        eventually("the file is muted", lambda: metric("efuse_watch_muted_files"), 1)
        events = metric("efuse_watch_events_total")
        for _ in range(20):
            f.write(b"y" * 4096)
            f.flush()
            time.sleep(0.005)
        time.sleep(0.1)
        assert metric("efuse_watch_events_total") == events, "muted writes made events"
        assert os.stat(m.m("log")).st_size == 40 * 4096
        with open(m.s("log"), "ab") as g:
            g.write(b"outside")
        eventually("an outside append while muted", lambda: os.stat(m.m("log")).st_size,
                   40 * 4096 + 7)
    eventually("unmuted after the close", lambda: metric("efuse_watch_muted_files"), 0)
    with open(m.s("log"), "ab") as g:
        g.write(b"again")
    eventually("an outside append after the close", lambda: h.read_file(m.m("log"))[-12:],
               b"outsideagain")
    assert_same_tree(m)


def writes_seen_without_fanotify(m, limit, logged):
    """Start m while fanotify `limit` is 0: writes are watched with inotify, and still show."""
    h.write_file(m.s("f"), b"one\n")
    os.mkdir(m.s("d"))
    h.write_file(m.s("d", "g"), b"two\n")
    with h.HostSysctl(limit, 0):
        m.start()
        assert h.read_file(m.m("f")) == b"one\n" and h.read_file(m.m("d", "g")) == b"two\n"
    assert logged in m.log_text(), f"efused did not log {logged!r}:\n{m.log_tail()}"
    assert metric("efuse_watched_directories") == 2
    assert metric("efuse_watch_fanotify_directories") == 0
    assert metric("efuse_watch_failures_total") == 0, "inotify still watches everything"
    with open(m.m("d", "g"), "ab") as f:
        f.write(b"through the mount\n")
        f.flush()
        with open(m.s("f"), "ab") as g:
            g.write(b"outside\n")
        eventually("an outside append", lambda: h.read_file(m.m("f")), b"one\noutside\n")
        with open(m.s("d", "g"), "ab") as g:
            g.write(b"outside\n")
        eventually("an outside append to a file open for writing",
                   lambda: os.stat(m.m("d", "g")).st_size, 30)
        assert metric("efuse_watch_muted_files") == 0
    assert_same_tree(m)


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"], start=False)
def test_writes_watched_with_inotify_without_fanotify(m):
    # No fanotify group (fs.fanotify.max_user_groups exhausted; or no FAN_REPORT_DFID_NAME).
    writes_seen_without_fanotify(m, "fs.fanotify.max_user_groups", "fanotify unavailable")


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"], start=False)
def test_writes_watched_with_inotify_where_fanotify_cannot_mark(m):
    # A group but no marks (fs.fanotify.max_user_marks exhausted; or a file system without
    # file ids, such as FUSE).
    writes_seen_without_fanotify(m, "fs.fanotify.max_user_marks", "fanotify cannot mark")


def capped_without_watches(m, limit, setting, logged):
    """Start m while `limit` is `setting`, so that efused cannot watch the backing tree:
    its hour-long timeouts must be capped at 1 s, and outside changes still show."""
    with h.HostSysctl(limit, setting):
        m.start()  # efused's first watches are taken while it starts
        h.write_file(m.s("f"), b"one\n")
        os.mkdir(m.s("d"))
        assert os.stat(m.m("f")).st_size == 4 and os.listdir(m.m("d")) == []
    assert logged in m.log_text(), f"efused did not log {logged!r}:\n{m.log_tail()}"
    assert metric("efuse_watch_failures_total") >= 1
    h.write_file(m.s("f"), b"two, longer\n")
    h.write_file(m.s("d", "new"), b"x")
    eventually("size change without inotify", lambda: os.stat(m.m("f")).st_size, 12)
    eventually("new entry without inotify", lambda: os.listdir(m.m("d")), ["new"])
    assert h.read_file(m.m("f")) == b"two, longer\n"


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"], start=False)
def test_timeouts_capped_when_inotify_is_unavailable(m):
    # No inotify instance at all (fs.inotify.max_user_instances exhausted).
    capped_without_watches(m, "fs.inotify.max_user_instances", 0,
                           "cannot watch the backing tree")


@h.mount_options(args=HOUR + ["--metrics", f"127.0.0.1:{PORT}"], start=False)
def test_timeouts_capped_when_a_directory_cannot_be_watched(m):
    # An inotify instance but no watches (fs.inotify.max_user_watches exhausted).
    capped_without_watches(m, "fs.inotify.max_user_watches", 0, "inotify_add_watch failed")


if __name__ == "__main__":
    h.main(globals())
