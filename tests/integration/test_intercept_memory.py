#!/usr/bin/env python3
"""libefuse_intercept.so on a memory mount (`backend: memory`, `intercept: true`) whose file
data lives in efused's private tmpfs: opens for reading are served by the library, which
gets the file's data file from efused over the mount's socket (the kernel walks the path
O_PATH with the caller's credentials, efused checks modes and ACLs) and reads the tmpfs
pages itself; everything else goes through the kernel. Every program gives the same results
with and without the library (coreutils, tar extract and compare, python file I/O, descriptor
semantics across dup, fork, exec and close_range); as another user, with ACLs and on a
read-only mount nothing is granted that the kernel path refuses; a file changed through the
kernel path while a library process holds it reads the same; after kill -9 of efused calls
fail with ENOTCONN and nothing hangs; efused's /metrics counts the calls the library served
and those it passed to the kernel."""

import errno
import json
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run, write_file  # noqa: E402
from prom_text import parse, scrape, value  # noqa: E402
import test_coreutils  # noqa: E402
import test_intercept as ti  # noqa: E402
from test_intercept_handover import as_user  # noqa: E402

J = os.path.join
USER = ti.USER
MAGIC = 0x3152494553554645


def memory():
    return ti.intercepted(backend="memory")


def handovers(i):
    samples = parse(scrape(i.port))
    return {r: value(samples, "efuse_intercept_handovers_total", mount="mnt", result=r) or 0
            for r in ("opened", "refused")}


def add(total, served):
    for k, v in served.items():
        total[k] = total.get(k, 0) + v


PYIO = r"""
import hashlib, io, mmap, os, stat, sys
for p in sorted(sys.argv[1:]):
    st = os.lstat(p)
    if not stat.S_ISREG(st.st_mode):
        continue
    with open(p, "rb") as f:
        fs = os.fstat(f.fileno())
        head = f.read(7)
        f.seek(0, io.SEEK_END)
        end = f.tell()
        f.seek(max(0, end // 2))
        mid = f.read(9)
        f.seek(0)
        lines = sum(1 for _ in f)
        data = os.pread(f.fileno(), st.st_size + 10, 0)
        mapped = b""
        if st.st_size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                mapped = m[:]
        names = os.listxattr(f.fileno())
        values = [os.getxattr(f.fileno(), n) for n in names]
        vfs = os.fstatvfs(f.fileno())
    print(p, (fs.st_ino, fs.st_dev, fs.st_mode, fs.st_nlink, fs.st_uid, fs.st_size, fs.st_blocks,
              fs.st_blksize, fs.st_mtime_ns, fs.st_ctime_ns) == (st.st_ino, st.st_dev, st.st_mode,
              st.st_nlink, st.st_uid, st.st_size, st.st_blocks, st.st_blksize, st.st_mtime_ns,
              st.st_ctime_ns), head, end, mid, lines, hashlib.sha256(data).hexdigest(),
          mapped == data, names, values, names == os.listxattr(p), vfs.f_bsize, vfs.f_namemax,
          vfs.f_blocks == os.statvfs(p).f_blocks)
import fcntl
p = [a for a in sys.argv[1:] if a.endswith("/big")][0]
for flags in (os.O_RDONLY, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, os.O_RDONLY | os.O_APPEND):
    fd = os.open(p, flags)
    print("F_GETFL", oct(flags), oct(fcntl.fcntl(fd, fcntl.F_GETFL)), oct(fcntl.fcntl(fd, fcntl.F_GETFD)))
    os.close(fd)
"""


