#!/usr/bin/env python3
"""The hand-over of libefuse_intercept.so: a process under efuse-run that cannot open a
backing file itself (here the backing directory sits in a directory closed to it, while the
mount lets it in) has efused open it with its own credentials, checked from SO_PEERCRED
and SO_PEERGROUPS, and gets the descriptor over the mount's socket. Results equal those
without the library: as another user, with supplementary groups, with ACLs, on a read-only
mount, with files changed in the backing directory while held, for writing (the kernel's
view stays exact); efused counts the hand-overs (efuse_intercept_handovers_total); bad
requests on the socket get a clear errno and harm nothing."""

import errno
import glob
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run, write_file  # noqa: E402
from prom_text import parse, scrape, value  # noqa: E402
import test_intercept as ti  # noqa: E402

J = os.path.join
USER = ti.USER
GROUP = 4242  # a supplementary group of the user's in one probe, none of its own


class HiddenSourceMount(h.EfusedMount):
    """A passthrough mount whose source is tmp/hidden/src, `hidden` being root's, mode 0700:
    the test user may use the mount (its root is the source, mode 0755) but cannot reach the
    backing directory itself."""

    def __init__(self, args=(), backend=None):
        super().__init__(args=args, backend=backend, start=False, tag="efuse-handover")
        hidden = J(self.tmp, "hidden")
        os.mkdir(hidden, 0o700)
        self.src = J(hidden, "src")
        os.mkdir(self.src, 0o755)
        self.srcs = [self.src]
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise


def warm(i):
    """Root lists the mount first. Without it, on a fresh mount whose source lies in a
    directory closed to the user, the user's very first open through the kernel path fails
    with EACCES (a second identical open succeeds; efused sees no refusal: a defect of the
    kernel path left for its own fix, reported with this branch), and the runs with and
    without the library would differ by that alone."""
    os.listdir(i.m.mnt)


def handovers(i):
    samples = parse(scrape(i.port))
    return {r: value(samples, "efuse_intercept_handovers_total", mount="mnt", result=r) or 0
            for r in ("opened", "refused")}


def as_user(cmd, groups=()):
    """`cmd` run as the test user with supplementary `groups`: root drops, then execs (so
    the library, when `cmd` starts with efuse-run, loads as the user)."""
    drop = ("import os,sys\n"
            f"os.setgroups({list(groups)!r}); os.setresgid({USER[1]},{USER[1]},{USER[1]})\n"
            f"os.setresuid({USER[0]},{USER[0]},{USER[0]})\n"
            "os.execvp(sys.argv[1], sys.argv[1:])\n")
    return ["python3", "-c", drop, *cmd]


def test_other_user_groups_acls():
    """As another user (with and without a supplementary group): reads, opens for writing
    and fchmod of files with modes, group ownership and ACLs give what the kernel path
    gives; efused opened the files the user may open, refused the others, and the user's
    own attempts never reached the backing directory."""
    h.require_tools("setfacl")
    with ti.intercepted(mount=HiddenSourceMount) as i:
        paths = ti.permission_tree(i.m.src)
        write_file(J(i.m.src, "suppl"), b"group data\n", 0o640)
        os.chown(J(i.m.src, "suppl"), 0, GROUP)
        os.chmod(J(i.m.src, "suppl"), 0o640)
        paths.append("suppl")
        warm(i)
        assert run(["python3", "-c", "import os,sys; os.stat(sys.argv[1])", J(i.m.src, "public")],
                   user=USER, check=False).rc != 0, "the backing directory must be closed to the user"
        outs = {}
        for groups in ((), (GROUP,)):
            probe = ["python3", "-c", ti.PROBE, *[J(i.m.mnt, p) for p in paths]]
            plain = run(as_user(probe, groups), cwd="/")
            before, calls_before = handovers(i), i.calls()
            lib = run(as_user([ti.EFUSE_RUN, *probe], groups), cwd="/")
            after, calls_after = handovers(i), i.calls()
            ti.same(plain, lib, f"probe as uid {USER[0]} with groups {groups}")
            opened = after["opened"] - before["opened"]
            refused = after["refused"] - before["refused"]
            # public, group, exec, searchonly/inner, acl-grant, acl-mask, mine (read and
            # write), link: handed over; secret, closed/inner, acl-deny...: refused.
            assert opened >= 6 and refused >= 3, (opened, refused)
            served = calls_after[("open", "library")] - calls_before[("open", "library")]
            assert served == opened, (served, opened)
            outs[groups] = set(plain.out.splitlines())
        for p, want in (("secret", "EACCES"), ("acl-deny", "EACCES"), ("closed/inner", "EACCES"),
                        ("acl-grant", "b'data\\n'"), ("acl-mask", "b'data\\n'"),
                        ("public", "b'data\\n'")):
            assert f"{J(i.m.mnt, p)} read {want}" in outs[()], (p, want)
        assert f"{J(i.m.mnt, 'suppl')} read EACCES" in outs[()]
        assert f"{J(i.m.mnt, 'suppl')} read b'group data\\n'" in outs[(GROUP,)]
        assert f"{J(i.m.mnt, 'mine')} write-open ok" in outs[()]
        assert f"{J(i.m.mnt, 'mine')} fchmod ok" in outs[()]
        assert f"{J(i.m.mnt, 'public')} fchmod EPERM" in outs[()]


