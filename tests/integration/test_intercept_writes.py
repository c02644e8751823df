#!/usr/bin/env python3
"""Writes through libefuse_intercept.so on a passthrough mount (docs/intercept.md): opens
for writing of existing files, write/pwrite/writev, O_APPEND, O_TRUNC, ftruncate and
fchmod on the descriptors the library hands out give the same results as through the
kernel (coreutils, python, tar --overwrite, fsx), and whatever the kernel path shows of a
file written through the library (size, times, mode, bytes) is exact the moment the
library's call returned, also while the file is held open through the mount, from a forked
child after the parent closed, and with the page cache as the mount's I/O path. A
read-only mount refuses with EROFS as the kernel does; malformed requests on efused's
socket get a clear error and harm nothing; kill -9 of efused fails a held descriptor's
writes with ENOTCONN, without a hang."""

import errno
import glob
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run, write_file  # noqa: E402
from prom_text import parse, scrape, value  # noqa: E402
from test_intercept import EFUSE_RUN, FSX, child, intercepted, same  # noqa: E402
from test_intercept import socket_request as send  # noqa: E402

J = os.path.join


def make_files(d):
    os.makedirs(d)
    write_file(J(d, "small"), b"small file\n")
    write_file(J(d, "log"), b"first line\n")
    write_file(J(d, "big"), bytes(range(256)) * 4096)  # 1 MiB
    write_file(J(d, "dest"), b"old destination, longer than the new one\n")
    write_file(J(d, "grow"), b"")
    write_file(J(d, "py"), b"0123456789" * 10)
    os.makedirs(J(d, "t"))
    write_file(J(d, "t", "a"), b"old a, to be overwritten by tar\n")
    write_file(J(d, "t", "b"), b"old b\n")


WRITES = r"""
set -e
printf 'hello\n' > small
printf 'second line\n' >> log
dd if=/dev/zero of=big bs=4096 seek=3 count=2 conv=notrunc status=none
printf 'new\n' > src_copy && cp -f src_copy dest
truncate -s 100000 grow
python3 - <<'EOF'
import os
fd = os.open("py", os.O_RDWR)
os.pwrite(fd, b"PWRITE", 5)
os.lseek(fd, 0, os.SEEK_END)
os.writev(fd, [b"-v1", b"-v2"])
os.ftruncate(fd, 90)
os.fchmod(fd, 0o600)
os.close(fd)
with open("log", "a") as f:
    f.write("python append\n")
EOF
tar -xf "$TARBALL" --overwrite
sha256sum small log big dest grow py t/a t/b
stat -c '%n %s %f %h' small log big dest grow py t/a t/b
"""


def metric(i, name):
    return value(parse(scrape(i.port)), name, mount="mnt") or 0


