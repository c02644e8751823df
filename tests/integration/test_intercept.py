#!/usr/bin/env python3
"""libefuse_intercept.so under efuse-run on a mount with `--intercept`: every program gives
the same results with and without the library (coreutils, tar, git, python, fsx); as
another user, with ACLs and on a read-only mount nothing is granted that the kernel path
refuses; files changed in the backing directory while a process holds them read the same;
descriptors the library hands out behave as kernel ones across dup, dup2, dup3,
fcntl(F_DUPFD), fork, exec, threads, close_range and O_CLOEXEC; calls relative to directory
descriptors (renamed, replaced, reused, permissions changed while held), listings, and a
file system mounted inside the mount give what the kernel gives; after kill -9 of efused
every call fails with ENOTCONN and no data is served; efused's /metrics counts the calls
the library served and those it passed to the kernel."""

import contextlib
import os
import signal
import stat
import socket
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run, write_file  # noqa: E402
from prom_text import free_port, parse, scrape, value  # noqa: E402
import test_coreutils  # noqa: E402

J = os.path.join
EFUSE_RUN = os.environ.get("EFUSE_RUN") or J(os.path.dirname(h.EFUSED), "efuse-run")
FSX = os.environ.get("EFUSE_FSX") or J(os.path.dirname(h.EFUSED), "efuse_fsx")
PROBE_BIN = J(os.path.dirname(h.EFUSED), "efuse_intercept_probe")
USER = (h.USER_UID, h.USER_GID)
OPS = ("open", "close", "read", "write", "lseek", "stat", "access", "readdir")


class Intercepted:
    """An efused with --intercept publishing into a private directory, and its /metrics."""

    def __init__(self, *args, backend="passthrough", mount=h.EfusedMount):
        self.pub = tempfile.mkdtemp(prefix="efuse-intercept-pub-", dir="/tmp")
        os.chmod(self.pub, 0o755)
        os.environ["EFUSE_INTERCEPT_DIR"] = self.pub  # efused and the library both read it
        self.port = free_port()
        try:
            self.m = mount(args=["--intercept", "--metrics", f"127.0.0.1:{self.port}", *args],
                           backend=backend)
        except BaseException:
            run(["rm", "-rf", self.pub])
            os.environ.pop("EFUSE_INTERCEPT_DIR", None)
            raise

    def close(self):
        try:
            self.m.cleanup()
        finally:
            run(["rm", "-rf", self.pub])
            os.environ.pop("EFUSE_INTERCEPT_DIR", None)

    def calls(self):
        samples = parse(scrape(self.port))
        return {(op, path): value(samples, "efuse_intercept_calls_total", mount="mnt", op=op,
                                  path=path) or 0
                for op in OPS for path in ("library", "kernel")}

    def run_both(self, cmd, **kw):
        """(output without the library, output with it, calls the library served)."""
        plain = run(cmd, **kw)
        before = self.calls()
        lib = run([EFUSE_RUN, *cmd], **kw)
        after = self.calls()
        served = {k: after[k] - before[k] for k in after}
        return plain, lib, served


def same_scripts(i, scripts, cwd):
    """Runs each bash script of {what: script} in `cwd` without and with the library; each
    must succeed without it and give the same results with it. Returns the calls the
    library served, summed over the scripts ({op: count})."""
    served = {}
    for what, script in scripts.items():
        plain, lib, s = i.run_both(["bash", "-o", "pipefail", "-c", script], cwd=cwd,
                                   check=False)
        assert plain.rc == 0, f"{what} failed without the library: {plain.err}"
        same(plain, lib, what)
        for k, v in s.items():
            served[k] = served.get(k, 0) + v
    return served


def socket_request(sock_path, payload, fds=(), descriptors_back=False):
    """One raw request on a mount's intercept socket (with `fds` attached): its reply's errno,
    or None when efused hung up. Descriptors in the reply are closed; one coming back where
    `descriptors_back` is false fails the test. A missing reply fails it after 60 s instead of
    hanging it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(sock_path)
        s.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               struct.pack(f"{len(fds)}i", *fds))] if fds else [])
        s.settimeout(60)
        msg, anc, _, _ = s.recvmsg(64, socket.CMSG_SPACE(4 * 4))
        back = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                back += struct.unpack(f"{len(data) // 4}i", data[:len(data) // 4 * 4])
        for fd in back:
            os.close(fd)
        assert descriptors_back or not back, "a descriptor came back"
        return struct.unpack("<iI", msg[:8])[0] if len(msg) >= 8 else None


@contextlib.contextmanager
def intercepted(*args, backend="passthrough", mount=h.EfusedMount):
    i = Intercepted(*args, backend=backend, mount=mount)
    try:
        yield i
    finally:
        i.close()


@contextlib.contextmanager
def child(cmd, user=None):
    """A process the test talks to over its stdin and stdout (as `user`, (uid, gid), with no
    supplementary groups, if given); killed if still running."""
    kw = {} if user is None else {"user": user[0], "group": user[1], "extra_groups": [],
                                  "cwd": "/"}
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, **kw)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def same(plain, lib, what):
    if (plain.rc, plain.out, plain.err) != (lib.rc, lib.out, lib.err):
        raise AssertionError(
            f"{what}: results differ with the library\n--- without (rc {plain.rc}) ---\n"
            f"{h._tail(plain.out + plain.err, 40)}\n--- with (rc {lib.rc}) ---\n"
            f"{h._tail(lib.out + lib.err, 40)}")


# Everything a file's stat says but its atime: the library reads the backing file's, the
# kernel path the atime it cached (FUSE updates it only with the attributes).
STAT_FMT = "%n %F %s %b %B %o %i %d %D %f %u %g %h %t %T %Y %y %Z"


def test_tools_same_with_and_without():
    """coreutils, tar, git, python: identical output with and without the library, and the
    library served the opens, reads and stats."""
    h.require_tools("git", "tar", "sha256sum", "stat", "find", "du", "ls")
    with intercepted() as i:
        m = i.m
        test_coreutils.make_tree(J(m.src, "tree"))
        run(["git", "init", "-q", J(m.src, "repo")])
        for n in range(20):
            write_file(J(m.src, "repo", f"f{n}.txt"), f"line {n}\n" * (n + 1))
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-c", "safe.directory=*"]
        run([*git, "add", "-A"], cwd=J(m.src, "repo"))
        run([*git, "commit", "-qm", "one"], cwd=J(m.src, "repo"))
        write_file(J(m.src, "repo", "f3.txt"), "changed\n")
        scripts = {
            "sha256sum": "find . -type f -print0 | sort -z | xargs -0 sha256sum",
            "cat": "find . -type f -print0 | sort -z | xargs -0 cat | sha256sum",
            "ls -lR": "ls -lRn --time-style=+%s .",
            "stat": f"find . -print0 | sort -z | xargs -0 stat -c '{STAT_FMT}'",
            "stat -L": "find . -type l -print0 | sort -z | xargs -0 stat -L -c '%n %s %i %d' || true",
            "du": "du -s --apparent-size . && du -s . && du -a . | sort -k2",
            "test -r -w -x": "find . -maxdepth 2 -print0 | sort -z | "
                             "while IFS= read -r -d '' f; do "
                             "printf '%s %s%s%s\\n' \"$f\" $(test -r \"$f\" && echo r) "
                             "$(test -w \"$f\" && echo w) $(test -x \"$f\" && echo x); done",
            "tar": "tar --sort=name -cf - tree | sha256sum && "
                   "tar --sort=name -cf - tree | tar -tvf - | tail -50",
            "git": f"cd repo && {' '.join(git)} status --porcelain && "
                   f"{' '.join(git)} ls-files -s && {' '.join(git)} fsck --no-progress && "
                   f"{' '.join(git)} diff --stat && {' '.join(git)} log --format=%H:%s",
        }
        served = same_scripts(i, scripts, m.mnt)
        py = ("import hashlib,os,sys\n"
              "for d, dirs, files in sorted(os.walk('.')):\n"
              "  dirs.sort()\n"
              "  for f in sorted(files):\n"
              "    p = os.path.join(d, f); st = os.lstat(p)\n"
              "    data = b'' if os.path.islink(p) or not os.path.isfile(p) else open(p,'rb').read()\n"
              "    print(p, st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_nlink,"
              " st.st_mtime_ns, st.st_ctime_ns, hashlib.sha256(data).hexdigest(),"
              " os.access(p, os.R_OK|os.W_OK))\n")
        plain, lib, s = i.run_both(["python3", "-c", py], cwd=m.mnt)
        same(plain, lib, "python os.walk")
        for k, v in s.items():
            served[k] = served.get(k, 0) + v
        # The library served them, and counted what it passed on (listings).
        for op in ("open", "read", "stat", "access", "close"):
            assert served[(op, "library")] > 0, f"no {op} served by the library: {served}"
        assert served[("readdir", "kernel")] > 0, served  # listings: the kernel's by default
        # With EFUSE_INTERCEPT_READDIR=1 the library reads listings too: the same output.
        env = dict(os.environ, EFUSE_INTERCEPT_READDIR="1")
        listed = 0
        for what in ("ls -lR", "stat", "du", "tar", "git"):
            plain, lib, s = i.run_both(["bash", "-o", "pipefail", "-c", scripts[what]], cwd=m.mnt,
                                       env=env)
            same(plain, lib, f"{what}, listings served")
            listed += s[("readdir", "library")]
        plain, lib, s = i.run_both(["python3", "-c", py], cwd=m.mnt, env=env)
        same(plain, lib, "python os.walk, listings served")
        assert listed + s[("readdir", "library")] > 0


def test_fsx_same_with_and_without():
    """fsx with one seed, on two files, once through the kernel and once under efuse-run:
    both pass and leave the same bytes (fsx creates its file, which the kernel path does;
    its reopens the library serves; test_intercept_writes runs it on an existing file)."""
    with intercepted() as i:
        seed = str(int.from_bytes(os.urandom(4), "little"))
        cmd = [FSX, "--ops", "3000", "--seed", seed]
        run([*cmd, J(i.m.mnt, "fsx.plain")], timeout=600)
        run([EFUSE_RUN, *cmd, J(i.m.mnt, "fsx.lib")], timeout=600)
        assert h.sha256_file(J(i.m.src, "fsx.plain")) == h.sha256_file(J(i.m.src, "fsx.lib"))


# Probes paths as the calling user and prints one line per check: the outcome only.
PROBE = r"""
import errno, os, stat, sys
def out(*a):
    print(*a, flush=True)
