"""The fio row groups (fio-one, fio-small, fio-large): layout, warm and cold variants, and
fio's JSON output."""
from __future__ import annotations

import json
import subprocess

from .common import GiB, KiB, MiB, BenchError
from .model import Phase
from .procs import drop_caches, run, sync


class FioRows:
    """Bench's fio row groups (a mixin of Bench)."""

    def group_fio(self, gid, nrfiles, filesize, bs):
        def sz(n):
            return f"{n // GiB} GiB" if n % GiB == 0 else (
                f"{n // MiB} MiB" if n % MiB == 0 else f"{n // KiB} KiB")
        desc = f"fio randrw 70/30 {nrfiles} x {sz(filesize)} bs={sz(bs).replace(' ', '')}"
        ms = {}
        for var in ("warm", "cold"):
            for k, label, unit in (("iops", "IOPS r+w", "IOPS"), ("mbps", "MB/s r+w", "MB/s")):
                ms[(var, k)] = self.declare(f"{gid}.{var}.{k}", gid, f"{desc}, {var}", label,
                                            unit, "higher")
        metrics = list(ms.values())
        layout_bs = min(MiB, filesize)
        rawdir = self.out / "raw"

        def base(d):
            return ["fio", "--name=bench", f"--directory={d}", "--filename_format=data.$filenum",
                    f"--nrfiles={nrfiles}", f"--filesize={filesize}", f"--size={nrfiles * filesize}",
                    "--ioengine=psync", "--fallocate=none", "--invalidate=0"]

        def prepare(ctx):  # lay the files out (sequential write through the mount)
            run(base(ctx.data) + ["--rw=write", f"--bs={layout_bs}", "--numjobs=1"],
                timeout=3600, stdout=subprocess.PIPE, what=f"fio layout ({gid})")
            names = sorted(p.name for p in ctx.data.iterdir())
            want = sorted(f"data.{i}" for i in range(nrfiles))
            if names != want:
                raise BenchError(f"fio layout produced {names[:5]}..., expected {want[:5]}...")
            sync()

        def prefill(ctx):  # warm: read every file once through the mount
            run(base(ctx.data) + ["--rw=read", f"--bs={layout_bs}", "--numjobs=1"],
                timeout=3600, stdout=subprocess.PIPE, what=f"fio prefill ({gid})")

        def measure(var, run_name):
            def f(ctx, rep):
                rawdir.mkdir(parents=True, exist_ok=True)
                jpath = rawdir / f"fio-{gid}-{var}-{ctx.side.name}-{run_name(rep)}.json"
                run(base(ctx.data) + [
                    "--rw=randrw", "--rwmixread=70", f"--bs={bs}", "--numjobs=2",
                    "--group_reporting", "--time_based", f"--runtime={self.runtime}s",
                    "--output-format=json", f"--output={jpath}"],
                    timeout=self.runtime + 900, stdout=subprocess.PIPE, what=f"fio {gid} {var}")
                txt = jpath.read_text()
                try:
                    job = json.loads(txt[txt.index("{"):])["jobs"][0]
                except (ValueError, KeyError, IndexError) as e:
                    raise BenchError(f"cannot parse fio output {jpath}: {e}")
                if job.get("error"):
                    raise BenchError(f"fio job error {job['error']}")
                r, w = job["read"], job["write"]
                extra = {"ios": r["total_ios"] + w["total_ios"],
                         "read_iops": r["iops"], "write_iops": w["iops"],
                         "read_MBps": r["bw_bytes"] / 1e6, "write_MBps": w["bw_bytes"] / 1e6,
                         "read_clat_mean_us": r["clat_ns"]["mean"] / 1e3,
                         "write_clat_mean_us": w["clat_ns"]["mean"] / 1e3,
                         "raw": str(jpath.relative_to(self.out))}
                return {ms[(var, "iops")].key: r["iops"] + w["iops"],
                        ms[(var, "mbps")].key: (r["bw_bytes"] + w["bw_bytes"]) / 1e6,
                        "_extra": extra}
            return f

        phases = []
        for var, before_each, side_prepare in (("warm", lambda c: sync(), prefill),
                                               ("cold", lambda c: drop_caches(), None)):
            phases.append(Phase([ms[(var, "iops")], ms[(var, "mbps")]],
                                measure(var, lambda rep: f"r{rep + 1}"), before_each, side_prepare))
            # One more run per FUSE side, same state as the repetitions: counted.
            key = self.counted(gid, var, f"{desc}, {var}", "I/Os")
            if key:
                phases.append(Phase([], measure(var, lambda rep: "counted"), before_each,
                                    counted=key))
        self.run_group(gid, metrics, prepare, phases)
