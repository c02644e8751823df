"""Hot swap of efused's eBPF handlers on the kernel module tier (issue 20), run INSIDE the
6.12 test guest after guest_kmod.py's checks (standard library only; imported by
guest_smoke.py, which reports).

efused serves /mnt/data/ksrc at /mnt/kefuse through efuse.ko (guest_kmod.start_efused) on a
private D-Bus (open policy: efused's own uid check is the guard), and the checks drive it
with efusectl: the handler table, refused objects (another owner, writable by group,
a symlink, another handler ABI, one the verifier refuses: each leaves the handler in place),
an unprivileged caller, and swaps of the LOOKUP and GETATTR handlers between the shipped
builds and builds that answer the same with other instructions (tests/vm/CMakeLists.txt,
swap_*_variant.bpf.o), and to none and back, while fio --verify and a stat loop run on the
mount. The variant builds make the module refuse an answer (bad_verdict) when they find
the request answered by another copy already, so a request two handlers answered shows.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import guest_kmod as k  # noqa: E402
import guest_smoke as g  # noqa: E402
from prom_text import parse, scrape, value  # noqa: E402

BUILD = os.path.dirname(os.path.dirname(g.EFUSED))
EFUSECTL = os.path.join(os.path.dirname(g.EFUSED), "efusectl")
SHIPPED = {op: os.path.join(BUILD, "bpf", "handlers", f"efuse_{op}.bpf.o")
           for op in ("lookup", "getattr")}
VARIANT = {op: os.path.join(BUILD, "tests", "vm", f"swap_{op}_variant.bpf.o")
           for op in ("lookup", "getattr")}
FIXTURE = lambda name: os.path.join(BUILD, "tests", "vm", f"swap_{name}.bpf.o")  # noqa: E731
BUS_DIR = "/tmp/efuse-swap-bus"
OBJS = "/tmp/efuse-swap-objs"
SWAPS = 100          # under fio --verify and the stat loop
EXACT_SWAPS = 20     # with the stat loop alone: every request counted
NOBODY = 65534

bus = None
address = ""

OPEN_POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def ctl(*args, expect=0, uid=None):
    cmd = [EFUSECTL, "--bus", address, *args]
    if uid is not None:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == expect, \
        f"{' '.join(cmd)}: exit {r.returncode}, want {expect}: {r.stdout[-500:]} {r.stderr[-1500:]}"
    return r


def handlers():
    return {h["opcode"]: h for h in json.loads(ctl("--json", "handler", "list", k.KNAME).stdout)}


def metric(name, **labels):
    return value(parse(scrape(k.KPORT)), name, mount=k.KNAME, **labels) or 0


def bad_fallbacks():
    return [(l, v) for n, l, v in k.samples() if n == "efuse_kernel_handler_fallbacks_total"
            and l.get("reason", "").startswith("bad_") and v]


def check_swap_setup():
    """efused on efuse.ko with a D-Bus of its own; the shipped handlers are listed with the
    programs the kernel runs and efused's handler ABI."""
    global bus, address
    with open("/proc/modules") as f:
        if not any(line.split()[0] == "efuse" for line in f):
            subprocess.run(["insmod", f"{g.DATA}/efuse.ko"], check=True, timeout=120,
                           capture_output=True)
    os.makedirs(BUS_DIR, exist_ok=True)
    os.chmod(BUS_DIR, 0o755)
    sock = f"{BUS_DIR}/sock"
    with open(f"{BUS_DIR}/bus.conf", "w") as f:
        f.write(OPEN_POLICY % sock)
    bus = subprocess.Popen(["dbus-daemon", f"--config-file={BUS_DIR}/bus.conf", "--nofork",
                            "--nopidfile"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    k.eventually("dbus-daemon socket", lambda: os.path.exists(sock), True)
    address = f"unix:path={sock}"
    k.start_efused("--bus", address, "--attr-timeout", "3600")
    table = handlers()
    assert set(table) == {"lookup", "getattr"}, table
    progs = {p["id"]: p.get("name", "") for p in
             json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                       text=True, check=True).stdout)}
    for op, h in table.items():
        assert h["loaded"] and h["path"] == SHIPPED[op] and h["abi"] == 2 and h["swaps"] == 1, h
        assert progs.get(h["prog_id"], "").startswith(f"efuse_{op}"), (h, progs)
        assert value(k.samples(), "efuse_handler_info", mount=k.KNAME, opcode=op,
                     prog_id=str(h["prog_id"]), tag=h["tag"], abi="2", path=SHIPPED[op]) == 1