def res(fn, *a):
    try:
        r = fn(*a)
        return str(r) if isinstance(r, bool) else "ok" if r is None or isinstance(r, int) else r
    except OSError as e:
        return errno.errorcode[e.errno]
for p in sys.argv[1:]:
    def rd(p=p):
        fd = os.open(p, os.O_RDONLY)
        try:
            return os.read(fd, 64)
        finally:
            os.close(fd)
    def st(p=p, follow=True):
        s = os.stat(p, follow_symlinks=follow)
        return (stat.filemode(s.st_mode), s.st_size, s.st_ino, s.st_dev, s.st_uid, s.st_mtime_ns)
    def wr(p=p):
        os.close(os.open(p, os.O_WRONLY))
    def chmod_fd(p=p):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fchmod(fd, os.fstat(fd).st_mode & 0o7777)
        finally:
            os.close(fd)
    out(p, "read", res(rd))
    out(p, "stat", res(st))
    out(p, "lstat", res(st, p, False))
    for name, mode in (("R", os.R_OK), ("W", os.W_OK), ("X", os.X_OK), ("F", os.F_OK)):
        out(p, "access", name, res(os.access, p, mode),
            res(lambda: os.access(p, mode, effective_ids=True)))
    out(p, "write-open", res(wr))
    out(p, "fchmod", res(chmod_fd))
"""


def permission_tree(src):
    """Files and directories whose access depends on modes, ownership and ACLs."""
    def mk(rel, data=b"data\n", mode=0o644, uid=0, gid=0):
        p = J(src, rel)
        write_file(p, data, mode)
        os.chmod(p, mode)
        os.chown(p, uid, gid)
        return rel
    os.mkdir(J(src, "closed"), 0o700)
    os.mkdir(J(src, "searchonly"), 0o711)
    os.mkdir(J(src, "userdir"), 0o700)
    os.chown(J(src, "userdir"), *USER)
    paths = [
        mk("public"), mk("secret", mode=0o600), mk("mine", mode=0o600, uid=USER[0], gid=USER[1]),
        mk("group", mode=0o640, gid=USER[1]), mk("exec", b"#!/bin/sh\n", 0o755),
        mk("closed/inner"), mk("searchonly/inner"), mk("userdir/inner", uid=USER[0]),
        mk("acl-grant", mode=0o600), mk("acl-deny", mode=0o644), mk("acl-mask", mode=0o600),
    ]
    run(["setfacl", "-m", f"u:{USER[0]}:r", J(src, "acl-grant")])
    run(["setfacl", "-m", f"u:{USER[0]}:---", J(src, "acl-deny")])
    run(["setfacl", "-m", f"u:{USER[0]}:rw,m::r", J(src, "acl-mask")])
    os.symlink("public", J(src, "link"))
    os.symlink("../../etc/hostname", J(src, "escape"))
    os.symlink("searchonly", J(src, "dirlink"))  # a symlink on the way, not at the end
    os.symlink("/nonexistent-efuse-dir", J(src, "deadlink"))
    paths += ["link", "escape", "closed", "searchonly", "missing", "public/", "closed/missing",
              "dirlink/inner", "dirlink/missing", "deadlink/inner", "public/inner"]
    return paths


def compare_probe(i, paths, user):
    cmd = ["python3", "-c", PROBE, *[J(i.m.mnt, p) for p in paths]]
    plain, lib, served = i.run_both(cmd, user=user, cwd="/")
    same(plain, lib, f"probe as uid {user[0] if user else 0}")
    return plain, served


def test_other_user_acls():
    """As root and as another user: reads, stats, access and opens of files with modes and
    ACLs give what the kernel path gives, and the library served some of them."""
    h.require_tools("setfacl")
    with intercepted() as i:
        paths = permission_tree(i.m.src)
        for user in (None, USER):
            plain, served = compare_probe(i, paths, user)
            assert served[("open", "library")] > 0 and served[("stat", "library")] > 0, served
        # The checks bite: the other user is refused what the modes and ACLs refuse.
        lines = set(plain.out.splitlines())
        for p, want in (("secret", "EACCES"), ("acl-deny", "EACCES"), ("closed/inner", "EACCES"),
                        ("acl-grant", "b'data\\n'"), ("acl-mask", "b'data\\n'")):
            assert f"{J(i.m.mnt, p)} read {want}" in lines, (p, want, plain.out)
        # Each user counted into a file of their own, which the other may not write, in a
        # directory no user may list; a file forged for root by the user is not counted.
        counts = J(i.pub, "counts")
        assert stat.S_IMODE(os.stat(counts).st_mode) == 0o1733
        files = {os.stat(J(counts, n)).st_uid: J(counts, n) for n in os.listdir(counts)}
        assert set(files) == {0, USER[0]}, files
        for f, uid in ((files[0], 0), (files[USER[0]], USER[0])):
            assert os.stat(f).st_mode & 0o022 == 0 and f.endswith(f".{uid}"), f
        poke = ("import os,sys\n"
                "for f in sys.argv[1:]:\n"
                "  try: os.close(os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)); print('wrote', f)\n"
                "  except OSError as e: print(e.strerror)\n"
                "try: os.listdir(os.path.dirname(sys.argv[1])); print('listed')\n"
                "except OSError as e: print(e.strerror)\n")
        forged = files[0][:-1] + "99999"
        r = run(["python3", "-c", poke, files[0], forged], user=USER)
        assert r.out.splitlines() == ["Permission denied", f"wrote {forged}", "Permission denied"], r.out
        # A well-formed file (magic "EFUSEIR1", version 1, 144 bytes) of a billion calls each.
        with open(forged, "r+b") as f:  # named for uid 99999, owned by the user
            f.write(struct.pack("<QII", 0x3152494553554645, 1, 144) + struct.pack("<16Q", *[10**9] * 16))
        assert i.calls()[("open", "library")] < 10**9


def test_read_only_mount():
    """On a read-only mount writes and changes are EROFS with the library too, also through
    a descriptor the library opened (fchmod)."""
    with intercepted("--read-only") as i:
        paths = permission_tree(i.m.src)
        for user in (None, USER):
            plain, served = compare_probe(i, paths, user)
            assert served[("open", "library")] > 0, served
        lines = set(plain.out.splitlines())
        assert f"{J(i.m.mnt, 'mine')} fchmod EROFS" in lines, plain.out
        assert f"{J(i.m.mnt, 'mine')} access W False False" in lines, plain.out


# Opens FIFOs and device nodes of the mount in every way a path reaches them (one name under
# the mount's root, a longer path, relative to the working directory and to a directory
# descriptor), then looks whether the backing FIFO got a reader.
SPECIAL = r"""
import errno, os, stat, sys
mnt, src = sys.argv[1], sys.argv[2]
def res(fn):
    try:
        r = fn()
        return "ok" if r is None or isinstance(r, int) else r
    except OSError as e:
        return errno.errorcode[e.errno]
