#!/usr/bin/env python3
"""Times N stat() calls of names that do not exist under DIR (each one is a LOOKUP the FUSE
server must answer: no cache can hold it for the first time) and prints their latency
percentiles in microseconds as JSON. Used by the bench's queue-skew row (bench/README.md)."""
import json
import os
import sys
import time


def main():
    d, n = sys.argv[1], int(sys.argv[2])
    lat = []
    for i in range(n):
        p = os.path.join(d, f"absent-{os.getpid()}-{i}")
        t0 = time.perf_counter_ns()
        try:
            os.stat(p)
        except FileNotFoundError:
            pass
        lat.append(time.perf_counter_ns() - t0)
    lat.sort()

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
    print(json.dumps({"n": n, "p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": lat[-1] / 1000.0}))


if __name__ == "__main__":
    main()