def check_swap_refusals():
    """Objects efused must not load are refused with the reason; the verifier's rejection
    comes back with its log; the handler in place stays; an unprivileged caller is refused."""
    os.makedirs(OBJS, exist_ok=True)
    os.chmod(OBJS, 0o755)
    before = handlers()["lookup"]

    def copy(src, name, mode=0o644, owner=0):
        dst = f"{OBJS}/{name}"
        shutil.copyfile(src, dst)
        os.chmod(dst, mode)
        os.chown(dst, owner, owner)
        return dst

    link = f"{OBJS}/link.bpf.o"
    if not os.path.lexists(link):
        os.symlink(SHIPPED["lookup"], link)
    cases = [
        (copy(SHIPPED["lookup"], "nobody.bpf.o", owner=NOBODY), "owned by uid 65534, not root"),
        (copy(SHIPPED["lookup"], "groupw.bpf.o", 0o664), "writable by group or other (mode 0664)"),
        (link, f"{link} is a symlink"),
        (copy(FIXTURE("lookup_abi1"), "abi1.bpf.o"), "built for handler ABI 1, efused speaks ABI 2"),
        (copy(FIXTURE("verifier_reject"), "reject.bpf.o"), "verifier log:"),
        (copy(SHIPPED["getattr"], "getattr.bpf.o"), "answers opcode 3, not opcode 1"),
    ]
    for path, why in cases:
        r = ctl("handler", "swap", k.KNAME, "lookup", path, expect=1)
        assert why in r.stderr, f"{path}: {r.stderr[-1500:]}"
        if "verifier" in why:
            assert "invalid mem access" in r.stderr or "map_value_or_null" in r.stderr, r.stderr
            print(f"  verifier rejection returned {len(r.stderr)} bytes of log", flush=True)
    r = ctl("handler", "swap", k.KNAME, "lookup", VARIANT["lookup"], expect=4, uid=NOBODY)
    assert "permission denied" in r.stderr, r.stderr
    ctl("handler", "remove", k.KNAME, "lookup", expect=4, uid=NOBODY)
    after = handlers()["lookup"]
    assert (after["prog_id"], after["path"]) == (before["prog_id"], before["path"]), after
    assert after["failed_swaps"] == before["failed_swaps"] + len(cases), after
    assert metric("efuse_handler_swap_failures_total", opcode="lookup") == after["failed_swaps"]
    assert not bad_fallbacks(), bad_fallbacks()


STAT_LOOP = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import guest_kmod as k
paths, missing, stop = sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4]
lookups = len(sys.argv) > 5
nodes = [(p, k.statx_node(p), k.native(p.replace(k.KMNT, k.KSRC, 1))) for p in paths]
calls = misses = rounds = 0
while not os.path.exists(stop):
    for p, node, want in nodes:
        got = node()
        calls += 1
        if got != want:
            print(f"{p}: {got}, backing {want}", file=sys.stderr)
            sys.exit(1)
    if lookups:
        rounds += 1
        if rounds % 5 == 0:
            k.forget_dentries()
        for m in missing:
            try:
                k.statx(m)
                print(f"{m} exists", file=sys.stderr)
                sys.exit(1)
            except FileNotFoundError:
                misses += 1