def backing_reader(rel):
    # A writer's non-blocking open of a FIFO fails with ENXIO while it has no reader.
    def w():
        os.close(os.open(os.path.join(src, rel), os.O_WRONLY | os.O_NONBLOCK))
    return res(w)
os.chdir(mnt)
d = os.open(os.path.join(mnt, "d"), os.O_RDONLY | os.O_DIRECTORY)
for rel in ("fifo", "dev", "d/fifo", "d/dev"):
    name = rel.split("/")[-1]
    ways = [("absolute", os.path.join(mnt, rel), None), ("relative", rel, None)]
    if "/" in rel:
        ways.append(("dirfd", name, d))
    for how, path, dfd in ways:
        def st():
            s = os.stat(path, dir_fd=dfd, follow_symlinks=False)
            return (stat.filemode(s.st_mode), s.st_ino, s.st_rdev)
        print(rel, how, "stat", res(st), flush=True)
        for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY):
            if flags == os.O_RDONLY and name == "fifo":
                continue  # would block (through the kernel too)
            def op():
                fd = os.open(path, flags, dir_fd=dfd)
                try:
                    got = (stat.filemode(os.fstat(fd).st_mode),
                           os.read(fd, 8) if flags & os.O_ACCMODE == os.O_RDONLY else b"")
                    return got + (backing_reader(rel) if name == "fifo" else "",)
                finally:
                    os.close(fd)
            print(rel, how, flags, res(op), flush=True)
"""


def test_fifos_and_devices_never_opened():
    """A FIFO or a device node on the mount is never opened by the library, however the path
    reaches it: the kernel path opens the mount's own FIFO (not the backing one, which keeps
    no reader) and refuses the device (nodev), and so does every open under the library."""
    with intercepted() as i:
        src = i.m.src
        os.mkdir(J(src, "d"))
        for rel in ("fifo", "d/fifo"):
            os.mkfifo(J(src, rel))
        for rel in ("dev", "d/dev"):
            os.mknod(J(src, rel), 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's
        for rel in ("fifo", "d/fifo", "dev", "d/dev"):
            os.chmod(J(src, rel), 0o666)  # the other user may open them, and look too
        write_file(J(src, "d", "file"), b"x")
        # The check bites: the backing FIFO has a reader while the backing device is open.
        fd = os.open(J(src, "fifo"), os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.close(os.open(J(src, "fifo"), os.O_WRONLY | os.O_NONBLOCK))
        finally:
            os.close(fd)
        for user in (None, USER):
            plain, lib, served = i.run_both(["python3", "-c", SPECIAL, i.m.mnt, src], cwd="/",
                                            user=user)
            same(plain, lib, f"FIFOs and devices as uid {user[0] if user else 0}")
            lines = plain.out.splitlines()
            nonblock = os.O_RDONLY | os.O_NONBLOCK
            assert any(line.startswith(f"fifo absolute {nonblock} ('p") and
                       line.endswith("'ENXIO')") for line in lines), plain.out
            assert f"dev absolute {os.O_RDONLY} EACCES" in lines, plain.out
            assert served[("stat", "library")] > 0, served


# Holds two files open, lets the test change them in the backing directory, reads again.
HOLDER = r"""
import os, sys
mnt = sys.argv[1]
held = os.open(os.path.join(mnt, "inplace"), os.O_RDONLY)
replaced = os.open(os.path.join(mnt, "replaced"), os.O_RDONLY)
print(os.pread(held, 100, 0), os.pread(replaced, 100, 0), flush=True)
sys.stdin.readline()
print(os.pread(held, 100, 0), os.fstat(held).st_size, flush=True)
print(os.pread(replaced, 100, 0), os.fstat(replaced).st_size, flush=True)
with open(os.path.join(mnt, "replaced"), "rb") as f:
    print(f.read(), flush=True)
