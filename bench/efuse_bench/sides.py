"""The sides a row is measured on: native, libfuse (passthrough_ll), efused, efused-nobpf."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from .common import BASE_GROUPS, BIN, COST_GROUPS, EFUSED_ENV, ENV, GROUPS, INTERCEPT_DIR, \
    INTERCEPT_GROUPS, IO_PATH_GROUPS, MEMORY_GROUPS, RUN, SHARED_COST_GROUPS, SIDES, SKEW_GROUPS, \
    TAR_GROUPS, BenchError
from .mounts import mount_at, retire
from .procs import Daemon, run

if TYPE_CHECKING:
    from .bench import Bench


class Side:
    name = ""
    groups = GROUPS     # the row groups this side is measured in
    telemetry = False   # its timed runs carry efused's eBPF telemetry (see Telemetry)

    def __init__(self, bench: "Bench"):
        self.bench = bench
        self.unavailable: str | None = None  # set when the side cannot run at all

    def begin(self, group: str) -> Path:
        raise NotImplementedError

    def end(self) -> None:
        pass

    def check(self) -> None:
        pass

    def storage(self, group: str) -> Path:
        raise NotImplementedError

    def prefix(self) -> list[str]:
        """What the row's commands run under on this side (efuse-run: the library)."""
        return []


class NativeSide(Side):
    name = "native"

    def storage(self, group):
        return RUN / "native" / group

    def begin(self, group):
        d = self.storage(group)
        retire(d)
        d.mkdir(parents=True)
        return d


