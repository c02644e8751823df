#!/usr/bin/env python3
"""options.xattr: false (--no-xattr): efused answers xattr requests ENOSYS, the kernel then
stops sending them for the mount (getfattr/setfattr fail with ENOTSUP), writes and chowns no
longer cost a security.capability GETXATTR each, and nothing else changes: data, modes,
owners and the backing file's own xattrs stay as they are. With the default the same
workload does reach efused with those GETXATTRs and xattrs work."""

import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port, parse, scrape  # noqa: E402

J = os.path.join
FILES = 20


def requests(port, mount, opcode):
    return sum(v for n, labels, v in parse(scrape(port))
               if n == "efuse_requests_total" and labels.get("mount") == mount
               and labels.get("opcode") == opcode)


def extract_like_tar(d):
    """What tar does per file as root: create, write, chown, chmod, set times."""
    for i in range(FILES):
        p = J(d, f"f{i}")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"x" * (1000 + i))
        os.write(fd, b"y" * 100)
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o644)
        os.utime(fd, (1_000_000, 1_000_000 + i))
        os.close(fd)


def check_extracted(d):
    for i in range(FILES):
        st = os.stat(J(d, f"f{i}"))
        assert (st.st_size, st.st_mode & 0o7777, st.st_mtime) == (1100 + i, 0o644,
                                                                   1_000_000 + i), st
        with open(J(d, f"f{i}"), "rb") as f:
            assert f.read() == b"x" * (1000 + i) + b"y" * 100


def fails_enotsup(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        assert e.errno == errno.ENOTSUP, (fn.__name__, e)
        return
    raise AssertionError(f"{fn.__name__}{args} succeeded on a mount without xattrs")


def test_no_xattr_stops_the_kernel_asking():
    port = free_port()
    with h.EfusedMount(args=["--no-xattr", "--metrics", f"127.0.0.1:{port}"],
                       tag="efuse-noxattr") as m:
        mount = os.path.basename(m.mnt)
        # An xattr the backing file has, set behind efused's back: hidden, never lost.
        h.write_file(J(m.src, "kept"), b"k")
        os.setxattr(J(m.src, "kept"), "user.kept", b"v")
        fails_enotsup(os.getxattr, J(m.mnt, "kept"), "user.kept")
        fails_enotsup(os.listxattr, J(m.mnt, "kept"))
        fails_enotsup(os.setxattr, J(m.mnt, "kept"), "user.new", b"n")
        fails_enotsup(os.removexattr, J(m.mnt, "kept"), "user.kept")
        assert os.getxattr(J(m.src, "kept"), "user.kept") == b"v"
        assert "user.new" not in os.listxattr(J(m.src, "kept"))

        extract_like_tar(m.mnt)
        check_extracted(m.mnt)
        check_extracted(m.src)
        # Each xattr request reached efused at most once: its ENOSYS turned it off.
        for op in ("getxattr", "listxattr", "setxattr", "removexattr"):
            assert requests(port, mount, op) <= 1, (op, requests(port, mount, op))
        # A chmod still works without ACLs (mode bits only).
        os.chmod(J(m.mnt, "f0"), 0o600)
        assert os.stat(J(m.src, "f0")).st_mode & 0o777 == 0o600


def test_default_serves_xattrs_and_pays_the_lookups():
    port = free_port()
    with h.EfusedMount(args=["--metrics", f"127.0.0.1:{port}"], tag="efuse-noxattr") as m:
        mount = os.path.basename(m.mnt)
        extract_like_tar(m.mnt)
        check_extracted(m.src)
        # The kernel's security.capability lookups before writes and chowns: one or more per
        # file (what options.xattr: false saves).
        assert requests(port, mount, "getxattr") >= FILES, requests(port, mount, "getxattr")
        os.setxattr(J(m.mnt, "f1"), "user.a", b"1")
        assert os.getxattr(J(m.mnt, "f1"), "user.a") == b"1"
        assert os.getxattr(J(m.src, "f1"), "user.a") == b"1"


def test_bad_xattr_value_is_refused_clearly():
    with h.EfusedMount(start=False, tag="efuse-noxattr") as m:
        cfg = J(m.tmp, "bad.yaml")
        r = h.check_config(cfg, f"mounts:\n  - name: a\n    mountpoint: {m.mnt}\n"
                                f"    backend: passthrough\n    source: {m.src}\n"
                                f"    options: {{xattr: off}}\n")
        assert r.rc == 1, (r.rc, r.err)
        assert (f"{cfg}:6:22: mounts[0].options.xattr must be a boolean (true or false), "
                "not a string") in r.err, r.err
        assert not h.is_fuse_mounted(m.mnt)


if __name__ == "__main__":
    h.main(globals())