"""


def test_outside_changes_while_held():
    """Files changed in the backing directory while a process holds them: rewritten in
    place, the held descriptor reads the new bytes; replaced by a rename, it keeps the old
    file and a new open finds the new one; the same with and without the library (FUSE
    passthrough, so the kernel path reads the backing file too)."""
    with intercepted("--io-path", "passthrough") as i:
        outside_changes_while_held(i)


def outside_changes_while_held(i, user=lambda cmd: cmd, each_run=None):
    """The scenario of test_outside_changes_while_held on `i`: the holder runs as
    user(command) (another user's, test_intercept_handover); each_run(prefix), if given, is
    called before each run and returns a check to call after it."""
    results = []
    for prefix in ([], [EFUSE_RUN]):
        write_file(J(i.m.src, "inplace"), b"old inplace\n")
        write_file(J(i.m.src, "replaced"), b"old replaced\n")
        after = each_run(prefix) if each_run else None
        with child(user([*prefix, "python3", "-c", HOLDER, i.m.mnt])) as p:
            first = p.stdout.readline()
            with open(J(i.m.src, "inplace"), "r+b") as f:
                f.write(b"NEW INPLACE, longer\n")
            write_file(J(i.m.src, "replaced.tmp"), b"new replaced\n")
            os.rename(J(i.m.src, "replaced.tmp"), J(i.m.src, "replaced"))
            # The kernel path learns of the rename through efused's watcher: wait until
            # the mount shows it, so both runs read after the same event.
            h.wait_until(lambda: h.read_file(J(i.m.mnt, "replaced")) == b"new replaced\n",
                         timeout=30, what="the rename to show through the mount")
            h.wait_until(lambda: os.stat(J(i.m.mnt, "inplace")).st_size == 20, timeout=30,
                         what="the new size to show through the mount")
            out, err = p.communicate(input="\n", timeout=60)
        assert p.returncode == 0, err
        results.append(first + out)
        if after:
            after()
    assert results[0] == results[1], results
    assert "NEW INPLACE" in results[1] and "old replaced" in results[1], results[1]


# What the DIRFD and CWD_REPLACED scripts share: res() runs a call and gives its result (a
# stat as mode, size, whether on the mount (the script's `dev`), links), or its errno's name;
# rd() reads a name, relative to a directory descriptor when given one.
DIR_PROBES = r"""
def res(fn, *a, **kw):  # (each run makes new files: inode numbers are not compared)
    try:
        r = fn(*a, **kw)
        if isinstance(r, os.stat_result):
            return (stat.filemode(r.st_mode), r.st_size, r.st_dev == dev, r.st_nlink)
        return r
    except OSError as e:
        return errno.errorcode[e.errno]
def rd(name, d=None):
    fd = os.open(name, os.O_RDONLY, dir_fd=d)
    try:
        return os.read(fd, 64)
    finally:
        os.close(fd)
"""


# Works in a directory of the mount (argv[2], below its root) while the test renames the
# backing directory on its path away and puts a symlink to a directory outside the backing
# tree there (holding the same names, other bytes), then a new directory: names relative to
# the working directory, and to directory descriptors of it (one bound by the library
# before the change, one first used after it), read and stat what the kernel path gives.
CWD_REPLACED = r"""
import errno, os, stat, subprocess, sys
mnt, cwd, fmt = sys.argv[1], sys.argv[2], sys.argv[3]
dev = os.stat(mnt).st_dev
""" + DIR_PROBES + r"""
def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return (r.returncode, r.stdout, r.stderr)
os.chdir(os.path.join(mnt, cwd))
held = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
rd("f", held)  # bound now, before the change
late = os.open(os.path.join(mnt, cwd), os.O_RDONLY | os.O_DIRECTORY)
def probe(tag):
    for name in ("f", "sub/g", "./f", "missing"):
        print(tag, name, res(rd, name), res(os.stat, name),
              res(os.stat, name, follow_symlinks=False), res(os.access, name, os.R_OK), flush=True)
    if tag != "start":
        for what, d in (("held", held), ("late", late)):
            print(tag, what, res(rd, "f", d), res(os.stat, "f", dir_fd=d), res(rd, "sub/g", d),
                  flush=True)
    print(tag, "cat", sh("cat", "f", "sub/g"), flush=True)
    print(tag, "stat", sh("stat", "-c", fmt, "f", "sub/g"), flush=True)
for line in sys.stdin:
    probe(line.strip())
"""


def test_working_directory_replaced_outside():
    """A process working in a directory of the mount while a directory on that directory's
    path is replaced in the backing tree by a symlink to a directory outside it (the same
    names, other bytes), then by a new directory: `cat`, `stat`, opens, stats and access of
    names relative to the working directory, and opens relative to directory descriptors of
    it, give what the kernel path gives (the directory the process is in, whatever its path
    now leads to), never the files outside, as root and as another user; and the library
    served those calls before the change."""
    outside = tempfile.mkdtemp(prefix="efuse-intercept-outside-", dir="/tmp")
    os.chmod(outside, 0o755)
    fmt = "%n %F %s %h %a %u %g"
    try:
        with intercepted() as i:
            m = i.m
            # The working directory itself replaced ("a"), and a directory above it ("p"),
            # whose name the kernel keeps in the working directory's path even once
            # efused's watcher dropped it.
            for cwd, swapped in (("p/a", "p"), ("a", "a")):
                below = os.path.relpath(J(m.src, cwd), J(m.src, swapped))  # "a" or "."
                for user in (None, USER):
                    results = []
                    served = None
                    for prefix in ([], [EFUSE_RUN]):
                        run(["rm", "-rf", J(m.src, swapped), J(m.src, swapped + ".old")])
                        run(["find", outside, "-mindepth", "1", "-delete"])
                        os.makedirs(J(m.src, cwd, "sub"))
                        write_file(J(m.src, cwd, "f"), b"inside f\n")
                        write_file(J(m.src, cwd, "sub", "g"), b"inside g\n")
                        os.makedirs(J(outside, below, "sub"), exist_ok=True)
                        write_file(J(outside, below, "f"), b"OUTSIDE f, longer\n")
                        write_file(J(outside, below, "sub", "g"), b"OUTSIDE g, longer\n")
                        # The kernel first forgets what the previous run left there.
                        h.wait_until(lambda: os.stat(J(m.mnt, cwd)).st_ino ==
                                     os.stat(J(m.src, cwd)).st_ino, timeout=30,
                                     what="the new directory to show through the mount")
                        before = i.calls()
                        with child([*prefix, "python3", "-c", CWD_REPLACED, m.mnt, cwd, fmt],
                                   user=user) as p:
                            out = []

                            def step(tag, lines):
                                if p.poll() is not None:
                                    raise AssertionError((out, p.stderr.read()))
                                p.stdin.write(tag + "\n")
                                p.stdin.flush()
                                out.extend(p.stdout.readline() for _ in range(lines))
                            step("start", 6)
                            started = i.calls()
                            os.rename(J(m.src, swapped), J(m.src, swapped + ".old"))
                            os.symlink(outside, J(m.src, swapped))
                            step("symlink", 8)
                            os.unlink(J(m.src, swapped))
                            os.makedirs(J(m.src, cwd, "sub"))
                            write_file(J(m.src, cwd, "f"), b"new f\n")
                            write_file(J(m.src, cwd, "sub", "g"), b"new g\n")
                            step("directory", 8)
                            rest, err = p.communicate(input="", timeout=60)
                        assert p.returncode == 0, (out, err)
                        results.append("".join(out) + rest)
                        served = {k: started[k] - before[k] for k in started}
                    what = f"cwd {cwd}, {swapped} replaced, as uid {user[0] if user else 0}"
                    assert results[0] == results[1], what + "\n" + "\n".join(
                        f"without: {a!r}\n   with: {b!r}"
                        for a, b in zip(results[0].splitlines(), results[1].splitlines())
                        if a != b)
                    text = results[1]
                    assert "OUTSIDE" not in text and "new f" not in text, (what, text)
                    assert "start f b'inside f\\n'" in text, (what, text)
                    assert served[("open", "library")] >= 2 and served[("stat", "library")] >= 2, \
                        (what, served)
            # With the working directory at the mount's root, relative names are served too.
            write_file(J(m.src, "top"), b"top\n")
            plain, lib, served = i.run_both(["bash", "-c", f"cat top && stat -c '{fmt}' top"],
                                            cwd=m.mnt)
            same(plain, lib, "cat and stat at the mount's root")
            assert served[("open", "library")] >= 1 and served[("stat", "library")] >= 1, served
    finally:
        run(["rm", "-rf", outside])


# Descriptor semantics: prints what it saw; the test compares the runs with and without.
DESCRIPTORS = r"""
import fcntl, os, sys, threading
path = sys.argv[1]
dev = os.stat(os.path.dirname(path)).st_dev
def info(fd):
    st = os.fstat(fd)
    return (st.st_dev == dev, st.st_size, os.get_inheritable(fd))
if len(sys.argv) > 2:  # after exec: the inherited descriptors
    keep, gone = int(sys.argv[2]), int(sys.argv[3])
    print("exec kept", info(keep), os.pread(keep, 5, 0), flush=True)
    try:
        os.fstat(gone)
        print("exec cloexec still open", flush=True)
    except OSError as e:
        print("exec cloexec", e.strerror, flush=True)
    sys.exit(0)
fd = os.open(path, os.O_RDONLY)
print("open", info(fd), os.read(fd, 4))
d1 = os.dup(fd); print("dup", info(d1), os.read(d1, 4))  # shares the offset
d2 = os.dup2(fd, 40); print("dup2", d2, info(40))
d3 = os.dup2(fd, 41, inheritable=False); print("dup3", d3, info(41))
d4 = fcntl.fcntl(fd, fcntl.F_DUPFD, 50); print("F_DUPFD", d4 >= 50, info(d4))
d5 = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 60); print("F_DUPFD_CLOEXEC", d5 >= 60, info(d5))
os.close(fd)
print("after close", info(d1), os.pread(d1, 4, 8))
lowest = os.open(path, os.O_RDONLY); print("lowest number", lowest == fd)
os.close(lowest)
pid = os.fork()
if pid == 0:
    os.write(1, repr(("child", info(d1), os.pread(d1, 6, 0))).encode() + b"\n")
    os._exit(0)
