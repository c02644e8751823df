#!/usr/bin/env python3
"""fsx (random read/write/truncate/mmap/fallocate... checked against an in-memory model)
on a file inside the mount. First a short sanity run on a native file (so a broken fsx
is not blamed on efused), then 50,000 operations with mmap and 10,000 without. The seed is
random and printed; a failure message carries the command that reproduces it."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run  # noqa: E402

FSX = os.environ.get("EFUSE_FSX") or "/work/main/build/bin/efuse_fsx"


def require_fsx():
    # Never a skip: a missing fsx binary means the build is incomplete.
    assert os.path.isfile(FSX) and os.access(FSX, os.X_OK), \
        f"fsx binary not found or not executable: {FSX} (set EFUSE_FSX)"


def fsx(path, ops, *extra, m=None):
    seed = int.from_bytes(os.urandom(4), "little")
    ops *= h.soak_scale()
    cmd = [FSX, "--ops", str(ops), "--seed", str(seed), *extra, path]
    print(f"  {h._fmt_cmd(cmd)}", flush=True)
    r = run(cmd, timeout=600 * h.soak_scale(), check=False)
    if r.rc != 0:
        raise AssertionError(
            f"fsx failed (exit {r.rc}) with seed {seed}; reproduce with:\n  {h._fmt_cmd(cmd)}\n"
            f"--- fsx stdout tail ---\n{h._tail(r.out, 40)}\n--- fsx stderr tail ---\n"
            f"{h._tail(r.err, 40)}" + (f"\n{m.log_tail()}" if m else ""))
    return r


def test_fsx_native_sanity():
    require_fsx()
    d = os.path.realpath(h.tempfile.mkdtemp(prefix="efuse-fsx-native-", dir="/tmp"))
    try:
        fsx(os.path.join(d, "file"), 5000)
    finally:
        h.shutil.rmtree(d, ignore_errors=True)


def test_fsx_mount(m):
    require_fsx()
    fsx(m.m("fsx.file"), 50000, m=m)
    assert h.sha256_file(m.m("fsx.file")) == h.sha256_file(m.s("fsx.file"))


def test_fsx_mount_no_mmap(m):
    require_fsx()
    fsx(m.m("fsx.file"), 10000, "--no-mmap", m=m)
    assert h.sha256_file(m.m("fsx.file")) == h.sha256_file(m.s("fsx.file"))


def test_fsx_two_files_concurrently(m):
    # Two fsx processes on two files in one mount at the same time.
    require_fsx()
    seeds = [int.from_bytes(os.urandom(4), "little") for _ in range(2)]
    cmds = [[FSX, "--ops", "8000", "--seed", str(s), "--quiet", m.m(f"f{i}")]
            for i, s in enumerate(seeds)]
    procs = [h.spawn(c, stdout=h.subprocess.PIPE, stderr=h.subprocess.STDOUT, text=True)
             for c in cmds]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            h.reap(p)
    for c, p, out in zip(cmds, procs, outs):
        assert p.returncode == 0, (f"fsx failed (exit {p.returncode}); reproduce with:\n  "
                                   f"{h._fmt_cmd(c)}\n{h._tail(out, 40)}\n{m.log_tail()}")


if __name__ == "__main__":
    h.main(globals())
