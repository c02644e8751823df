"""The mount table, unmounting by force, and moving finished data aside (never deleting it
during a run)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .common import RUN, BenchError, log


@dataclass
class Mount:
    mountpoint: str
    fstype: str
    dev: str


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts() -> list[Mount]:
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            try:
                sep = parts.index("-", 6)
            except ValueError:
                continue
            res.append(Mount(_unescape(parts[4]), parts[sep + 1], parts[2]))
    return res


def mount_at(path: Path) -> Mount | None:
    found = None
    for m in mounts():
        if m.mountpoint == str(path):
            found = m  # the last one is the top of the stack
    return found


def mounts_under(path: Path) -> list[Mount]:
    p = str(path).rstrip("/") + "/"
    return [m for m in mounts() if m.mountpoint.startswith(p) or m.mountpoint == str(path)]


def abort_connection(m: Mount) -> None:
    """Aborts a FUSE connection so processes blocked on a hung daemon get ENOTCONN."""
    conns = Path("/sys/fs/fuse/connections")
    if not any(x.fstype == "fusectl" for x in mounts()):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(conns)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    major, minor = m.dev.split(":")
    abort = conns / minor / "abort"
    try:
        abort.write_text("1")
        log(f"aborted FUSE connection {minor} ({m.mountpoint})")
    except OSError as e:
        log(f"warning: cannot abort FUSE connection {minor}: {e}")


def force_unmount(path: Path) -> None:
    for _ in range(8):
        m = mount_at(path)
        if not m:
            return
        if m.fstype.startswith("fuse"):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
            if mount_at(path):
                abort_connection(m)
        subprocess.run(["umount", "-l", str(path)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
    if mount_at(path):
        log(f"warning: could not unmount {path}")


def refuse_if_mounted_below(path: Path, doing: str) -> None:
    below = mounts_under(path)
    if below:
        raise BenchError(f"refusing to {doing} {path}: mounted below: {[m.mountpoint for m in below]}")


def safe_rmtree(path: Path) -> None:
    """rm -rf that never descends into a mount (refuses if anything is mounted below)."""
    if not path.exists():
        return
    refuse_if_mounted_below(path, "delete")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=3600)


_retired = [0]

def retire(path: Path) -> None:
    """Moves a side's finished data out of the way instead of deleting it; RUN, with
    everything retired, goes at the end of the run. On an ext4 without a journal (this
    project's bench machines) every new inode is checked against the inodes deleted in the
    last 60 to 300 seconds (fs/ext4/ialloc.c recently_deleted()), so a tar extraction right
    after deleting the previous one took 2 to 9 times as long as one on a quiet file system,
    and the penalty fell on whichever side came next."""
    if not path.exists():
        return
    refuse_if_mounted_below(path, "move")
    dest = RUN / "retired"
    dest.mkdir(parents=True, exist_ok=True)
    _retired[0] += 1
    path.rename(dest / f"{_retired[0]}-{path.parent.name}-{path.name}")