os.waitpid(pid, 0)
sys.stdout.flush()
keep = os.open(path, os.O_RDONLY); os.set_inheritable(keep, True)
gone = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, sys.argv[0], path, str(keep), str(gone)])
os.waitpid(pid, 0)
errors = []
def worker():
    for _ in range(200):
        f = os.open(path, os.O_RDONLY)
        try:
            if os.fstat(f).st_dev != dev or os.read(f, 100) != data:
                errors.append("mismatch")
        finally:
            os.close(f)
data = open(path, "rb").read()
threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("threads", errors)
survivor = fcntl.fcntl(d1, fcntl.F_DUPFD, 1001)
os.closerange(3, 1000)  # close_range: the library forgets them all (and loses its pidfd)
print("survivor", info(survivor), os.pread(survivor, 5, 0))
try:
    os.fstat(d1); print("closerange left d1 open")
except OSError as e:
    print("closerange", e.strerror)
again = os.open(path, os.O_RDONLY); print("after closerange", again, info(again), os.read(again, 5))
"""


def test_descriptors():
    with intercepted() as i:
        write_file(J(i.m.src, "file"), b"0123456789abcdefghij\n")
        script = J(i.pub, "descriptors.py")
        write_file(script, DESCRIPTORS)
        plain, lib, served = i.run_both(["python3", script, J(i.m.mnt, "file")])
        same(plain, lib, "descriptor semantics")
        assert "exec kept (True, 21, True) b'01234'" in lib.out, lib.out
        assert "exec cloexec Bad file descriptor" in lib.out, lib.out
        assert "threads []" in lib.out, lib.out
        assert "survivor (True, 21, True) b'01234'" in lib.out, lib.out
        assert served[("open", "library")] >= 800, served


def test_before_main_signal_handlers_threads():
    """A C program calling open, read, stat and fstat before main, from a signal handler
    that interrupts its own calls, and from four threads: the same with the library, which
    served them."""
    assert os.access(PROBE_BIN, os.X_OK), f"{PROBE_BIN} missing (build efuse_intercept_probe)"
    with intercepted() as i:
        write_file(J(i.m.src, "file"), b"probe data\n")
        f = J(i.m.mnt, "file")
        env = dict(os.environ, EFUSE_PROBE_FILE=f)
        plain, lib, served = i.run_both([PROBE_BIN, f], env=env, timeout=300)
        same(plain, lib, "efuse_intercept_probe")
        assert "before main: read same as in main: 1, device the same: 1" in lib.out, lib.out
        assert "signal handler: ran yes, errors 0; main thread errors 0" in lib.out, lib.out
        assert served[("open", "library")] > 2000 and served[("stat", "library")] > 2000, served


# Calls relative to directory descriptors opened through the mount (what find and fts do):
# the library answers them relative to the backing directory it bound the descriptor to.
# The test renames and replaces things between the steps (stdin lines), through the mount
# and in the backing directory; every line is compared with the run without the library.
DIRFD = r"""
import errno, os, stat, sys, time
mnt = sys.argv[1]
""" + DIR_PROBES + r"""
dev = os.stat(mnt).st_dev
def probe(tag, d):
    for name in ("f", "sub/g", "link", "sub", "missing", "sub/../f", "./f", "f/"):
        print(tag, name, res(os.stat, name, dir_fd=d, follow_symlinks=False),
              res(os.stat, name, dir_fd=d), res(rd, name, d),
              res(os.access, name, os.R_OK, dir_fd=d), flush=True)
d = os.open(os.path.join(mnt, "d"), os.O_RDONLY | os.O_DIRECTORY)
probe("start", d)
sys.stdin.readline()  # d renamed to e through the mount, then e to x in the backing tree
probe("renamed", d)
print("renamed path", res(os.stat, os.path.join(mnt, "x", "f")), flush=True)
sys.stdin.readline()  # x replaced in the backing tree by another directory
# Through the kernel the removed names go once efused's watcher invalidated them: wait for
# that (whichever path answers), so both runs probe after the same event.
for _ in range(3000):
    if all(res(os.stat, n, dir_fd=d) == "ENOENT" for n in ("f", "sub", "sub/../f", "link")):
        break
    time.sleep(0.01)
probe("replaced", d)
x = os.open(os.path.join(mnt, "x"), os.O_RDONLY | os.O_DIRECTORY)
probe("new x", x)
# Numbers reused: d closed and its number given to a directory outside the mount; x
# replaced by dup2 of that one.
os.close(d)
other = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
print("reused", other == d, flush=True)
probe("outside", other)
os.dup2(other, x)
probe("dup2 over", x)
"""


def test_dirfd_relative_calls():
    """fstatat/openat/faccessat relative to a directory descriptor of the mount: the same
    results with the library, also after the directory is renamed (through the mount and
    in the backing tree) or replaced, after its number is reused for a directory outside
    the mount, through a symlink, "..", "." and a trailing slash; and the library served
    them."""
    with intercepted() as i:
        m = i.m
        results = []
        served = None
        for prefix in ([], [EFUSE_RUN]):
            run(["rm", "-rf", J(m.src, "d"), J(m.src, "e"), J(m.src, "x"), J(m.native, "o")])
            os.makedirs(J(m.src, "d", "sub"))
            write_file(J(m.src, "d", "f"), b"first f\n")
            write_file(J(m.src, "d", "sub", "g"), b"first g\n")
            os.symlink("f", J(m.src, "d", "link"))
            os.makedirs(J(m.native, "o", "sub"))
            write_file(J(m.native, "o", "f"), b"outside\n")
            before = i.calls()
            with child([*prefix, "python3", "-c", DIRFD, m.mnt, J(m.native, "o")]) as p:
                out = [p.stdout.readline() for _ in range(8)]
                os.rename(J(m.mnt, "d"), J(m.mnt, "e"))
                os.rename(J(m.src, "e"), J(m.src, "x"))
                h.wait_until(lambda: os.path.exists(J(m.mnt, "x", "f")), timeout=30,
                             what="the outside rename to show through the mount")
                p.stdin.write("\n")
                p.stdin.flush()
                out += [p.stdout.readline() for _ in range(9)]
                run(["rm", "-rf", J(m.src, "x")])
                os.makedirs(J(m.src, "x", "sub"))
                write_file(J(m.src, "x", "f"), b"second f, longer\n")
                h.wait_until(lambda: os.path.exists(J(m.mnt, "x", "f")) and
                             os.stat(J(m.mnt, "x", "f")).st_size == 17, timeout=30,
                             what="the replaced directory to show")
                rest, err = p.communicate(input="\n", timeout=60)
            assert p.returncode == 0, err
            results.append("".join(out) + rest)
            after = i.calls()
            served = {k: after[k] - before[k] for k in after}
        assert results[0] == results[1], "\n".join(
            f"{a!r}\n{b!r}" for a, b in zip(results[0].splitlines(), results[1].splitlines())
            if a != b)
        text = results[1]
        assert "start f ('-rw-r--r--', 8," in text and "renamed f ('-rw-r--r--', 8," in text, text
        assert "replaced f ENOENT" in text and "new x f ('-rw-r--r--', 17," in text, text
        assert "reused True" in text and "outside f ('-rw-r--r--', 8, " in text, text
        assert served[("stat", "library")] >= 20 and served[("open", "library")] >= 8, served


# Lists directories through libc's opendir/readdir/telldir/seekdir/rewinddir/closedir (by
# ctypes, so the library's versions are the ones called): every entry's name, d_ino,
# d_type and d_off, in order, and what repositioning gives.
LISTING = r"""
import ctypes, os, sys
class Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_uint16), ("d_type", ctypes.c_uint8),
                ("d_name", ctypes.c_char * 256)]
