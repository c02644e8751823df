#!/usr/bin/env python3
"""Compiles a BPF program against a vmlinux.h with FUSE's types taken out.

Where FUSE is a module (fuse.ko, as in most distribution kernels), vmlinux BTF has none of
its types, so a vmlinux.h dumped there lacks struct fuse_req and the tracepoint types; the
telemetry program must build from its own declarations of FUSE's types. This test makes
such a header from the build's vmlinux.h (dumped here, where FUSE is built in) and compiles
the program against it with the build's own compiler command.

usage: compile_without_fuse_types.py VMLINUX_H SOURCE -- COMPILER [FLAGS...]
"""
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Type names FUSE (and CUSE, virtiofs: parts of the same modules) contributes to vmlinux BTF.
FUSE_NAME = r"(?:fuse|cuse|virtio_fs|trace_event_(?:raw|data_offsets)_fuse)\w*"
DEFINITION = re.compile(rf"^(?:struct|union|enum) {FUSE_NAME} \{{")
FORWARD = re.compile(rf"^(?:struct|union|enum) {FUSE_NAME};$")
TRACE_TYPEDEF = re.compile(r"^typedef .*\bbtf_trace_fuse_\w*\)")


def strip(header: str) -> str:
    # bpftool's vmlinux.h puts each top-level declaration in a block of its own between
    # blank lines; forward declarations come one per line in one block.
    kept = []
    for block in header.split("\n\n"):
        first = block.lstrip("\n").split("\n", 1)[0]
        if DEFINITION.match(first) or TRACE_TYPEDEF.match(first):
            continue
        kept.append("\n".join(line for line in block.split("\n") if not FORWARD.match(line)))
    return "\n\n".join(kept)


def main() -> int:
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    vmlinux_h, source, compiler = Path(sys.argv[1]), sys.argv[2], sys.argv[4:]
    header = vmlinux_h.read_text()
    stripped = strip(header)
    left = sorted(set(re.findall(rf"\b(?:struct|union|enum) {FUSE_NAME} \{{", stripped)))
    if left:
        print(f"FAIL: FUSE types still defined after stripping: {left[:5]}", file=sys.stderr)
        return 1
    had = "struct fuse_req {" in header
    print(f"{vmlinux_h}: {'has' if had else 'has no'} FUSE types; "
          f"{len(header) - len(stripped)} bytes taken out")
    with tempfile.TemporaryDirectory(prefix="efuse-bpf-nofuse-") as tmp:
        Path(tmp, "vmlinux.h").write_text(stripped)
        # The stripped header's directory goes first, so "vmlinux.h" resolves to it.
        argv = [compiler[0], f"-I{tmp}"] + compiler[1:] + ["-c", source, "-o", f"{tmp}/prog.o"]
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            print(f"FAIL: {source} does not compile without FUSE types in vmlinux.h:\n"
                  f"{r.stdout}", file=sys.stderr)
            return 1
    print(f"ok: {source} compiles against vmlinux.h without FUSE types")
    return 0


if __name__ == "__main__":
    sys.exit(main())