def test_read_only_mount():
    """On a read-only mount efused hands over opens for reading only: opens for writing
    and fchmod are EROFS with the library as without it."""
    with ti.intercepted("--read-only", mount=HiddenSourceMount) as i:
        paths = ti.permission_tree(i.m.src)
        warm(i)
        probe = ["python3", "-c", ti.PROBE, *[J(i.m.mnt, p) for p in paths]]
        plain = run(as_user(probe), cwd="/")
        before = handovers(i)
        lib = run(as_user([ti.EFUSE_RUN, *probe]), cwd="/")
        after = handovers(i)
        ti.same(plain, lib, "probe on a read-only mount")
        lines = set(plain.out.splitlines())
        assert f"{J(i.m.mnt, 'mine')} write-open EROFS" in lines, plain.out
        assert f"{J(i.m.mnt, 'mine')} fchmod EROFS" in lines, plain.out
        assert f"{J(i.m.mnt, 'public')} read b'data\\n'" in lines, plain.out
        assert after["opened"] > before["opened"], (before, after)
        socks = glob.glob(J(i.pub, f"m-*-{i.m.proc.pid}.sock"))
        assert len(socks) == 1, os.listdir(i.pub)
        # The socket takes no write marks there.
        fd = os.open(J(i.m.src, "mine"), os.O_RDWR)
        try:
            assert send(socks[0], struct.pack("<QII", MAGIC, 1, 1), [fd]) == errno.EROFS
        finally:
            os.close(fd)


def test_outside_changes_while_held():
    """As the user, files rewritten in place and replaced by a rename in the backing
    directory while held read the same with and without the library."""
    with ti.intercepted("--io-path", "passthrough", mount=HiddenSourceMount) as i:
        def each_run(prefix):
            warm(i)
            before = handovers(i)

            def check():
                if prefix:  # the library's three opens were handed over by efused
                    assert handovers(i)["opened"] - before["opened"] == 3, handovers(i)
            return check
        ti.outside_changes_while_held(i, as_user, each_run)


WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
os.write(fd, b"written by the user, handed over\n")
print("written", flush=True)
sys.stdin.readline()
os.write(fd, b"and more\n")
print("more", flush=True)
sys.stdin.readline()
os.close(fd)
"""


def test_writes_stay_exact():
    """A file the user opens for writing through a hand-over: the kernel path (another
    process, no library) sees size and bytes exactly after each write returned, and the
    file is counted as written while open."""
    with ti.intercepted(mount=HiddenSourceMount) as i:
        f = J(i.m.src, "mine")
        write_file(f, b"an older and longer content than what comes\n", 0o600)
        os.chown(f, *USER)
        os.stat(J(i.m.mnt, "mine"))  # cached by the kernel before the writer starts
        before = handovers(i)
        with ti.child(as_user([ti.EFUSE_RUN, "python3", "-c", WRITER, J(i.m.mnt, "mine")])) as p:
            assert p.stdout.readline().strip() == "written"
            want = b"written by the user, handed over\n"
            assert os.stat(J(i.m.mnt, "mine")).st_size == len(want)
            assert h.read_file(J(i.m.mnt, "mine")) == want
            assert value(parse(scrape(i.port)), "efuse_intercept_written_files", mount="mnt") == 1
            p.stdin.write("\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "more"
            want += b"and more\n"
            assert os.stat(J(i.m.mnt, "mine")).st_size == len(want)
            assert h.read_file(J(i.m.mnt, "mine")) == want
            p.communicate(input="\n", timeout=60)
        assert p.returncode == 0
        assert handovers(i)["opened"] - before["opened"] == 1


MAGIC = 0x3152494553554645


def send(sock_path, payload, fds=()):
    return ti.socket_request(sock_path, payload, fds)


def open_request(path, flags=os.O_RDONLY, path_len=None):
    p = path.encode()
    return struct.pack("<QIIII", MAGIC, 1, 3, flags, len(p) if path_len is None else path_len) + p


BAD = r"""
import errno, os, socket, struct, sys
sock = sys.argv[1]
MAGIC = 0x3152494553554645
def req(path, flags=os.O_RDONLY, path_len=None, fds=()):
    p = path.encode()
    payload = struct.pack("<QIIII", MAGIC, 1, 3, flags, len(p) if path_len is None else path_len) + p
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(sock)
        s.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
                  if fds else [])
        msg, anc, _, _ = s.recvmsg(64, socket.CMSG_SPACE(4))
        got = [struct.unpack("i", d[:4])[0] for l, k, d in anc if k == socket.SCM_RIGHTS]
        err = struct.unpack("<iI", msg)[0]
        print(errno.errorcode.get(err, err), "fd" if got else "-", flush=True)
        for fd in got:
            print(os.read(fd, 64), flush=True)
            os.close(fd)
req("/etc/passwd")
req("../../../etc/passwd")
req("public", os.O_RDONLY | os.O_CREAT)
req("public", os.O_RDONLY | os.O_DIRECTORY)
req("public", os.O_RDONLY, path_len=99)
req("public", os.O_RDONLY, fds=[0])
req("secret")
req("link")
req("public")
"""


def test_bad_requests_on_the_socket():
    """Malformed hand-over requests get EINVAL, a path leaving the backing tree or a symlink
    never opens anything, a file the user may not read is refused (EACCES), root is never
    handed a descriptor (EPERM), nor is a user who may not search the directory above the
    mountpoint (EACCES); efused and the mount go on, and a good request after them is
    answered with the descriptor."""
    with ti.intercepted(mount=HiddenSourceMount) as i:
        ti.permission_tree(i.m.src)
        sock = glob.glob(J(i.pub, f"m-*-{i.m.proc.pid}.sock"))[0]
        before = handovers(i)
        r = run(as_user(["python3", "-c", BAD, sock]), cwd="/")
        assert r.out.splitlines() == [
            "EINVAL -", "EXDEV -", "EINVAL -", "EINVAL -", "EINVAL -", "EINVAL -",
            "EACCES -", "EINVAL -", "0 fd", "b'data\\n'"], r.out
        after = handovers(i)
        assert after["opened"] - before["opened"] == 1
        assert after["refused"] - before["refused"] == 3  # ../, secret, link
        assert send(sock, open_request("public")) == errno.EPERM  # this test runs as root
        # A user who may not search the directory above the mountpoint gets nothing through
        # the kernel path, nor by asking efused directly.
        run(["setfacl", "-m", f"u:{USER[0]}:---", i.m.tmp])
        try:
            r = run(as_user(["python3", "-c", BAD, sock]), cwd="/")
            assert r.out.splitlines()[-1] == "EACCES -", r.out
        finally:
            run(["setfacl", "-b", i.m.tmp])
        assert i.m.proc.poll() is None, "efused died"
        assert h.read_file(J(i.m.mnt, "public")) == b"data\n"


if __name__ == "__main__":
    h.main(globals(), require=["python3", "setfacl"])