libc = ctypes.CDLL(None, use_errno=True)
libc.opendir.restype = ctypes.c_void_p
libc.fdopendir.restype = ctypes.c_void_p
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.readdir.argtypes = libc.telldir.argtypes = libc.rewinddir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
def entries(d, n=None):
    out = []
    while n is None or len(out) < n:
        e = libc.readdir(d)
        if not e:
            break
        e = e.contents
        out.append((e.d_name.decode(), e.d_ino, e.d_type, e.d_off))
    return out
for path in sys.argv[1:]:
    d = libc.opendir(path.encode())
    if not d:
        print(path, "opendir", os.strerror(ctypes.get_errno()))
        continue
    first = entries(d, 10)
    pos = libc.telldir(d)
    five = entries(d, 5)
    libc.seekdir(d, pos)
    again = entries(d, 5)
    rest = entries(d)
    libc.rewinddir(d)
    head = entries(d, 3)
    print(path, len(first) + len(again) + len(rest), five == again, head == first[:3], flush=True)
    for e in first + again + rest:
        print(" ", *e)
    libc.closedir(d)
    # fdopendir of a descriptor opened through the mount (what fts does)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    d = libc.fdopendir(fd)
    print(path, "fdopendir", sorted(e[0] for e in entries(d)) == sorted(e[0] for e in first + again + rest))
    libc.closedir(d)
"""


def test_listings_same_with_and_without():
    """With EFUSE_INTERCEPT_READDIR=1, readdir of directories of the mount (the root, one of 1,500 entries spanning several
    buffers, an empty one, one the user may read but not search, one the user may not read):
    the same names, d_ino, d_type and d_off in the same order with the library, telldir,
    seekdir and rewinddir too, for root and another user; and the library served them."""
    with intercepted() as i:
        m = i.m
        big = J(m.src, "big")
        os.mkdir(big)
        for n in range(1500):
            write_file(J(big, f"file-with-a-longer-name-{n:05d}"), b"")
        os.mkdir(J(big, "subdir"))
        os.symlink("x", J(big, "link"))
        os.mkfifo(J(big, "fifo"))
        os.mkdir(J(m.src, "empty"))
        os.mkdir(J(m.src, "readonly"), 0o755)
        write_file(J(m.src, "readonly", "a"), b"")
        os.chmod(J(m.src, "readonly"), 0o744)  # others: read, no search
        os.mkdir(J(m.src, "closed"), 0o700)
        paths = [m.mnt, J(m.mnt, "big"), J(m.mnt, "empty"), J(m.mnt, "readonly"),
                 J(m.mnt, "closed")]
        env = dict(os.environ, EFUSE_INTERCEPT_READDIR="1")
        for user in (None, USER):
            plain, lib, served = i.run_both(["python3", "-c", LISTING, *paths], user=user,
                                            cwd="/", env=env)
            same(plain, lib, f"listings as uid {user[0] if user else 0}")
            assert served[("readdir", "library")] >= 1500, served
        assert f"{J(m.mnt, 'big')} 1505 True True" in lib.out, lib.out
        assert f"{J(m.mnt, 'closed')} opendir Permission denied" in lib.out, lib.out


# As another user: a directory descriptor opened while the directory was open to all,
# then probed after root closed it (mode 0700), and after an ACL gave the user back search
# permission only.
CLOSED_LATER = r"""
import errno, os, sys
d = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
def res(fn, *a, **kw):
    try:
        r = fn(*a, **kw)
        return "ok" if r is None else (r.st_size if isinstance(r, os.stat_result) else r)
    except OSError as e:
        return errno.errorcode[e.errno]
def rd(name):
    fd = os.open(name, os.O_RDONLY, dir_fd=d)
    try:
        return os.read(fd, 64)
    finally:
        os.close(fd)
for line in sys.stdin:
    for name in ("f", "sub/g", "missing"):
        print(line.strip(), name, res(os.stat, name, dir_fd=d, follow_symlinks=False),
              res(rd, name), res(os.access, name, os.R_OK, dir_fd=d), flush=True)
"""


def test_dirfd_permissions_change_while_held():
    """A user's directory descriptor bound by the library: when root takes away the user's
    search permission on the directory (mode, then an ACL that gives it back), calls relative
    to the descriptor are refused and allowed again exactly as through the kernel."""
    h.require_tools("setfacl")
    with intercepted() as i:
        m = i.m
        results = []
        served = None
        for prefix in ([], [EFUSE_RUN]):
            run(["rm", "-rf", J(m.src, "d")])
            os.makedirs(J(m.src, "d", "sub"))
            os.chmod(J(m.src, "d"), 0o755)
            write_file(J(m.src, "d", "f"), b"f data\n")
            write_file(J(m.src, "d", "sub", "g"), b"g data\n")
            # The second time: the kernel first forgets the directory the first run closed.
            h.wait_until(lambda: os.stat(J(m.mnt, "d")).st_ino == os.stat(J(m.src, "d")).st_ino,
                         timeout=30, what="the new directory to show through the mount")
            before = i.calls()
            with child([*prefix, "python3", "-c", CLOSED_LATER, J(m.mnt, "d")], user=USER) as p:
                out = []

                def step(tag):
                    if p.poll() is not None:
                        raise AssertionError((out, p.stderr.read()))
                    p.stdin.write(tag + "\n")
                    p.stdin.flush()
                    out.extend(p.stdout.readline() for _ in range(3))

                def mode_shows(want):
                    h.wait_until(lambda: stat.S_IMODE(os.stat(J(m.mnt, "d")).st_mode) == want,
                                 timeout=30, what=f"mode {want:o} to show through the mount")
                step("open")
                os.chmod(J(m.src, "d"), 0o700)  # in the backing directory: the watcher
                mode_shows(0o700)
                step("closed")
                run(["setfacl", "-m", f"u:{USER[0]}:x", J(m.mnt, "d")])  # through the mount
                step("acl")
                rest, err = p.communicate(input="", timeout=60)
            assert p.returncode == 0, (out, err)
            results.append("".join(out) + rest)
            after = i.calls()
            served = {k: after[k] - before[k] for k in after}
        assert results[0] == results[1], results
        lines = results[1].splitlines()
        assert "open f 7 b'f data\\n' True" in lines, lines
        assert "closed f EACCES EACCES False" in lines, lines
        assert "acl f 7 b'f data\\n' True" in lines, lines
        assert served[("stat", "library")] >= 3, served


# Probes paths inside the mount each time the test asks (a line on stdin): before, while
# and after a tmpfs is mounted on a directory inside the mount.
INSIDE = r"""
import errno, os, stat, sys
mnt = sys.argv[1]
dev = os.stat(mnt).st_dev
def res(fn, *a, **kw):
    try:
        r = fn(*a, **kw)
        if isinstance(r, os.stat_result):
            return (stat.filemode(r.st_mode), r.st_size, r.st_dev == dev)
        return r
    except OSError as e:
        return errno.errorcode[e.errno]
