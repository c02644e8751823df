"""machine.md: what the run ran on."""
from __future__ import annotations

import json
import resource
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .common import ENV, EXAMPLES, RUN, WORK
from .report import git_info
from .sides import LibfuseSide

if TYPE_CHECKING:
    from .bench import Bench


def sh(cmd: str) -> str:
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV)
    return (r.stdout + r.stderr).strip()


def write_machine(bench: Bench):
    lscpu_keys = ("Architecture", "Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
                  "Socket(s)", "CPU max MHz", "BogoMIPS", "Hypervisor vendor", "Virtualization type",
                  "L1d cache", "L2 cache", "L3 cache", "NUMA node(s)")
    lscpu = [ln for ln in sh("lscpu").splitlines() if ln.split(":")[0].strip() in lscpu_keys]
    fusep = sh("for f in /sys/module/fuse/parameters/*; do echo \"$(basename $f) = $(cat $f)\"; done")
    g = git_info()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    t = [
        "# Machine", "",
        f"- date: {bench.started:%Y-%m-%d %H:%M:%S}",
        f"- git: {g['sha']}{' (dirty tree)' if g['dirty'] else ''}", "",
        "## Kernel", "", "```", sh("uname -a"), "```", "",
        "## CPU (lscpu)", "", "```", "\n".join(lscpu), "```", "",
        "## Memory", "", "```", sh("grep -E '^(MemTotal|MemFree|MemAvailable|SwapTotal):' /proc/meminfo"),
        sh("sysctl vm.dirty_ratio vm.dirty_background_ratio vm.swappiness 2>/dev/null"), "```", "",
        "## Kernel FUSE", "", "```", fusep or "(no /sys/module/fuse/parameters)",
        sh("grep -w fuse /proc/filesystems"), "```", "",
        "## Wait floor (bench/pingpong.c)", "", "```",
        json.dumps(bench.wait_floor) if bench.wait_floor else "(not measured)", "```", "",
        "## Work directory", "", "```",
        f"{WORK}: " + sh(f"findmnt -n -o SOURCE,FSTYPE,OPTIONS -T {shlex.quote(str(WORK))}"),
        sh(f"df -h {shlex.quote(str(WORK))} | tail -1"), "```", "",
        f"Every side's data: {bench.run_fs or 'RUN on the work directory itself'}, "
        f"mounted at `{RUN}`.", "",
        "## Packages", "", "```",
        sh("dpkg-query -W fio fuse3 libfuse3-3 libfuse3-dev tar coreutils findutils linux-source-6.1 2>&1"),
        sh("fio --version"), "```", "",
        "## Sides", "",
        f"- native: plain ext4 directory under `{RUN}/native` (the run's own ext4, see above)",
        f"- libfuse: `{shlex.join(LibfuseSide(bench).argv(Path('SRC'), Path('MNT')))}` "
        f"(built from `{EXAMPLES}/passthrough_ll.c` with `gcc -O2 $(pkg-config --cflags --libs fuse3)`)",
        f"- efused: `{bench.efused_src}` (run from a private copy, sha256 "
        f"`{bench.efused_sha256[:16]}`), version `{bench.efused_version}`, args: "
        f"`{bench.args.efused_args or '(none)'}`, environment `EFUSE_BPF=0`; its eBPF telemetry "
        f"is attached around each of its timed runs (each run starts "
        f"{bench.args.telemetry_settle:g} s after the attach, `--telemetry-settle`) by the telemetry efused "
        f"`{shlex.join(bench.telemetry.argv(RUN / 'telemetry.yaml'))}` (config: `mounts: []`)",
        "- efused-nobpf: efused with no telemetry attached; in fio, tree and cat rows the efused side's "
        "daemon, mount and files (back to back with efused in every repetition), in tar rows a fresh "
        "efused mount per repetition like every other side",
        f"- RLIMIT_NOFILE for every process: {soft}/{hard}",
        "",
        "## Run parameters", "",
        f"- load average before the run (1/5/15 min): {' / '.join(f'{v:.2f}' for v in bench.loadavg)}; "
        f"when the results were written: {Path('/proc/loadavg').read_text().split()[:3]}",
        f"- mode: {'quick' if bench.quick else 'full'}, repetitions: {bench.reps}, fio runtime: "
        f"{bench.runtime}s, sides: {', '.join(bench.side_names)}, groups: {', '.join(bench.groups)}",
        f"- command line: `{shlex.join(sys.argv)}`",
    ]
    (bench.out / "machine.md").write_text("\n".join(t) + "\n")

