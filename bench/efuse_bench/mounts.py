"""The mount table, unmounting by force, and moving finished data aside (never deleting it
during a run)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import os

from .common import RUN, RUN_IMAGE, WORK, BenchError, log


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


def _has_journal(path: Path) -> bool:
    """Whether the ext4 holding `path` has a journal (jbd2 lists the devices it serves)."""
    src = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "-T", str(path)], capture_output=True,
                         text=True).stdout.strip()
    dev = os.path.basename(os.path.realpath(src)) if src.startswith("/dev/") else ""
    jbd2 = Path("/proc/fs/jbd2")
    return bool(dev) and jbd2.exists() and any(d.name.startswith(dev + "-") for d in jbd2.iterdir())


def make_run_fs() -> str:
    """Mounts a new ext4 at RUN for this run and returns how it was made.

    Every side's data (native included) lives on a file system nobody has deleted anything
    from. On WORK's own ext4, an extraction within minutes of a large deletion (an earlier
    run's cleanup, a build tree removed beside the bench) ran 1.1 to 9 times slower: new inodes
    are checked against recently deleted ones (fs/ext4/ialloc.c recently_deleted(), without a
    journal), so whichever side ran first paid for it. The image is a sparse file on WORK's
    disk, sized to WORK's free space, with WORK's journal setting; the loop device does direct
    I/O, so cold reads still come from that disk and nothing is cached twice; inode tables are
    left to read as the image's holes (zeros) instead of being written at mkfs or by
    ext4lazyinit during the run."""
    st = os.statvfs(WORK)
    size = max(st.f_bavail * st.f_frsize * 9 // 10, 8 << 30)
    RUN_IMAGE.unlink(missing_ok=True)
    with open(RUN_IMAGE, "wb") as f:
        f.truncate(size)
    journal = _has_journal(WORK)
    mkfs = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"]
    if not journal:
        mkfs += ["-O", "^has_journal"]
    for argv in (mkfs + [str(RUN_IMAGE)],
                 ["mount", "-o", "loop,noinit_itable", str(RUN_IMAGE), str(RUN)]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"cannot make the run's file system: {' '.join(argv)}: "
                             f"{(r.stderr or r.stdout).strip()}")
    loop = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(RUN)], capture_output=True,
                          text=True).stdout.strip()
    dio = subprocess.run(["losetup", "--direct-io=on", loop], capture_output=True).returncode == 0
    how = (f"ext4 ({'with' if journal else 'without'} a journal, like {WORK}'s) made for this "
           f"run on {loop} over the sparse file {RUN_IMAGE} ({size / 2**30:.0f} GiB), "
           f"{'direct I/O' if dio else 'buffered (direct I/O refused)'}")
    log(f"bench: run file system: {how}")
    return how


def drop_run_fs(keep: bool) -> None:
    """Unmounts RUN (the loop device goes with it) and deletes its image unless kept."""
    if mount_at(RUN):
        subprocess.run(["umount", str(RUN)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=600)
        if mount_at(RUN):
            force_unmount(RUN)
    if keep:
        log(f"bench: the run's data stays in {RUN_IMAGE} (mount -o loop {RUN_IMAGE} DIR)")
    else:
        RUN_IMAGE.unlink(missing_ok=True)
    try:
        RUN.rmdir()
    except OSError:
        pass


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