def rd(p, d=None):
    fd = os.open(p, os.O_RDONLY, dir_fd=d)
    try:
        return os.read(fd, 64)
    finally:
        os.close(fd)
top = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
held = os.open(os.path.join(mnt, "sub"), os.O_RDONLY | os.O_DIRECTORY)
for line in sys.stdin:
    sub = os.open(os.path.join(mnt, "sub"), os.O_RDONLY | os.O_DIRECTORY)
    tag = line.strip()
    for p in ("sub", "sub/x", "sub/deeper/y", "subsibling/z"):
        print(tag, p, res(os.stat, os.path.join(mnt, p), follow_symlinks=False),
              res(rd, os.path.join(mnt, p)), res(os.stat, p, dir_fd=top), res(rd, p, top),
              flush=True)
    print(tag, "x in sub", res(os.stat, "x", dir_fd=sub), res(rd, "x", sub), flush=True)
    print(tag, "x in held", res(os.stat, "x", dir_fd=held), res(rd, "x", held), flush=True)
    os.close(sub)
"""


def test_file_system_mounted_inside():
    """A tmpfs mounted on a directory inside the mount while a program runs: its paths, and
    calls relative to directory descriptors above it, show the tmpfs with the library as
    without (the library leaves them to the kernel once efused saw the mount table change),
    and the backing directory again after the unmount."""
    with intercepted() as i:
        m = i.m
        os.makedirs(J(m.src, "sub", "deeper"))
        os.makedirs(J(m.src, "subsibling"))
        write_file(J(m.src, "sub", "x"), b"backing x\n")
        write_file(J(m.src, "sub", "deeper", "y"), b"backing y\n")
        write_file(J(m.src, "subsibling", "z"), b"backing z\n")
        gen = J(i.pub, "generation")

        def generation():
            with open(gen, "rb") as f:
                return int.from_bytes(f.read(8), "little")
        results = []
        for prefix in ([], [EFUSE_RUN]):
            with child([*prefix, "python3", "-c", INSIDE, m.mnt]) as p:
                out = []

                def step(tag, lines=6):
                    p.stdin.write(tag + "\n")
                    p.stdin.flush()
                    out.extend(p.stdout.readline() for _ in range(lines))
                step("before")
                before = generation()
                run(["mount", "-t", "tmpfs", "-o", "mode=0755", "efuse-inside", J(m.mnt, "sub")])
                try:
                    write_file(J(m.mnt, "sub", "x"), b"tmpfs x\n")
                    h.wait_until(lambda: generation() > before, timeout=30,
                                 what="efused to see the mount table change")
                    step("mounted")
                finally:
                    before = generation()
                    run(["umount", J(m.mnt, "sub")])
                h.wait_until(lambda: generation() > before, timeout=30,
                             what="efused to see the unmount")
                step("unmounted")
                rest, err = p.communicate(input="", timeout=60)
            assert p.returncode == 0, err
            results.append("".join(out) + rest)
        assert results[0] == results[1], "\n".join(
            f"{a!r}\n{b!r}" for a, b in zip(results[0].splitlines(), results[1].splitlines())
            if a != b)
        lines = set(results[1].splitlines())
        for want in ("mounted sub/x ('-rw-r--r--', 8, False) b'tmpfs x\\n' "
                     "('-rw-r--r--', 8, False) b'tmpfs x\\n'",
                     "mounted x in sub ('-rw-r--r--', 8, False) b'tmpfs x\\n'",
                     # the directory underneath, held from before the mount
                     "mounted x in held ('-rw-r--r--', 10, True) b'backing x\\n'",
                     "unmounted sub/x ('-rw-r--r--', 10, True) b'backing x\\n' "
                     "('-rw-r--r--', 10, True) b'backing x\\n'"):
            assert want in lines, (want, results[1])


# Opens a file, reads it, waits; after the kill reads again and tries path calls.
DEAD = r"""
import ctypes, errno, os, stat, sys
mnt = sys.argv[1]
fd = os.open(os.path.join(mnt, "file"), os.O_RDONLY)
# A descriptor closed behind the library's back (a raw close) and its number reused by a
# pipe: never taken for the mount's.
gone = os.open(os.path.join(mnt, "file"), os.O_RDONLY)
ctypes.CDLL(None, use_errno=True).syscall(3, gone)  # SYS_close
r, w = os.pipe()
print(os.read(fd, 5), flush=True)
sys.stdin.readline()
os.write(w, b"x")
print("pipe", r == gone, os.read(r, 1), stat.S_ISFIFO(os.fstat(r).st_mode), file=sys.stderr)
def res(fn, *a):
    try:
        r = fn(*a)
        return "ok %r" % (r,)
    except OSError as e:
        return errno.errorcode[e.errno]
print("read", res(os.pread, fd, 5, 0))
print("fstat", res(lambda: os.fstat(fd).st_size))
print("open", res(os.open, os.path.join(mnt, "file"), os.O_RDONLY))
print("stat", res(lambda: os.stat(os.path.join(mnt, "file")).st_size))
print("access", res(os.access, os.path.join(mnt, "file"), os.R_OK))
print("close", res(os.close, fd))
"""


def test_efused_killed():
    """kill -9 of efused: a descriptor the library opened and every path call fail with
    ENOTCONN, without hanging and without serving the backing file's bytes."""
    with intercepted() as i:
        check_efused_killed(i)


def check_efused_killed(i, access=("access ok False",)):
    """(test_intercept_memory runs it on a memory mount, whose `src` is the mount, and whose
    `access` the kernel answers: from its cached attributes while they last.)"""
    write_file(J(i.m.src, "file"), b"secret data\n")
    with child([EFUSE_RUN, "python3", "-c", DEAD, i.m.mnt]) as p:
        assert p.stdout.readline().strip() == "b'secre'"
        assert i.calls()[("open", "library")] >= 1
        i.m.kill9()
        i.m.clean_exit = False
        out, err = p.communicate(input="\n", timeout=60)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert lines[:4] == ["read ENOTCONN", "fstat ENOTCONN", "open ENOTCONN", "stat ENOTCONN"], out
    assert lines[4] in access, out
    assert lines[5] == "close ok None", out
    assert "pipe True b'x' True" in err, err
    # The kernel path says the same for the path calls.
    plain = run(["python3", "-c", "import os,errno,sys\n"
                 "for f in (os.stat, lambda p: os.open(p, os.O_RDONLY)):\n"
                 "  try: f(sys.argv[1]); print('ok')\n"
                 "  except OSError as e: print(errno.errorcode[e.errno])",
                 J(i.m.mnt, "file")])
    assert plain.out.split() == ["ENOTCONN", "ENOTCONN"], plain.out