def test_tools_same_with_and_without():
    """cat, cp, ls -l, stat, find, sha256sum, tar (create, extract, compare), git and python
    file I/O: identical output with and without the library, which served the opens and reads,
    while stats and listings went through the kernel (both counted)."""
    h.require_tools("tar", "sha256sum", "stat", "find", "ls", "cp", "setfattr", "getfattr", "git")
    with memory() as i:
        m = i.m
        test_coreutils.make_tree(J(m.mnt, "tree"))
        write_file(J(m.mnt, "tree", "big"), os.urandom(3 * 1024 * 1024 + 17))
        write_file(J(m.mnt, "tree", "zero"), b"")
        run(["setfattr", "-n", "user.note", "-v", "kept", J(m.mnt, "tree", "big")])
        run(["tar", "--sort=name", "-cf", J(m.native, "tree.tar"), "-C", m.mnt, "tree"])
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-c", "safe.directory=*"]
        run(["git", "init", "-q", J(m.mnt, "repo")])
        for n in range(20):
            write_file(J(m.mnt, "repo", f"f{n}.txt"), f"line {n}\n" * (n + 1))
        run([*git, "add", "-A"], cwd=J(m.mnt, "repo"))
        run([*git, "commit", "-qm", "one"], cwd=J(m.mnt, "repo"))
        write_file(J(m.mnt, "repo", "f3.txt"), "changed\n")
        out = J(m.native, "out")
        os.mkdir(out)
        scripts = {
            "cat": "find tree -type f -print0 | sort -z | xargs -0 cat | sha256sum && cat tree/big | wc -c",
            "sha256sum": "find tree -type f -print0 | sort -z | xargs -0 sha256sum",
            "ls -l": "ls -lRn --time-style=+%s tree",
            "stat": f"find tree -print0 | sort -z | xargs -0 stat -c '{ti.STAT_FMT}'",
            "fstat of stdin": "for f in tree/big tree/zero; do python3 -c 'import os; s = os.fstat(0); "
                              "print(s.st_size, s.st_ino, s.st_dev, s.st_mode, s.st_nlink, s.st_blocks)' < $f; done",
            "find": "find tree -type f -size +0 -newer tree/zero -print | sort; find tree -empty | sort",
            "cp": f"d=$(mktemp -d -p {out}); cp -a tree $d/ && cd $d && "
                  "find . -type f -print0 | sort -z | xargs -0 sha256sum && "
                  "find . -mindepth 1 -print0 | sort -z | xargs -0 stat -c '%n %s %a %u %g %Y' && "
                  "getfattr -d -m - --absolute-names tree/big 2>/dev/null | sort; "
                  "cd / && rm -rf $d",
            "tar -c": "tar --sort=name -cf - tree | sha256sum && tar --sort=name -cf - tree | tar -tvf - | sort",
            "tar -d": f"tar -df {J(m.native, 'tree.tar')} && echo same",
            "git": f"cd repo && {' '.join(git)} status --porcelain && "
                   f"{' '.join(git)} ls-files -s && {' '.join(git)} fsck --no-progress && "
                   f"{' '.join(git)} diff --stat && {' '.join(git)} log --format=%H:%s",
        }
        total = ti.same_scripts(i, scripts, m.mnt)
        # tar extract into the mount (writes: the kernel's), then compare, both ways.
        for tag in ("plain", "lib"):
            os.mkdir(J(m.mnt, f"x-{tag}"))
        run(["tar", "-xf", J(m.native, "tree.tar"), "-C", J(m.mnt, "x-plain")])
        run([ti.EFUSE_RUN, "tar", "-xf", J(m.native, "tree.tar"), "-C", J(m.mnt, "x-lib")])
        for tag in ("plain", "lib"):
            plain, lib, s = i.run_both(["tar", "-df", J(m.native, "tree.tar"), "-C",
                                        J(m.mnt, f"x-{tag}")], check=False)
            assert plain.rc == 0, plain.out + plain.err
            ti.same(plain, lib, f"tar -d of the tree extracted {tag}")
            add(total, s)
        files = sorted(J(d, f) for d, _, fs in os.walk(J(m.mnt, "tree")) for f in fs)
        plain, lib, s = i.run_both(["python3", "-c", PYIO, *files])
        ti.same(plain, lib, "python file I/O")
        assert " True b'" in lib.out and "F_GETFL" in lib.out, lib.out
        add(total, s)
        for op in ("open", "read", "close"):
            assert total[(op, "library")] > 0, f"no {op} served by the library: {total}"
        for op in ("open", "stat", "readdir"):
            assert total[(op, "kernel")] > 0, f"no {op} counted for the kernel: {total}"
        assert handovers(i)["opened"] > 0, handovers(i)