print(json.dumps({"getattr": calls, "lookup": misses}))
"""


def start_stat_loop(paths, missing, stop, lookups=True):
    return subprocess.Popen([sys.executable, "-c", STAT_LOOP, HERE, ",".join(paths),
                             ",".join(missing), stop] + (["lookups"] if lookups else []),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_process(p, stop):
    open(stop, "w").close()
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}: {out[-1000:]} {err[-1500:]}"
    return out


def prime(n, missing_names=2):
    """n files whose attributes, and missing_names absent names (new ones on every call),
    the kernel answers from the maps."""
    paths = []
    for i in range(n):
        with open(f"{k.KSRC}/swap{i}", "w") as f:
            f.write(f"swap file {i}\n" * (i + 1))
        paths.append(f"{k.KMNT}/swap{i}")
    for p in paths:
        k.primed(p)
    prime.calls += 1
    missing = [f"{k.KMNT}/swap-missing{prime.calls}-{i}" for i in range(missing_names)]
    for m in missing:
        k.absent_in_kernel(m)
    return paths, missing


def lookup_probe(name):
    """One LOOKUP of a missing name the map holds: the kernel's dentry dropped first."""
    k.forget_dentries()
    try:
        got = k.statx(name)
    except FileNotFoundError:
        return
    raise AssertionError(f"{name}: {got}, not ENOENT")


prime.calls = 0


def swap_and_time(op, path, probe):
    """One swap; seconds from the call to its return and to the first request the new
    handler answered after it (`probe`: a request it answers)."""
    t0 = time.monotonic()
    ctl("handler", "swap", k.KNAME, op, path)
    t1 = time.monotonic()
    probe()
    return t1 - t0, time.monotonic() - t0


