#!/usr/bin/env python3
"""Writes 64 KiB and fsyncs FILE in a loop until killed (the bench's queue-skew row)."""
import os
import sys

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
buf = os.urandom(65536)
i = 0
while True:
    os.pwrite(fd, buf, (i % 256) * len(buf))
    os.fsync(fd)
    i += 1
