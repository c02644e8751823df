#!/usr/bin/env python3
"""What the device path's engine decides for large files read once, cold, on this host.

    bench/tools/device_path.py [--files N] [--mib M] [--passes P] [--probe K] [--efused PATH]

Mounts efused (--efused, default build/bin/efused) over bench/work/device-path/src with
passthrough masked (EFUSE_MASK_KERNEL_FEATURES=passthrough: every READ is efused's, and
io_path: auto lets the large_device class choose the kernel path, buffered pread, or the
device path, O_DIRECT with its readahead stream), reads N files of M MiB with cat P times,
dropping the backing file's and the mount's pages before each read, and prints each pass's
time, then what the engine measured and decided: the large_device class's predicted cost
per MiB of each path, the decisions by path and reason, and the readahead's chunks read
and waited for. docs/adaptive-io.md (*What the engine finds here*) quotes its output.

The files are made once (random bytes) and kept for later runs; delete
bench/work/device-path/ when done. Needs root (efused mounts).
"""
import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK = os.path.join(ROOT, "bench", "work", "device-path")
PORT = 19881


def drop_pages(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def metrics():
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=5) as r:
        return r.read().decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--probe", type=int, default=2, help="adaptive.probe (measurements per path)")
    ap.add_argument("--efused", default=os.path.join(ROOT, "build", "bin", "efused"))
    a = ap.parse_args()
    src, mnt = os.path.join(WORK, "src"), os.path.join(WORK, "mnt")
    os.makedirs(src, exist_ok=True)
    os.makedirs(mnt, exist_ok=True)
    names = [f"f{i}" for i in range(a.files)]
    for n in names:
        p = os.path.join(src, n)
        if not os.path.exists(p) or os.path.getsize(p) != a.mib << 20:
            with open(p, "wb") as f:
                for _ in range(a.mib):
                    f.write(os.urandom(1 << 20))
                os.fsync(f.fileno())
    conf = os.path.join(WORK, "mounts.yaml")
    with open(conf, "w") as f:
        f.write(f"metrics:\n  listen: \"127.0.0.1:{PORT}\"\ntelemetry: off\n"
                f"defaults:\n  io_path: auto\n"
                f"  adaptive: {{probe: {a.probe}, round: 1000, reprobe_interval: 3600}}\n"
                f"mounts:\n  - name: a\n    mountpoint: {mnt}\n    backend: passthrough\n"
                f"    source: {src}\n")
    env = dict(os.environ, EFUSE_MASK_KERNEL_FEATURES="passthrough")
    log = open(os.path.join(WORK, "efused.log"), "w")
    d = subprocess.Popen([a.efused, "--config", conf, "--bus", "none"], env=env,
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            if d.poll() is not None:
                sys.exit(f"efused exited ({d.returncode}): see {log.name}")
            time.sleep(0.1)
        else:
            sys.exit("efused did not mount in 10 s")
        for p in range(1, a.passes + 1):
            t0 = time.monotonic()
            for n in names:
                drop_pages(os.path.join(src, n))
                drop_pages(os.path.join(mnt, n))
                subprocess.run(["cat", os.path.join(mnt, n)], stdout=subprocess.DEVNULL,
                               check=True)
            dt = time.monotonic() - t0
            print(f"pass {p}: {dt:.3f} s, {a.files * a.mib / dt:.0f} MiB/s")
        time.sleep(0.5)  # the last RELEASE, which ends the last epoch
        text = metrics()
        pat = re.compile(r'^(efuse_io_path_predicted_cost_seconds\{[^}]*large_device[^}]*\}|'
                         r'efuse_io_path_decisions_total\{[^}]*decision="(?:kernel|device)"[^}]*\}|'
                         r'efuse_device_readahead_chunk_\w+\{[^}]*\}) (\S+)$', re.M)
        for name, v in pat.findall(text):
            if name.startswith("efuse_io_path_predicted"):
                print(f"{name} {float(v) * 1e3:.3f} ms per MiB")
            else:
                print(f"{name} {float(v):.0f}")
        with open(log.name) as f:
            for line in f:
                if "KiB ahead" in line:
                    print(line.rstrip())
    finally:
        d.terminate()
        try:
            d.wait(timeout=10)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", mnt])


if __name__ == "__main__":
    main()