def test_writes_same_with_and_without():
    """The same writes into two identical trees, through the kernel and under efuse-run:
    the same output, the same bytes and sizes through the mount, and the library served
    the opens and the writes."""
    h.require_tools("tar", "dd", "truncate", "sha256sum")
    with intercepted() as i:
        m = i.m
        tarball = J(m.tmp, "t.tar")
        os.makedirs(J(m.tmp, "tarsrc", "t"))
        write_file(J(m.tmp, "tarsrc", "t", "a"), b"from tar\n")
        write_file(J(m.tmp, "tarsrc", "t", "b"), b"from tar too, longer\n")
        run(["tar", "-cf", tarball, "-C", J(m.tmp, "tarsrc"), "t"])
        # Made through the mount: made in the backing directory, the watcher's invalidation
        # of the new names can land after bash entered them (its getcwd then fails).
        for d in ("plain", "lib"):
            make_files(J(m.mnt, d))
        env = dict(os.environ, TARBALL=tarball)
        plain = run(["bash", "-c", WRITES], cwd=J(m.mnt, "plain"), env=env, check=False)
        before = i.calls()
        lib = run([EFUSE_RUN, "bash", "-c", WRITES], cwd=J(m.mnt, "lib"), env=env, check=False)
        after = i.calls()
        assert plain.rc == 0, plain.err
        same(plain, lib, "writes")
        served = {k: after[k] - before[k] for k in after}
        assert served[("write", "library")] > 0 and served[("open", "library")] > 0, served
        # Through the mount (the kernel's view) both trees say the same.
        for name in ("small", "log", "big", "dest", "grow", "py", "t/a", "t/b"):
            a, b = os.stat(J(m.mnt, "plain", name)), os.stat(J(m.mnt, "lib", name))
            assert (a.st_size, a.st_mode) == (b.st_size, b.st_mode), name
            assert h.read_file(J(m.mnt, "plain", name)) == h.read_file(J(m.mnt, "lib", name)), name
        # fsx on an existing file (so the library serves its opens), one seed both ways.
        seed = str(int.from_bytes(os.urandom(4), "little"))
        for name in ("fsx.plain", "fsx.lib"):
            write_file(J(m.src, name), b"")
        before = i.calls()
        run([FSX, "--ops", "3000", "--seed", seed, J(m.mnt, "fsx.plain")], timeout=600)
        run([EFUSE_RUN, FSX, "--ops", "3000", "--seed", seed, J(m.mnt, "fsx.lib")], timeout=600)
        after = i.calls()
        assert h.sha256_file(J(m.mnt, "fsx.plain")) == h.sha256_file(J(m.mnt, "fsx.lib"))
        assert after[("write", "library")] - before[("write", "library")] > 0


# Takes commands on stdin, one per line, and answers each once done: the writer.
WRITER = r"""
import os, sys
fd = None
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "open":
        fd = os.open(arg[0], os.O_RDWR | (os.O_APPEND if arg[1:] == ["append"] else 0))
    elif cmd == "write":
        os.pwrite(fd, arg[0].encode(), int(arg[1]))
    elif cmd == "append":
        os.write(fd, arg[0].encode())
    elif cmd == "truncate":
        os.ftruncate(fd, int(arg[0]))
    elif cmd == "chmod":
        os.fchmod(fd, int(arg[0], 8))
    elif cmd == "fork":  # the child keeps the descriptor, the parent closes it
        pid = os.fork()
        if pid == 0:
            for line in sys.stdin:
                c, *a = line.split()
                if c == "write":
                    os.pwrite(fd, a[0].encode(), int(a[1]))
                print("child", c, flush=True)
                if c == "exit":
                    os._exit(0)
        os.close(fd)
        print("forked", flush=True)
        os.waitpid(pid, 0)
        continue
    elif cmd == "close":
        os.close(fd)
    print("done", cmd, flush=True)
"""

# Takes paths on stdin and answers with what the kernel path shows of each.
READER = r"""
import os, stat, sys
for line in sys.stdin:
    p = line.strip()
    st = os.stat(p)
    with open(p, "rb") as f:
        data = f.read()
    print(st.st_size, oct(stat.S_IMODE(st.st_mode)), st.st_mtime_ns, st.st_ctime_ns, data, flush=True)
"""


