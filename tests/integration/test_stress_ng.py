#!/usr/bin/env python3
"""Bounded stress-ng runs with file-system stressors inside the mount. Each must exit 0
(with --verify where the stressor supports it), efused must stay alive and keep serving,
and afterwards the mount and the backing dir must list the same entries."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run  # noqa: E402

STRESSORS = [["--dir", "2"], ["--rename", "2"], ["--xattr", "2"], ["--link", "2"],
             ["--symlink", "2"], ["--flock", "2"], ["--hdd", "2", "--hdd-bytes", "64M"]]


def stress(m, args, seconds):
    seconds *= h.soak_scale()
    cmd = ["stress-ng", *args, "--timeout", f"{seconds}s", "--temp-path", m.mnt,
           "--metrics-brief", "--verify"]
    r = run(cmd, timeout=seconds + 120, check=False)
    assert r.rc == 0, (f"stress-ng {' '.join(args)} exited {r.rc} (2 = a stressor failed)\n"
                       f"{h._tail(r.err, 40)}\n{h._tail(r.out, 20)}\n{m.log_tail()}")
    m.check_alive()
    h.assert_serves(m)
    # Whatever stress-ng left behind, the mount and the backing dir agree, entry by entry.
    for dirpath, dirnames, filenames in os.walk(m.mnt):
        rel = os.path.relpath(dirpath, m.mnt)
        h.assert_listing_equal(dirpath, os.path.join(m.src, rel))
        for n in filenames:
            os.lstat(os.path.join(dirpath, n))


def test_each_stressor(m):
    for args in STRESSORS:
        print(f"  stress-ng {' '.join(args)}", flush=True)
        stress(m, args, 3)


@h.mount_options(threads=2)
def test_all_stressors_together(m):
    # Everything at once, on a server with fewer worker threads than clients.
    stress(m, [a for s in STRESSORS for a in s], 6)


if __name__ == "__main__":
    h.main(globals(), require=["stress-ng"])