def test_other_user_acls():
    """As root and as another user (with and without a supplementary group): reads, stats,
    access, opens for writing and fchmod of files with modes, group ownership and ACLs give
    what the kernel path gives; efused handed over what the modes and ACLs grant and refused
    the rest, which the kernel then answered the same way."""
    h.require_tools("setfacl")
    with memory() as i:
        paths = ti.permission_tree(i.m.mnt)
        write_file(J(i.m.mnt, "suppl"), b"group data\n", 0o640)
        os.chown(J(i.m.mnt, "suppl"), 0, 4242)
        os.chmod(J(i.m.mnt, "suppl"), 0o640)
        write_file(J(i.m.mnt, "acl-group"), b"acl group\n", 0o600)
        run(["setfacl", "-m", "g:4242:r", J(i.m.mnt, "acl-group")])
        write_file(J(i.m.mnt, "acl-nomask"), b"acl other\n", 0o604)
        run(["setfacl", "-m", f"u:{USER[0]}:r,m::---", J(i.m.mnt, "acl-nomask")])
        paths += ["suppl", "acl-group", "acl-nomask"]
        outs = {}
        for user, groups in ((None, ()), (USER, ()), (USER, (4242,))):
            probe = ["python3", "-c", ti.PROBE, *[J(i.m.mnt, p) for p in paths]]
            if user is not None:
                plain_cmd, lib_cmd = as_user(probe, groups), as_user([ti.EFUSE_RUN, *probe], groups)
            else:
                plain_cmd, lib_cmd = probe, [ti.EFUSE_RUN, *probe]
            plain = run(plain_cmd, cwd="/")
            before, calls_before = handovers(i), i.calls()
            lib = run(lib_cmd, cwd="/")
            after, calls_after = handovers(i), i.calls()
            ti.same(plain, lib, f"probe as {user} with groups {groups}")
            opened = after["opened"] - before["opened"]
            served = calls_after[("open", "library")] - calls_before[("open", "library")]
            # Served: the data files efused passed, and the ENOENT/ENOTDIR the walk answered.
            assert opened > 0 and served >= opened, (opened, served)
            if user is not None:
                assert after["refused"] > before["refused"], (before, after)
            outs[(user, groups)] = set(plain.out.splitlines())
        lines = outs[(USER, ())]
        for p, want in (("secret", "EACCES"), ("acl-deny", "EACCES"), ("closed/inner", "EACCES"),
                        ("acl-grant", "b'data\\n'"), ("acl-mask", "b'data\\n'"),
                        ("public", "b'data\\n'"), ("suppl", "EACCES"), ("acl-group", "EACCES"),
                        ("acl-nomask", "b'acl other\\n'")):
            assert f"{J(i.m.mnt, p)} read {want}" in lines, (p, want)
        grouped = outs[(USER, (4242,))]
        assert f"{J(i.m.mnt, 'suppl')} read b'group data\\n'" in grouped
        assert f"{J(i.m.mnt, 'acl-group')} read b'acl group\\n'" in grouped
        assert f"{J(i.m.mnt, 'mine')} fchmod ok" in lines
        assert f"{J(i.m.mnt, 'public')} fchmod EPERM" in lines
        assert f"{J(i.m.mnt, 'secret')} read b'data\\n'" in outs[(None, ())]


def test_read_only_mount():
    """The memory mount made read-only at the VFS (mount -o remount,bind,ro, its contents
    kept): reads are served, opens for writing and fchmod through a library descriptor are
    EROFS with the library as without it."""
    with memory() as i:
        paths = ti.permission_tree(i.m.mnt)
        run(["mount", "-o", "remount,bind,ro", i.m.mnt])
        try:
            for user in (None, USER):
                plain, served = ti.compare_probe(i, paths, user)
                assert served[("open", "library")] > 0, served
            lines = set(plain.out.splitlines())
            assert f"{J(i.m.mnt, 'mine')} fchmod EROFS" in lines, plain.out
            assert f"{J(i.m.mnt, 'mine')} write-open EROFS" in lines, plain.out
            assert f"{J(i.m.mnt, 'public')} read b'data\\n'" in lines, plain.out
        finally:
            run(["mount", "-o", "remount,bind,rw", i.m.mnt], check=False)