def check_swap_under_load():
    """SWAPS swaps of the LOOKUP and GETATTR handlers (shipped <-> variant build, and every
    25th to none and back) while fio --verify and a stat loop run on the mount: no I/O
    error, no wrong attribute, no byte fio did not write, no request answered twice."""
    paths, missing = prime(6)
    os.makedirs(f"{k.KMNT}/fio", exist_ok=True)
    stop = "/tmp/efuse-swap-stop"
    if os.path.exists(stop):
        os.unlink(stop)
    fio = subprocess.Popen(
        ["sh", "-c", f"n=0; while [ ! -e {stop} ]; do fio --name=swapverify "
         f"--directory={k.KMNT}/fio --size=2M --bs=4k --rw=randwrite --verify=crc32c "
         "--do_verify=1 --ioengine=psync --unlink=1 --output-format=terse >/dev/null || exit 1; "
         "n=$((n+1)); done; echo $n"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    loop = start_stat_loop(paths, missing, stop)
    probe_node = k.statx_node(paths[0])
    swaps0 = {op: handlers()[op]["swaps"] for op in ("lookup", "getattr")}
    call_s, first_s, removed = [], [], 0
    try:
        for i in range(SWAPS):
            op = ("lookup", "getattr")[i % 2]
            target = (VARIANT, SHIPPED)[(i // 2) % 2][op]
            if i % 25 == 24:
                ctl("handler", "remove", k.KNAME, op)
                assert not handlers()[op]["loaded"]
                removed += 1
            probe = probe_node if op == "getattr" else lambda: lookup_probe(missing[0])
            c, f = swap_and_time(op, target, probe)
            call_s.append(c)
            first_s.append(f)
            assert fio.poll() is None, f"fio failed: {fio.communicate()[1][-1500:]}"
            assert loop.poll() is None, f"stat loop failed: {loop.communicate()[1][-1500:]}"
    finally:
        counts = json.loads(stop_process(loop, stop))
        out, err = fio.communicate(timeout=600)
    assert fio.returncode == 0, f"fio --verify failed: {out[-800:]} {err[-1500:]}"
    table = handlers()
    for op in ("lookup", "getattr"):
        assert table[op]["loaded"] and table[op]["swaps"] == swaps0[op] + SWAPS // 2, table[op]
        assert table[op]["removals"] >= removed // 2, table[op]
    assert not bad_fallbacks(), f"answered twice or refused: {bad_fallbacks()}"
    # efused's own time per swap (load, verifier, attach, grace period, gate, detach), from
    # its log: the rest of a call is efusectl and D-Bus.
    inside = [float(l.rsplit("(", 1)[1].split(" s)")[0]) for l in k.log_text().splitlines()
              if "handler swapped to" in l][-SWAPS:]
    print(f"  efused's part of a swap: median {statistics.median(inside) * 1000:.0f} ms, "
          f"max {max(inside) * 1000:.0f} ms", flush=True)
    print(f"  {SWAPS} swaps ({removed} of them after a removal) under fio --verify "
          f"({out.strip()} runs) and a stat loop ({counts['getattr']} GETATTRs, "
          f"{counts['lookup']} missing names); swap call "
          f"median {statistics.median(call_s) * 1000:.0f} ms, max {max(call_s) * 1000:.0f} ms; "
          f"call to first request answered by the new handler median "
          f"{statistics.median(first_s) * 1000:.0f} ms, max {max(first_s) * 1000:.0f} ms",
          flush=True)


def check_swap_every_request_once():
    """EXACT_SWAPS swaps of the GETATTR handler with only the stat loop on the mount: every
    GETATTR it made was answered exactly once, in the kernel, by the old handler or the
    new one (a request neither looked at would have gone to efused)."""
    paths, _ = prime(4, 0)
    stop = "/tmp/efuse-swap-stop2"
    if os.path.exists(stop):
        os.unlink(stop)
    k.eventually("RELEASE of every open", k.released, 0)
    answered0, efused0 = k.counts("getattr")
    loop = start_stat_loop(paths, [], stop, lookups=False)
    try:
        for i in range(EXACT_SWAPS):
            ctl("handler", "swap", k.KNAME, "getattr", (VARIANT, SHIPPED)[i % 2]["getattr"])
    finally:
        counts = json.loads(stop_process(loop, stop))
    answered1, efused1 = k.counts("getattr")
    assert (answered1 - answered0, efused1 - efused0) == (counts["getattr"], 0), \
        f"{counts['getattr']} GETATTRs made: {answered1 - answered0} answered in the kernel, " \
        f"{efused1 - efused0} by efused"
    assert not bad_fallbacks(), bad_fallbacks()
    print(f"  {EXACT_SWAPS} GETATTR swaps: {counts['getattr']} GETATTRs, each answered once "
          "in the kernel", flush=True)


def check_swap_none_and_back():
    """Removed, a handler's requests go to efused with the right answers; swapped back, the
    kernel answers again from the maps efused kept meanwhile."""
    ctl("handler", "remove", k.KNAME, "getattr")
    node = k.statx_node(f"{k.KMNT}/swap0")
    got, at = k.where("getattr", node)
    assert (got, at) == (k.native(f"{k.KSRC}/swap0"), "efused"), (got, at)
    r = ctl("handler", "remove", k.KNAME, "getattr", expect=1)
    assert "no handler is loaded" in r.stderr, r.stderr
    ctl("handler", "swap", k.KNAME, "getattr", SHIPPED["getattr"])
    got, at = k.where("getattr", node)
    assert (got, at) == (k.native(f"{k.KSRC}/swap0"), "kernel"), (got, at)
    r = ctl("handler", "stats", k.KNAME)
    assert "getattr" in r.stdout and "lookup" in r.stdout, r.stdout


def check_swap_stop():
    k.close_nodes()
    k.stop_efused()
    k.eventually("handler programs freed after SIGTERM", k.handler_programs, [])


CHECKS = (check_swap_setup, check_swap_refusals, check_swap_under_load,
          check_swap_every_request_once, check_swap_none_and_back, check_swap_stop)
check_swap_under_load.timeout = 1200


def cleanup(failed):
    k.cleanup(failed)
    if bus is not None:
        bus.send_signal(signal.SIGTERM)
        bus.wait(timeout=30)
    subprocess.run(["rmmod", "efuse"], capture_output=True, timeout=60)