class FuseSide(Side):
    fstype = ""
    env = ENV
    ready: bytes | None = None

    def __init__(self, bench):
        super().__init__(bench)
        self.daemon: Daemon | None = None
        self.mnt = RUN / f"mnt-{self.name}"
        self.notes: list[str] = []

    def storage(self, group):
        return RUN / f"src-{self.name}" / group

    def argv(self, src: Path, mnt: Path) -> list[str]:
        raise NotImplementedError

    def begin(self, group):
        if self.unavailable:
            raise BenchError(self.unavailable)
        src = self.storage(group)
        retire(src)
        src.mkdir(parents=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.daemon = Daemon(self.name, self.argv(src, self.mnt), self.mnt, self.fstype,
                             self.bench.out / "logs" / f"{self.name}-{group}.log", self.env,
                             self.ready)
        try:
            self.daemon.start()
        except BaseException:
            self.end()
            raise
        return self.mnt

    def check(self):
        if not self.daemon:
            raise BenchError(f"{self.name} is not running")
        self.daemon.check()

    def end(self):
        if self.daemon:
            d = self.daemon
            self.daemon = None
            d.stop()
            for n in d.notes:
                if n not in self.notes:
                    self.notes.append(n)


class LibfuseSide(FuseSide):
    name = "libfuse"
    fstype = "fuse.passthrough_ll"
    groups = BASE_GROUPS

    def argv(self, src, mnt):
        # DEFAULT passthrough_ll options: only the source and foreground mode.
        return [str(BIN / "passthrough_ll"), "-f", "-o", f"source={src}", str(mnt)]


class LibfuseXattrSide(LibfuseSide):
    """passthrough_ll serving extended attributes (`-o xattr`), as efused does by default: the
    like-for-like comparison on the tar rows, where a server without xattrs (ENOSYS) spares the
    kernel's two security.capability GETXATTRs per extracted file."""
    name = "libfuse-xattr"
    groups = TAR_GROUPS

    def argv(self, src, mnt):
        return super().argv(src, mnt)[:-1] + ["-o", "xattr", str(mnt)]


class EfusedSide(FuseSide):
    """efused as shipped: telemetry on. The daemon itself runs with EFUSE_BPF=0 and the
    telemetry efused attaches the same programs around each of this side's timed runs."""
    name = "efused"
    fstype = "fuse.efuse"
    env = EFUSED_ENV
    ready = b"efused: ready"
    telemetry = True

    def binary(self) -> Path:
        return self.bench.efused_bin

    def mount_spec(self, src, mnt) -> str:
        return f"{src}:{mnt}"

    def argv(self, src, mnt):
        return [str(self.binary()), "--mount", self.mount_spec(src, mnt)] + \
            shlex.split(self.bench.args.efused_args)


class EfusedNoBpfSide(EfusedSide):
    """efused with no eBPF telemetry attached: the telemetry's cost is efused ÷ this. In the
    fio, tree and cat rows it measures the efused side's own daemon, mount and files, back to
    back on the same data, so that file placement and page cache state do not count as
    telemetry cost; in the tar rows (a fresh mount per repetition) and when the efused side is
    not part of the run it runs a daemon of its own."""
    name = "efused-nobpf"
    groups = COST_GROUPS
    telemetry = False

    def __init__(self, bench):
        super().__init__(bench)
        self.shared: EfusedSide | None = None  # the efused side whose mount this measures

    def begin(self, group):
        twin = next((s for s in self.bench.sides if s.name == EfusedSide.name), None)
        if group in SHARED_COST_GROUPS and twin is not None and twin.daemon is not None:
            self.shared = twin
            return twin.mnt
        self.shared = None
        return super().begin(group)

    def check(self):
        if self.shared is not None:
            self.shared.check()
        else:
            super().check()

    def end(self):
        if self.shared is not None:
            self.shared = None
        else:
            super().end()


class EfusedCacheSide(EfusedSide):
    """efused with io_path fixed to cache (every file through the page cache and efused), for
    the adaptive I/O path rows; telemetry attached like the efused side's."""
    name = "efused-cache"
    groups = IO_PATH_GROUPS
    io_path = "cache"

    def argv(self, src, mnt):
        return super().argv(src, mnt) + ["--io-path", self.io_path]


class EfusedPassthroughSide(EfusedCacheSide):
    """efused with io_path fixed to passthrough (every file kernel-direct when granted)."""
    name = "efused-passthrough"
    io_path = "passthrough"


class EfusedNoBalanceSide(EfusedSide):
    """efused with queue balancing off (EFUSE_QUEUE_BALANCING=0: FSYNC always served on the
    queue that read it), for the queue-skew row only."""
    name = "efused-nobalance"
    groups = SKEW_GROUPS
    env = dict(EFUSED_ENV, EFUSE_QUEUE_BALANCING="0")


class EfuseRunSide(EfusedSide):
    """efused with --intercept, no telemetry; the row's commands run under efuse-run, so
    libefuse_intercept.so serves their opens, reads and stats from the backing directory.
    The library and efuse-run are the private copies Bench.build_efused makes."""
    name = "efuse-run"
    groups = INTERCEPT_GROUPS
    telemetry = False
    env = dict(EFUSED_ENV, EFUSE_INTERCEPT_DIR=str(INTERCEPT_DIR))

    def argv(self, src, mnt):
        return super().argv(src, mnt) + ["--intercept"]

    def prefix(self):
        return ["env", f"EFUSE_INTERCEPT_DIR={INTERCEPT_DIR}",
                f"EFUSE_INTERCEPT_LIB={BIN / 'libefuse_intercept.so'}", str(BIN / "efuse-run")]


class EfusedBaseSide(EfusedSide):
    """A second efused binary (--efused-base, e.g. an earlier commit's build), no telemetry,
    for a before/after comparison in one run: efused-nobpf ÷ efused-base is the change's cost
    or gain with everything else equal (same host, data, order rotation and repetitions)."""
    name = "efused-base"
    groups = BASE_GROUPS
    telemetry = False

    def binary(self):
        return self.bench.efused_base_bin


class TmpfsSide(NativeSide):
    """A tmpfs mounted for the row (default size: half of RAM), what the memory backend is
    measured against."""
    name = "tmpfs"
    groups = MEMORY_GROUPS

    def storage(self, group):
        return RUN / "tmpfs" / group

    def begin(self, group):
        d = super().begin(group)
        run(["mount", "-t", "tmpfs", "-o", "mode=0755", "efuse-bench", d], timeout=60)
        return d

    def end(self):
        for d in (RUN / "tmpfs").glob("*"):
            if mount_at(d) is not None:
                run(["umount", d], timeout=120)


class MemorySide(EfusedSide):
    """efused's memory backend (efused --mount memory:MNT), no telemetry: the files live in
    efused's block pool."""
    name = "memory"
    groups = MEMORY_GROUPS
    telemetry = False

    def mount_spec(self, src, mnt):
        return f"memory:{mnt}"


SIDE_CLASSES = {c.name: c for c in (NativeSide, LibfuseSide, EfusedSide, EfusedNoBpfSide,
                                    EfusedCacheSide, EfusedPassthroughSide, EfusedNoBalanceSide,
                                    EfuseRunSide, EfusedBaseSide, LibfuseXattrSide, TmpfsSide,
                                    MemorySide)}
assert tuple(SIDE_CLASSES) == SIDES