# Holds files open; the test changes them through the kernel path; reads again.
HOLDER = r"""
import json, os, sys
mnt = sys.argv[1]
fds = {n: os.open(os.path.join(mnt, n), os.O_RDONLY) for n in ("inplace", "grown", "cut", "replaced", "removed", "chmodded")}
def show():
    for n, fd in sorted(fds.items()):
        st = os.fstat(fd)
        print(json.dumps([n, os.pread(fd, 100, 0).decode(), st.st_size, st.st_nlink, oct(st.st_mode),
                          st.st_blocks, st.st_mtime_ns == os.fstat(fd).st_mtime_ns]), flush=True)
show()
print("ready", flush=True)
sys.stdin.readline()
show()
with open(os.path.join(mnt, "replaced"), "rb") as f:
    print(json.dumps(["reopened", f.read().decode()]), flush=True)
"""


def test_changes_through_the_kernel_while_held():
    """Files changed through the kernel path (another process, no library) while a process
    holds them open: rewritten in place, grown, truncated, replaced by a rename, removed,
    chmodded; the held descriptors read and stat the same with and without the library (the
    data files are the pages the kernel's passthrough opens write)."""
    with memory() as i:
        mnt = i.m.mnt
        results = []
        before = i.calls()
        for prefix in ([], [ti.EFUSE_RUN]):
            for n in ("inplace", "grown", "cut", "replaced", "removed", "chmodded"):
                write_file(J(mnt, n), f"old {n} contents\n".encode())
            with ti.child([*prefix, "python3", "-c", HOLDER, mnt]) as p:
                first = []
                while True:
                    line = p.stdout.readline()
                    assert line, p.stderr.read()
                    if line.strip() == "ready":
                        break
                    first.append(line)
                with open(J(mnt, "inplace"), "r+b") as f:
                    f.write(b"NEW")
                with open(J(mnt, "grown"), "ab") as f:
                    f.write(b"appended, longer now\n")
                os.truncate(J(mnt, "cut"), 4)
                write_file(J(mnt, "replaced.tmp"), b"new replaced\n")
                os.rename(J(mnt, "replaced.tmp"), J(mnt, "replaced"))
                os.unlink(J(mnt, "removed"))
                os.chmod(J(mnt, "chmodded"), 0o600)
                out, err = p.communicate(input="\n", timeout=60)
            assert p.returncode == 0, err
            results.append("".join(first) + out)
            for n in ("inplace", "grown", "cut", "replaced", "chmodded"):
                os.unlink(J(mnt, n))
        assert results[0] == results[1], results
        assert i.calls()[("open", "library")] - before[("open", "library")] >= 7, i.calls()
        got = [json.loads(line) for line in results[1].splitlines()]
        for want in (["inplace", "NEW inplace contents\n", 21, 1], ["cut", "old ", 4, 1],
                     ["replaced", "old replaced contents\n", 22, 0],
                     ["removed", "old removed contents\n", 21, 0],
                     ["grown", "old grown contents\nappended, longer now\n", 40, 1],
                     ["chmodded", "old chmodded contents\n", 22, 1, "0o100600"]):
            assert any(g[:len(want)] == want for g in got), (want, got)
        assert ["reopened", "new replaced\n"] in got, got