def ask(p, line):
    p.stdin.write(line + "\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


def check_exact(reader, path):
    """What the kernel path shows equals the backing file, at once."""
    got = ask(reader, path["mnt"])
    st = os.stat(path["src"])
    want = (f"{st.st_size} {oct(stat_mode(st))} {st.st_mtime_ns} {st.st_ctime_ns} "
            f"{h.read_file(path['src'])!r}")
    assert got == want, (got, want)


def stat_mode(st):
    return st.st_mode & 0o7777


def exactness_run(i, name):
    """The writer under efuse-run changes `name` step by step; after each step the kernel
    path (a reader without the library, which keeps its stat and page caches warm in
    between) shows exactly what the backing file holds."""
    m = i.m
    write_file(J(m.src, name), b"0123456789")
    path = {"mnt": J(m.mnt, name), "src": J(m.src, name)}
    with child([EFUSE_RUN, "python3", "-c", WRITER]) as w, child(["python3", "-c", READER]) as r:
        check_exact(r, path)  # cached now: attributes for 60 s, pages where the cache serves
        before = i.calls()
        for step in ("open " + path["mnt"], "write ABCDEFGHIJKLMNOPQRST 5", "append _appended",
                     "truncate 7", "write zz 100", "chmod 600", "close"):
            assert ask(w, step) == "done " + step.split()[0]
            check_exact(r, path)
        after = i.calls()
        assert after[("open", "library")] - before[("open", "library")] == 1, (before, after)
        assert after[("write", "library")] - before[("write", "library")] >= 3
        # A forked child keeps writing after the parent closed: still exact (the file stays
        # uncached while any open for writing of it remains), also after a few sweeps.
        assert ask(w, "open " + path["mnt"]) == "done open"
        assert ask(w, "fork") == "forked"
        time.sleep(2.5)  # lets efused's sweeps run (the check below holds either way)
        assert ask(w, "write CHILD 3") == "child write"
        check_exact(r, path)
        assert ask(w, "exit") == "child exit"
        w.stdin.close()
        assert w.wait(timeout=60) == 0, w.stderr.read()
    # Once nothing has it open for writing, efused lets the kernel cache it again.
    h.wait_until(lambda: metric(i, "efuse_intercept_written_files") == 0, timeout=60,
                 what="the file to be cached again")


def test_kernel_view_exact_after_each_write():
    """Size, times, mode and bytes through the kernel path are exact after every write,
    append, truncate and fchmod the library made, with the mount's default I/O path."""
    with intercepted() as i:
        exactness_run(i, "file")


def test_page_cache_io_path():
    """With the page cache as the I/O path: an open for writing while the file is open
    through the page cache is left to the kernel (refused, counted); once that open is
    closed the library serves it, and the kernel's opens of the file are then uncached, so
    the reader still sees every write at once."""
    with intercepted("--io-path", "cache") as i:
        m = i.m
        write_file(J(m.src, "held"), b"held through the page cache\n")
        with child(["python3", "-c",
                    "import os,sys\nfd=os.open(sys.argv[1],os.O_RDONLY)\n"
                    "print(os.read(fd,100),flush=True)\nsys.stdin.readline()\n"
                    "print(os.pread(fd,100,0),flush=True)", J(m.mnt, "held")]) as holder:
            assert holder.stdout.readline().strip() == repr(b"held through the page cache\n")
            refusals = metric(i, "efuse_intercept_write_refusals_total")
            before = i.calls()
            run([EFUSE_RUN, "python3", "-c",
                 "import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY)\nos.write(fd,b'HELD')\n"
                 "os.close(fd)", J(m.mnt, "held")])
            after = i.calls()
            assert after[("open", "kernel")] - before[("open", "kernel")] == 1, (before, after)
            assert metric(i, "efuse_intercept_write_refusals_total") == refusals + 1
            out, _ = holder.communicate(input="\n", timeout=60)
            assert out.strip() == repr(b"HELD through the page cache\n"), out
        exactness_run(i, "file")


def test_read_only_mount_refuses():
    """On a read-only mount, opens for writing, O_TRUNC and O_APPEND fail with EROFS with
    the library as without it (and the library never opened the file for writing)."""
    with intercepted("--read-only") as i:
        write_file(J(i.m.src, "f"), b"data\n")
        script = ("import errno,os,sys\n"
                  "for fl in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY|os.O_TRUNC, os.O_WRONLY|os.O_APPEND,"
                  " os.O_WRONLY|os.O_CREAT):\n"
                  "  try: os.close(os.open(sys.argv[1], fl)); print('opened')\n"
                  "  except OSError as e: print(errno.errorcode[e.errno])\n")
        plain, lib, served = i.run_both(["python3", "-c", script, J(i.m.mnt, "f")])
        same(plain, lib, "write opens on a read-only mount")
        assert plain.out.split() == ["EROFS"] * 5, plain.out
        assert served[("open", "library")] == 0 and served[("open", "kernel")] == 5, served
        assert h.read_file(J(i.m.src, "f")) == b"data\n"
        # The socket is there for hand-overs (test_intercept_handover) and takes no marks.
        for sock in glob.glob(J(i.pub, "*.sock")):
            fd = os.open(J(i.m.src, "f"), os.O_RDWR)
            try:
                assert send(sock, struct.pack("<QII", 0x3152494553554645, 1, 1), [fd]) == errno.EROFS
            finally:
                os.close(fd)


def test_bad_requests_on_the_socket():
    """Malformed requests on efused's intercept socket each get a clear errno (EINVAL for
    a bad message, EBADF for a read-only descriptor offered as written); a client that
    connects and leaves harms nothing; the mount and the library's writes work after."""
    with intercepted() as i:
        m = i.m
        write_file(J(m.src, "f"), b"data\n")
        socks = glob.glob(J(i.pub, f"m-*-{m.proc.pid}.sock"))
        assert len(socks) == 1, os.listdir(i.pub)
        sock = socks[0]
        assert os.stat(sock).st_mode & 0o777 == 0o666
        good = struct.pack("<QII", 0x3152494553554645, 1, 1)  # EFUSE_IREQ_WRITING
        wfd = os.open(J(m.src, "f"), os.O_RDWR)
        rfd = os.open(J(m.src, "f"), os.O_RDONLY)
        dfd = os.open(m.src, os.O_RDONLY | os.O_DIRECTORY)
        pr, pw = os.pipe()
        try:
            cases = [
                ("short", b"abc", [wfd], errno.EINVAL),
                ("no descriptor", good, [], errno.EINVAL),
                ("two descriptors", good, [wfd, rfd], errno.EINVAL),
                ("bad magic", struct.pack("<QII", 1, 1, 1), [wfd], errno.EINVAL),
                ("bad version", struct.pack("<QII", 0x3152494553554645, 99, 1), [wfd], errno.EINVAL),
                ("bad op", struct.pack("<QII", 0x3152494553554645, 1, 99), [wfd], errno.EINVAL),
                ("too long", good + b"x" * 100, [wfd], errno.EINVAL),
                ("read-only descriptor", good, [rfd], errno.EBADF),
                ("directory", good, [dfd], errno.EINVAL),
                ("pipe", good, [pw], errno.EINVAL),
                ("changed: pipe", struct.pack("<QII", 0x3152494553554645, 1, 2), [pr], errno.EINVAL),
            ]
            for what, payload, fds, want in cases:
                assert send(sock, payload, fds) == want, what
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(sock)  # and leaves
            # A well-formed request is answered.
            assert send(sock, good, [wfd]) == 0
        finally:
            for fd in (wfd, rfd, dfd, pr, pw):
                os.close(fd)
        assert m.proc.poll() is None, "efused died"
        # The mount and the library's writes still work and stay exact.
        exactness_run(i, "after")


def test_efused_killed_while_writing():
    """kill -9 of efused while a process under efuse-run holds a file open for writing: its
    writes fail with ENOTCONN at once (no hang) and change nothing."""
    with intercepted() as i:
        write_file(J(i.m.src, "f"), b"before\n")
        with child([EFUSE_RUN, "python3", "-c", WRITER]) as w:
            assert ask(w, "open " + J(i.m.mnt, "f")) == "done open"
            assert ask(w, "write ok 0") == "done write"
            i.m.kill9()
            i.m.clean_exit = False
            w.stdin.write("write LOST 0\n")
            w.stdin.close()
            assert w.wait(timeout=60) != 0
            assert "Errno 107" in w.stderr.read()  # ENOTCONN
        assert h.read_file(J(i.m.src, "f")) == b"okfore\n"


if __name__ == "__main__":
    h.main(globals())
