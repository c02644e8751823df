#!/usr/bin/env python3
"""A missing mountpoint or source fails only its mount, with a message that names the path
and the fix; create_mountpoint: true (--create-mountpoint) creates a missing mountpoint
(0755, with parents) at start and on reload. The other mounts are never disturbed."""

import os
import re
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from test_single_instance import ConfigEfused, assert_serves, stack_at  # noqa: E402

J = os.path.join


def missing_mountpoint_re(path):
    return re.escape(f"mountpoint {path} does not exist: create it (mkdir -p {path}) or set "
                     "create_mountpoint: true for this mount")


def missing_source_re(path):
    return re.escape(f"source {path} does not exist: create that directory or correct the "
                     "mount's source")


def test_missing_mountpoint_at_start():
    with ConfigEfused(tag="efuse-paths") as b:
        h.write_file(J(b.srcs[1], "who"), b"ok\n")
        missing = J(b.tmp, "not", "there")
        b.write_config([("gone", b.srcs[0], missing, []), ("ok", b.srcs[1], b.mnts[1], [])])
        b.start_expecting([b.mnts[1]])
        assert re.search(missing_mountpoint_re(missing), b.log_text()), b.log_tail()
        assert not os.path.exists(J(b.tmp, "not")), "created without create_mountpoint"
        assert_serves(b.mnts[1], "who", "ok\n")
        b.check_alive()


def test_create_mountpoint_at_start():
    with ConfigEfused(tag="efuse-paths") as b:
        h.write_file(J(b.srcs[0], "who"), b"made\n")
        h.write_file(J(b.srcs[1], "who"), b"ok\n")
        made = J(b.tmp, "new", "deep", "mnt")
        b.write_config([("made", b.srcs[0], made, ["create_mountpoint: true"]),
                        ("ok", b.srcs[1], b.mnts[1], [])])
        b.start_expecting([made, b.mnts[1]])
        for d in (J(b.tmp, "new"), J(b.tmp, "new", "deep")):
            st = os.stat(d)
            assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == os.geteuid(), \
                f"{d}: mode {oct(st.st_mode)} uid {st.st_uid}"
        assert_serves(made, "who", "made\n")
        assert_serves(b.mnts[1], "who", "ok\n")
        assert "made: created mountpoint " + made in b.log_text()
        b.stop_clean()
        # The root of the mount was 0755 too (seen now that it is unmounted).
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o755


def test_missing_source_at_start():
    with ConfigEfused(tag="efuse-paths") as b:
        h.write_file(J(b.srcs[1], "who"), b"ok\n")
        missing = J(b.tmp, "no-source")
        b.write_config([("nosrc", missing, b.mnts[0], []), ("ok", b.srcs[1], b.mnts[1], [])])
        b.start_expecting([b.mnts[1]])
        assert re.search(missing_source_re(missing), b.log_text()), b.log_tail()
        assert stack_at(b.mnts[0]) == []
        assert_serves(b.mnts[1], "who", "ok\n")
        b.check_alive()


def test_missing_paths_on_reload():
    """Reloads adding a mount with a missing mountpoint, then allowing its creation, then
    adding one with a missing source: each fails or mounts alone; the first mount stays the
    same mount throughout."""
    with ConfigEfused(tag="efuse-paths") as b:
        h.write_file(J(b.srcs[0], "who"), b"new\n")
        h.write_file(J(b.srcs[1], "who"), b"ok\n")
        keep = ("ok", b.srcs[1], b.mnts[1], [])
        b.write_config([keep])
        b.start_expecting([b.mnts[1]])
        ids = stack_at(b.mnts[1])
        missing = J(b.tmp, "later", "mnt")
        b.write_config([keep, ("later", b.srcs[0], missing, [])])
        b.reload()
        h.wait_until(lambda: re.search(missing_mountpoint_re(missing), b.log_text()), 20,
                     what="missing mountpoint reported")
        assert not os.path.exists(missing)
        b.write_config([keep, ("later", b.srcs[0], missing, ["create_mountpoint: true"])])
        b.reload()
        h.wait_until(lambda: h.is_efuse_mounted(missing), 20, what="created and mounted")
        assert_serves(missing, "who", "new\n")
        nosrc = J(b.tmp, "no-source")
        b.write_config([keep, ("later", b.srcs[0], missing, ["create_mountpoint: true"]),
                        ("nosrc", nosrc, b.mnts[0], [])])
        b.reload()
        h.wait_until(lambda: re.search(missing_source_re(nosrc), b.log_text()), 20,
                     what="missing source reported")
        assert stack_at(b.mnts[1]) == ids, "the first mount was remounted"
        assert_serves(b.mnts[1], "who", "ok\n")
        assert_serves(missing, "who", "new\n")
        b.live = [b.mnts[1], missing]
        b.check_alive()
        b.stop_clean()
        assert not h.is_fuse_mounted(missing)


def test_command_line_mountpoint():
    """--mount: a missing mountpoint is a usage error naming the fix; --create-mountpoint
    creates it."""
    with ConfigEfused(tag="efuse-paths") as b:
        missing = J(b.tmp, "cli", "mnt")
        r = h.run([h.EFUSED, "--mount", f"{b.srcs[0]}:{missing}"], check=False, timeout=60)
        assert r.rc == 2 and "does not exist: create it (mkdir -p" in r.err, (r.rc, r.err)
        assert "--create-mountpoint" in r.err
        assert not os.path.exists(J(b.tmp, "cli"))
        p = h.spawn([h.EFUSED, "--mount", f"{b.srcs[0]}:{missing}", "--create-mountpoint"],
                    stdout=open(J(b.tmp, "cli.log"), "wb"), stderr=open(J(b.tmp, "cli.err"), "wb"))
        try:
            h.wait_until(lambda: h.is_efuse_mounted(missing) or p.poll() is not None, 20,
                         what="mounted")
            assert h.is_efuse_mounted(missing), open(J(b.tmp, "cli.err")).read()
        finally:
            assert h.reap(p) == 0
        assert not h.is_fuse_mounted(missing)


if __name__ == "__main__":
    h.main(globals())