def test_descriptors():
    """dup, dup2, dup3, F_DUPFD, fork, exec (inherited and close-on-exec), threads and
    close_range: the same with and without the library, which served the opens."""
    with memory() as i:
        write_file(J(i.m.mnt, "file"), b"0123456789abcdefghij\n")
        script = J(i.pub, "descriptors.py")
        write_file(script, ti.DESCRIPTORS)
        plain, lib, served = i.run_both(["python3", script, J(i.m.mnt, "file")])
        ti.same(plain, lib, "descriptor semantics")
        assert "exec kept (True, 21, True) b'01234'" in lib.out, lib.out
        assert "exec cloexec Bad file descriptor" in lib.out, lib.out
        assert "threads []" in lib.out, lib.out
        assert "survivor (True, 21, True) b'01234'" in lib.out, lib.out
        assert served[("open", "library")] >= 800, served
        # A program (bash, then the commands it runs) that keeps a descriptor across exec.
        script = ("exec 3<file; head -c 4 <&3; echo; "
                  "python3 -c 'import os; s = os.fstat(3); print(s.st_size, s.st_ino, s.st_dev, "
                  "s.st_mode, os.read(3, 6))'; exec 3<&-")
        plain, lib, served = i.run_both(["bash", "-c", script], cwd=i.m.mnt)
        ti.same(plain, lib, "a descriptor kept across exec")
        assert served[("open", "library")] >= 1, served


def test_efused_killed():
    """kill -9 of efused: a data file the library handed out and every path call fail with
    ENOTCONN, without hanging and without serving the file's bytes."""
    with memory() as i:
        ti.check_efused_killed(i, access=("access ok False", "access ok True"))


def send_node(sock_path, payload, fds):
    return ti.socket_request(sock_path, payload, fds, descriptors_back=True)


def test_socket_refuses_what_is_not_the_mounts():
    """The socket hands a data file out only for a regular file of this mount sent as a
    descriptor, to a caller its modes let read: another file system's file, a directory, a
    path request (passthrough's form), an open for writing, and a file the caller may not
    read are refused."""
    with memory() as i:
        write_file(J(i.m.mnt, "f"), b"x\n")
        write_file(J(i.m.mnt, "secret"), b"s\n", 0o600)
        os.chmod(J(i.m.mnt, "secret"), 0o600)
        socks = [J(i.pub, n) for n in os.listdir(i.pub) if n.endswith(".sock")]
        assert len(socks) == 1, os.listdir(i.pub)
        node = struct.pack("<QIIII", MAGIC, 1, 4, os.O_RDONLY, 0)
        fds = {n: os.open(p, os.O_PATH) for n, p in (("f", J(i.m.mnt, "f")), ("secret", J(i.m.mnt, "secret")),
                                                      ("dir", i.m.mnt), ("other", "/etc/hostname"))}
        try:
            assert send_node(socks[0], node, [fds["f"]]) == 0
            assert send_node(socks[0], node, [fds["other"]]) == errno.EINVAL
            assert send_node(socks[0], node, [fds["dir"]]) == errno.EINVAL
            assert send_node(socks[0], struct.pack("<QIIII", MAGIC, 1, 4, os.O_RDWR, 0), [fds["f"]]) == errno.EINVAL
            assert send_node(socks[0], node, []) == errno.EINVAL
            assert send_node(socks[0], struct.pack("<QIIII", MAGIC, 1, 3, 0, 1) + b"f", []) == errno.EOPNOTSUPP
            # As the test user: its own identity is what efused checks.
            code = ("import os,socket,struct,sys\n"
                    "s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET); s.connect(sys.argv[1])\n"
                    "fd=os.open(sys.argv[2],os.O_PATH)\n"
                    f"s.sendmsg([struct.pack('<QIIII',{MAGIC},1,4,0,0)],[(socket.SOL_SOCKET,socket.SCM_RIGHTS,struct.pack('i',fd))])\n"
                    "d,a,_,_=s.recvmsg(8,socket.CMSG_SPACE(4)); print(struct.unpack('<iI',d)[0], len(a))\n")
            r = run(["python3", "-c", code, socks[0], J(i.m.mnt, "secret")], user=USER)
            assert r.out.split() == [str(errno.EACCES), "0"], r.out
            r = run(["python3", "-c", code, socks[0], J(i.m.mnt, "f")], user=USER)
            assert r.out.split() == ["0", "1"], r.out
        finally:
            for fd in fds.values():
                os.close(fd)


if __name__ == "__main__":
    h.main(globals(), require=["python3", "bash", "setfacl"])
