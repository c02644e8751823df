#!/usr/bin/env python3
"""The operator-facing scripts refuse bad arguments with a clear message and exit 2 before
doing anything (scripts/soak.sh would otherwise build and mount for half an hour, and
scripts/test-vm.sh install packages, build and download kernels), and a bad
EFUSE_SOAK_SCALE stops a test before it mounts anything."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOAK = os.path.join(ROOT, "scripts", "soak.sh")
TEST_VM = os.path.join(ROOT, "scripts", "test-vm.sh")


def soak(*args):
    return subprocess.run(["bash", SOAK, *args], capture_output=True, text=True, timeout=30)


def test_soak_refuses_bad_arguments():
    for args, said in [(["--minutes", "0"], "--minutes must be a positive integer, not '0'"),
                       (["--minutes", "ten"], "--minutes must be a positive integer, not 'ten'"),
                       (["--scale", "-3"], "--scale must be a positive integer, not '-3'"),
                       (["--transport", "tcp"], "--transport takes uring, classic or both"),
                       (["--scale"], "--scale needs a value"),
                       (["--fast"], "unknown argument '--fast'")]:
        r = soak(*args)
        assert r.returncode == 2 and said in r.stderr, (args, r.returncode, r.stderr)
        assert "building" not in r.stdout, (args, r.stdout)


def test_soak_help():
    r = soak("--help")
    assert r.returncode == 0 and "--minutes 240 --scale 10" in r.stdout, r


def test_bad_soak_scale_stops_a_test_before_it_mounts():
    script = os.path.join(ROOT, "tests", "integration", "test_fsx.py")
    for bad in ("0", "lots"):
        r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, EFUSE_SOAK_SCALE=bad))
        assert r.returncode != 0 and f"EFUSE_SOAK_SCALE must be a positive integer, not '{bad}'" \
            in r.stdout + r.stderr, (bad, r.returncode, r.stdout[-500:], r.stderr[-500:])
        assert "PASS" not in r.stdout, r.stdout


def test_test_vm_refuses_bad_arguments():
    for args, said in [(["--kernel", "5.10"], "invalid choice: '5.10'"),
                       (["--timeout", "soon"], "invalid int value: 'soon'"),
                       (["--fast"], "unrecognized arguments: --fast")]:
        r = subprocess.run(["bash", TEST_VM, *args], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, EFUSE_BUILD_DIR="/nonexistent"))
        assert r.returncode == 2 and said in r.stderr, (args, r.returncode, r.stderr)
        assert "install-deps" not in r.stderr and "missing" not in r.stderr, (args, r.stderr)


def test_test_vm_help():
    r = subprocess.run(["bash", TEST_VM, "--help"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, EFUSE_BUILD_DIR="/nonexistent"))
    assert r.returncode == 0 and "--kernel {6.12,6.1,all}" in r.stdout, r


if __name__ == "__main__":
    h.main(globals())
