#!/usr/bin/env python3
"""fio data verification through efused: 4 jobs of random mixed 4 KiB I/O with crc32c
verify headers (verify_fatal=1), with psync, libaio (O_DIRECT), mmap and io_uring. fio must
exit 0, every job must report error 0, every written block must have been read back and
verified, and the files must be identical in the backing directory."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run  # noqa: E402


def fio(m, name, *args, size="64M"):
    out = os.path.join(m.tmp, f"{name}.json")
    cmd = ["fio", f"--name={name}", f"--directory={m.mnt}", "--numjobs=4", f"--size={size}",
           "--bs=4k", "--rw=randrw", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
           "--randrepeat=0", "--verify_state_save=0", "--output-format=json",
           f"--output={out}", *args]
    # A soak repeats the whole run on fresh files: fio's own --loops cannot verify randrw
    # (blocks of an earlier loop fail the later loop's header check, natively too).
    for _ in range(h.soak_scale() - 1):
        run_and_check(m, name, out, cmd)
    return run_and_check(m, name, out, cmd)


def run_and_check(m, name, out, cmd):
    r = run(cmd, timeout=600, check=False, cwd=m.tmp)  # fio may drop state files in its cwd
    try:
        with open(out) as f:
            text = f.read()
        data = json.loads(text[text.index("{"):])  # fio may print notes before the JSON
    except (OSError, ValueError) as e:
        raise AssertionError(f"fio {name}: no JSON result ({e}); rc={r.rc}\n{r.err[-3000:]}"
                             f"\n{r.out[-2000:]}")
    assert r.rc == 0, f"fio {name} exited {r.rc}\n{r.err[-3000:]}\n{r.out[-2000:]}"
    jobs = data["jobs"]
    assert len(jobs) == 4, f"fio {name}: {len(jobs)} jobs in the result"
    for j in jobs:
        assert j["error"] == 0, f"fio {name} job {j['jobname']}: error {j['error']}"
        assert j.get("total_err", 0) == 0, j
        wrote, read = j["write"]["io_bytes"], j["read"]["io_bytes"]
        assert wrote > 0, f"fio {name}: job wrote nothing: {j['write']}"
        # The verify phase reads back every written block, on top of the mixed reads.
        assert read >= wrote, f"fio {name}: read {read} < written {wrote}: verify did not run"
    # The data files look the same in the backing directory.
    files = sorted(f for f in os.listdir(m.mnt) if f.startswith(name + "."))
    assert len(files) == 4, files
    for f in files:
        assert h.sha256_file(os.path.join(m.mnt, f)) == h.sha256_file(os.path.join(m.src, f)), f
        os.unlink(os.path.join(m.mnt, f))
    return data


def test_fio_psync(m):
    fio(m, "psync", "--ioengine=psync")


def test_fio_libaio_direct(m):
    fio(m, "libaio", "--ioengine=libaio", "--direct=1", "--iodepth=16",
        "--verify_backlog=512")


def test_fio_mmap(m):
    fio(m, "mmap", "--ioengine=mmap", size="16M")


def test_fio_io_uring(m):
    fio(m, "uring", "--ioengine=io_uring", "--iodepth=16", size="16M")


if __name__ == "__main__":
    h.main(globals(), require=["fio"])