class ConfigMount(h.EfusedMount):
    """efused --config with one passthrough mount; `intercept` is its key's value."""

    def __init__(self, pub, closed_parent=False):
        self.port = free_port()
        self.pub = pub
        super().__init__(start=False, backend="passthrough", tag="efuse-intercept")
        if closed_parent:  # the mountpoint in a directory the test user may not search
            closed = J(self.tmp, "closed")
            os.mkdir(closed, 0o755)
            run(["setfacl", "-m", f"u:{USER[0]}:---", closed])
            self.mnt = J(closed, "mnt")
            os.mkdir(self.mnt, 0o755)
            self.mnts = [self.mnt]
        self.cfg = J(self.tmp, "mounts.yaml")
        self.write_config("true")

    def write_config(self, intercept):
        with open(self.cfg + ".new", "w") as f:
            f.write(f'metrics:\n  listen: "127.0.0.1:{self.port}"\nmounts:\n'
                    f"  - name: mnt\n    mountpoint: {self.mnt}\n    backend: passthrough\n"
                    f"    source: {self.src}\n    intercept: {intercept}\n")
        os.rename(self.cfg + ".new", self.cfg)

    def cmd(self):
        return [h.EFUSED, "--config", self.cfg, "--bus", "none"] + h.EFUSED_ARGS

    def reload(self, intercept):
        self.write_config(intercept)
        before = self.log_text().count("reload")
        self.proc.send_signal(signal.SIGHUP)
        h.wait_until(lambda: self.log_text().count("reload") > before, 10, what="the reload")

    def records(self):
        return [n for n in os.listdir(self.pub) if n.endswith(".rec")]


def test_reload_turns_it_on_and_off_live():
    """`intercept` changes on reload without a remount: withdrawn, the library stops serving
    (calls are neither served nor counted); published again, it serves anew."""
    pub = tempfile.mkdtemp(prefix="efuse-intercept-pub-", dir="/tmp")
    os.chmod(pub, 0o755)
    os.environ["EFUSE_INTERCEPT_DIR"] = pub
    try:
        with ConfigMount(pub) as m:
            m.start()
            write_file(J(m.src, "f"), b"data\n")
            dev = os.stat(m.mnt).st_dev

            def served():
                v = value(parse(scrape(m.port)), "efuse_intercept_calls_total", mount="mnt",
                          op="open", path="library")
                return v
            assert len(m.records()) == 1 and served() == 0
            # A long-running process under efuse-run sees every change: it opens the file
            # each time the test asks.
            # It also holds the descriptor of its first open: turning intercept off leaves
            # it working (the mount goes on).
            opener = ("import os,sys\n"
                      "held = None\n"
                      "for line in sys.stdin:\n"
                      "  fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                      "  held = fd if held is None else held\n"
                      "  print(os.read(fd, 10), os.pread(held, 4, 0), flush=True)\n"
                      "  fd != held and os.close(fd)\n")
            with child([EFUSE_RUN, "python3", "-c", opener, J(m.mnt, "f")]) as p:
                def once():
                    p.stdin.write("\n")
                    p.stdin.flush()
                    assert p.stdout.readline().strip() == "b'data\\n' b'data'"
                once()
                assert served() == 1
                m.reload("false")
                h.wait_until(lambda: not m.records(), 10, what="the record to be withdrawn")
                assert "efuse_intercept_calls_total" not in scrape(m.port)
                once()  # through the kernel now
                m.reload("true")
                h.wait_until(lambda: len(m.records()) == 1, 10, what="the record again")
                assert served() == 0  # new counters (a reset to Prometheus)
                once()
                assert served() == 1
                p.communicate(input="", timeout=30)
            assert os.stat(m.mnt).st_dev == dev  # never remounted
    finally:
        run(["rm", "-rf", pub])
        os.environ.pop("EFUSE_INTERCEPT_DIR", None)


def test_mountpoint_parent_closed_to_the_user():
    """The kernel refuses a user who may not search the directory above the mountpoint
    (here through an ACL), although the backing directory is open to them: the library
    refuses too, and still serves root."""
    h.require_tools("setfacl")
    pub = tempfile.mkdtemp(prefix="efuse-intercept-pub-", dir="/tmp")
    os.chmod(pub, 0o755)
    os.environ["EFUSE_INTERCEPT_DIR"] = pub
    try:
        with ConfigMount(pub, closed_parent=True) as m:
            m.start()
            write_file(J(m.src, "f"), b"data\n")
            probe = ["python3", "-c", PROBE, J(m.mnt, "f"), J(m.mnt, "missing")]
            i = Intercepted.__new__(Intercepted)  # run_both and calls() over this mount
            i.port, i.m = m.port, m
            plain, lib, served = i.run_both(probe, user=USER, cwd="/")
            same(plain, lib, "probe as the user")
            assert f"{J(m.mnt, 'f')} read EACCES" in plain.out.splitlines(), plain.out
            assert served[("open", "library")] == 0, served
            plain, lib, served = i.run_both(probe, cwd="/")
            same(plain, lib, "probe as root")
            assert served[("open", "library")] > 0, served
            # Root first (the library loads the mount then), then the user: refused per call.
            drop = ["python3", "-c", "import os,sys\n"
                    f"os.stat(sys.argv[1]); os.setgroups([]); os.setresgid({USER[1]},{USER[1]},{USER[1]})\n"
                    f"os.setresuid({USER[0]},{USER[0]},{USER[0]})\n"
                    "sys.argv[1:2] = []\n" + PROBE, m.mnt, J(m.mnt, "f")]
            plain, lib, served = i.run_both(drop, cwd="/")
            same(plain, lib, "probe after dropping to the user")
            assert f"{J(m.mnt, 'f')} read EACCES" in plain.out.splitlines(), plain.out
    finally:
        run(["rm", "-rf", pub])
        os.environ.pop("EFUSE_INTERCEPT_DIR", None)


def test_no_xattr_mount_counted_only():
    """With --no-xattr the kernel checks mode bits only and ignores ACLs, which the backing
    file system applies: an ACL granting the user a file its mode refuses is refused with
    the library too (the library serves nothing there, it only counts)."""
    h.require_tools("setfacl")
    with intercepted("--no-xattr") as i:
        write_file(J(i.m.src, "acl-grant"), b"data\n", 0o600)
        os.chmod(J(i.m.src, "acl-grant"), 0o600)
        run(["setfacl", "-m", f"u:{USER[0]}:r", J(i.m.src, "acl-grant")])
        write_file(J(i.m.src, "public"), b"data\n", 0o644)
        plain, served = compare_probe(i, ["acl-grant", "public"], USER)
        assert f"{J(i.m.mnt, 'acl-grant')} read EACCES" in plain.out.splitlines(), plain.out
        assert all(v == 0 for (op, path), v in served.items() if path == "library"), served
        assert served[("open", "kernel")] > 0, served


def test_not_published_paths_untouched():
    """Paths outside the mount, and a mount without --intercept, are plain libc: the same
    results and no counting."""
    with intercepted() as i:
        write_file(J(i.m.native, "x"), b"native\n")
        plain, lib, served = i.run_both(["bash", "-c", f"cat {i.m.native}/x; stat -c '%s %i %d' "
                                         f"{i.m.native}/x; ls {i.m.native}"])
        same(plain, lib, "native paths")
        assert all(v == 0 for v in served.values()), served


if __name__ == "__main__":
    h.main(globals(), require=["python3", "bash", "setfacl"])
