"""Hot swap of efused's eBPF handlers on the kernel module tier (issue 20), run INSIDE the
6.12 test guest after guest_kmod.py's checks (standard library only; imported by
guest_smoke.py, which reports).

efused serves /mnt/data/ksrc at /mnt/kefuse through efuse.ko (guest_kmod.start_efused) on a
private D-Bus (open policy: efused's own uid check is the guard), and the checks drive it
with efusectl: the handler table, refused objects (another owner, writable by group,
a symlink, another handler ABI, one the verifier refuses: each leaves the handler in place),
an unprivileged caller, and swaps of the LOOKUP, GETATTR and READ handlers between the shipped
builds and builds that answer the same with other instructions (tests/vm/CMakeLists.txt,
swap_*_variant.bpf.o), and to none and back, while fio --verify and a stat loop run on the
mount; then the same for GETXATTR and LISTXATTR, and positive LOOKUP entries answered by a
swapped-in LOOKUP handler, whose lookups efused must still count. The variant builds make the module refuse an answer (bad_verdict) when they find
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
from dbus_conf import OPEN_POLICY, bus_config  # noqa: E402
from prom_text import parse, scrape, value  # noqa: E402

BUILD = os.path.dirname(os.path.dirname(g.EFUSED))
EFUSECTL = os.path.join(os.path.dirname(g.EFUSED), "efusectl")
OPS = ("lookup", "getattr", "getxattr", "listxattr", "read", "open", "flush", "statfs",
       "release")  # the shipped handlers
SWAPPED = ("lookup", "getattr", "read")  # swapped in turn under load
SHIPPED = {op: os.path.join(BUILD, "bpf", "handlers", f"efuse_{op}.bpf.o") for op in OPS}
# Variants (same answers, other instructions) of the handlers the swap checks swap.
VARIANT = {op: os.path.join(BUILD, "tests", "vm", f"swap_{op}_variant.bpf.o")
           for op in OPS[:7]}  # tests/vm/CMakeLists.txt builds these
FIXTURE = lambda name: os.path.join(BUILD, "tests", "vm", f"swap_{name}.bpf.o")  # noqa: E731
BUS_DIR = "/tmp/efuse-swap-bus"
OBJS = "/tmp/efuse-swap-objs"
SWAPS = 100          # under fio --verify and the stat loop
EXACT_SWAPS = 20     # with the stat loop alone: every request counted
NOBODY = 65534


def abi_version():
    """EFUSE_HANDLER_ABI_VERSION of the shared header (bpf/handlers/efuse_handler.h)."""
    src = os.path.dirname(os.path.dirname(HERE))
    with open(os.path.join(src, "bpf", "handlers", "efuse_handler.h")) as f:
        for line in f:
            if line.startswith("#define EFUSE_HANDLER_ABI_VERSION "):
                return int(line.split()[2])
    raise AssertionError("no EFUSE_HANDLER_ABI_VERSION in efuse_handler.h")


ABI = abi_version()

bus = None
address = ""


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
    """Answers the module refused. Not counted: LOOKUP's bad_reply, which a positive entry
    (kmod patch 0008) gets when the kernel evicted the node's inode (here: the dentries
    dropped while fio looks its directory up) and efused had not yet read the FORGET that
    drops the entry; the request goes up and efused answers it. A request two handlers
    answered during a swap shows as bad_verdict (the variant builds, EFUSE_HANDLER_TATTLE)."""
    return [(l, v) for n, l, v in k.samples() if n == "efuse_kernel_handler_fallbacks_total"
            and l.get("reason", "").startswith("bad_") and v
            and (l.get("opcode"), l.get("reason")) != ("lookup", "bad_reply")]


def stale_entries():
    """LOOKUP answers refused as bad_reply so far (see bad_fallbacks)."""
    return metric("efuse_kernel_handler_fallbacks_total", opcode="lookup", reason="bad_reply")


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
        f.write(bus_config(sock, OPEN_POLICY))
    bus = subprocess.Popen(["dbus-daemon", f"--config-file={BUS_DIR}/bus.conf", "--nofork",
                            "--nopidfile"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    k.eventually("dbus-daemon socket", lambda: os.path.exists(sock), True)
    address = f"unix:path={sock}"
    # io_path cache: file data goes through the page cache, so O_DIRECT reads send READs
    # (with passthrough no READ would reach the handlers).
    k.start_efused("--bus", address, "--attr-timeout", "3600", "--io-path", "cache")
    table = handlers()
    assert set(table) == set(OPS), table
    progs = {p["id"]: p.get("name", "") for p in
             json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                       text=True, check=True).stdout)}
    for op, h in table.items():
        assert h["loaded"] and h["path"] == SHIPPED[op] and h["abi"] == ABI and h["swaps"] == 1, h
        assert progs.get(h["prog_id"], "").startswith(f"efuse_{op}"), (h, progs)
        assert value(k.samples(), "efuse_handler_info", mount=k.KNAME, opcode=op,
                     prog_id=str(h["prog_id"]), tag=h["tag"], abi=str(ABI), path=SHIPPED[op]) == 1


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
        (copy(FIXTURE("lookup_abi1"), "abi1.bpf.o"), f"built for handler ABI 1, efused speaks ABI {ABI}"),
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


READ_LOOP = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import guest_read as r
names, stop = sys.argv[2].split(","), sys.argv[3]
want = {n: open(n.replace(r.k.KMNT, r.k.KSRC, 1), "rb").read() for n in names}
reads = 0
while not os.path.exists(stop):
    for n in names:
        got = r.direct_read(n, 0, r.READ_MAX)
        reads += 1
        if got != want[n]:
            print(f"{n}: {len(got)} bytes read, not the backing file's {len(want[n])}",
                  file=sys.stderr)
            sys.exit(1)
print(json.dumps({"read": reads}))
"""


def start_read_loop(paths, stop):
    """O_DIRECT reads of whole small files, each compared with the backing file: one READ
    per read, answered in the kernel from the blocks efused stored."""
    return subprocess.Popen([sys.executable, "-c", READ_LOOP, HERE, ",".join(paths), stop],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def prime_reads(n):
    """n small files whose blocks efused stored: the first O_DIRECT read of each goes to
    efused, the next is answered in the kernel."""
    import guest_read as r
    prime_reads.calls += 1
    paths = []
    for i in range(n):  # new names on every call: no outside change for the watcher
        name = f"swaprd{prime_reads.calls}-{i}"
        with open(f"{k.KSRC}/{name}", "wb") as f:
            f.write(os.urandom(3000 + 7000 * i))
        paths.append(f"{k.KMNT}/{name}")
    k.eventually("RELEASE of every open", k.released, 0)
    for p in paths:
        want = open(p.replace(k.KMNT, k.KSRC, 1), "rb").read()
        got1, at1 = k.where("read", lambda: r.direct_read(p, 0, r.READ_MAX))
        got2, at2 = k.where("read", lambda: r.direct_read(p, 0, r.READ_MAX))
        assert (got1, at1, got2, at2) == (want, "efused", want, "kernel"), \
            f"{p}: from {at1}, then {at2}; bytes right: {got1 == want}, {got2 == want}"
    return paths


prime_reads.calls = 0


def read_probe(path):
    """One READ the handler answers: an O_DIRECT read of a file whose blocks are stored."""
    import guest_read as r
    want = open(path.replace(k.KMNT, k.KSRC, 1), "rb").read()
    got = r.direct_read(path, 0, r.READ_MAX)
    assert got == want, f"{path}: wrong bytes after a swap"


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
    read_paths = prime_reads(4)
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
    reads = start_read_loop(read_paths, stop)
    probe_node = k.statx_node(paths[0])
    swaps0 = {op: handlers()[op]["swaps"] for op in SWAPPED}
    read0 = k.counts("read")
    call_s, first_s, removed = [], [], 0
    by_op = {op: [] for op in SWAPPED}
    try:
        for i in range(SWAPS):
            op = SWAPPED[i % len(SWAPPED)]
            target = (VARIANT, SHIPPED)[(i // len(SWAPPED)) % 2][op]
            if i % 25 == 24:
                ctl("handler", "remove", k.KNAME, op)
                assert not handlers()[op]["loaded"]
                removed += 1
            probe = {"getattr": probe_node, "lookup": lambda: lookup_probe(missing[0]),
                     "read": lambda: read_probe(read_paths[0])}[op]
            c, f = swap_and_time(op, target, probe)
            call_s.append(c)
            first_s.append(f)
            by_op[op].append(f)
            assert fio.poll() is None, f"fio failed: {fio.communicate()[1][-1500:]}"
            assert loop.poll() is None, f"stat loop failed: {loop.communicate()[1][-1500:]}"
            assert reads.poll() is None, f"read loop failed: {reads.communicate()[1][-1500:]}"
    finally:
        counts = json.loads(stop_process(loop, stop))
        read_counts = json.loads(stop_process(reads, stop))
        out, err = fio.communicate(timeout=600)
    assert fio.returncode == 0, f"fio --verify failed: {out[-800:]} {err[-1500:]}"
    table = handlers()
    for op in SWAPPED:
        want_swaps = swaps0[op] + len(range(SWAPPED.index(op), SWAPS, len(SWAPPED)))
        assert table[op]["loaded"] and table[op]["swaps"] == want_swaps, table[op]
        assert table[op]["removals"] >= removed // len(SWAPPED), table[op]
    read1 = k.counts("read")
    assert not bad_fallbacks(), f"answered twice or refused: {bad_fallbacks()}"
    # efused's own time per swap (load, verifier, attach, grace period, gate, detach), from
    # its log: the rest of a call is efusectl and D-Bus.
    swapped = [l for l in k.log_text().splitlines() if "handler swapped to" in l][-SWAPS:]
    seconds = lambda l: float(l.rsplit("(", 1)[1].split(" s)")[0])  # noqa: E731
    inside = [seconds(l) for l in swapped]
    for op in SWAPPED:
        mine = [seconds(l) for l in swapped if f": {op} handler swapped" in l]
        print(f"  efused's part of a {op} swap: median {statistics.median(mine) * 1000:.0f} ms, "
              f"max {max(mine) * 1000:.0f} ms", flush=True)
    print(f"  LOOKUP answers refused as bad_reply (positive entries for evicted nodes): "
          f"{stale_entries():.0f}", flush=True)
    print(f"  efused's part of a swap: median {statistics.median(inside) * 1000:.0f} ms, "
          f"max {max(inside) * 1000:.0f} ms", flush=True)
    print(f"  {SWAPS} swaps ({removed} of them after a removal) under fio --verify "
          f"({out.strip()} runs) and a stat loop ({counts['getattr']} GETATTRs, "
          f"{counts['lookup']} missing names); swap call "
          f"median {statistics.median(call_s) * 1000:.0f} ms, max {max(call_s) * 1000:.0f} ms; "
          f"call to first request answered by the new handler median "
          f"{statistics.median(first_s) * 1000:.0f} ms, max {max(first_s) * 1000:.0f} ms",
          flush=True)
    for op, times in by_op.items():
        print(f"  {op}: {len(times)} swaps, call to first request answered by the new handler "
              f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms",
              flush=True)
    print(f"  read loop: {read_counts['read']} O_DIRECT reads, every byte the backing file's; "
          f"READs answered in the kernel {read1[0] - read0[0]:.0f}, by efused "
          f"{read1[1] - read0[1]:.0f} (fio's, those after a removal of the READ handler, and "
          "those after the stat loop's dentry drops evicted an inode: its FORGET drops its "
          "blocks)", flush=True)
    assert read1[0] - read0[0] > 0, "no READ answered in the kernel during the swaps"


def exact_swaps(op, paths, start_loop, stop):
    """EXACT_SWAPS swaps of `op`'s handler with only `start_loop(paths, stop)` (requests of
    `op` the handlers answer) on the mount: every request it made was answered exactly
    once, in the kernel, by the old handler or the new one (a request neither looked at
    would have gone to efused)."""
    if os.path.exists(stop):
        os.unlink(stop)
    k.eventually("RELEASE of every open", k.released, 0)
    answered0, efused0 = k.counts(op)
    loop = start_loop(paths, stop)
    try:
        for i in range(EXACT_SWAPS):
            ctl("handler", "swap", k.KNAME, op, (VARIANT, SHIPPED)[i % 2][op])
    finally:
        made = json.loads(stop_process(loop, stop))[op]
    answered1, efused1 = k.counts(op)
    assert (answered1 - answered0, efused1 - efused0) == (made, 0), \
        f"{made} {op} requests made: {answered1 - answered0} answered in the kernel, " \
        f"{efused1 - efused0} by efused"
    assert not bad_fallbacks(), bad_fallbacks()
    print(f"  {EXACT_SWAPS} {op} swaps: {made} requests, each answered once in the kernel",
          flush=True)


def check_swap_every_request_once():
    """GETATTR: exact_swaps with a stat loop."""
    paths, _ = prime(4, 0)
    exact_swaps("getattr", paths, lambda p, stop: start_stat_loop(p, [], stop, lookups=False),
                "/tmp/efuse-swap-stop2")


def check_swap_every_read_once():
    """READ: exact_swaps with a loop of O_DIRECT reads, every byte the backing file's."""
    exact_swaps("read", prime_reads(3), start_read_loop, "/tmp/efuse-swap-stop3")


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


def check_swap_xattr_handlers():
    """GETXATTR and LISTXATTR (kmod patch 0009) swap like the others: each is its own
    object, listed and counted on its own; a variant build swapped in answers from the
    map efused kept (one map, efuse_xattr_answers, for both); removed, the request goes to
    efused with the right answer; swapped back, the kernel answers again."""
    x, sx = f"{k.KMNT}/swapxa", f"{k.KSRC}/swapxa"
    with open(sx, "w") as f:
        f.write("x\n")
    os.setxattr(sx, "user.a", b"b")
    k.eventually("RELEASE of every open", k.released, 0)
    calls = {"getxattr": lambda: os.getxattr(x, "user.a"),
             "listxattr": lambda: sorted(os.listxattr(x))}
    want = {"getxattr": b"b", "listxattr": ["user.a"]}
    for op, fn in calls.items():
        first, at1 = k.where(op, fn)
        second, at2 = k.where(op, fn)
        assert (first, at1, second, at2) == (want[op], "efused", want[op], "kernel"), \
            f"{op}: {first!r} from {at1}, then {second!r} from {at2}"
    before = handlers()
    for op, fn in calls.items():
        ctl("handler", "swap", k.KNAME, op, VARIANT[op])
        got, at = k.where(op, fn)
        assert (got, at) == (want[op], "kernel"), f"{op} after the swap: {got!r} from {at}"
        ctl("handler", "remove", k.KNAME, op)
        got, at = k.where(op, fn)
        assert (got, at) == (want[op], "efused"), f"{op} removed: {got!r} from {at}"
        ctl("handler", "swap", k.KNAME, op, SHIPPED[op])
        got, at = k.where(op, fn)
        assert (got, at) == (want[op], "kernel"), f"{op} swapped back: {got!r} from {at}"
    after = handlers()
    for op in calls:
        h = after[op]
        assert h["loaded"] and h["path"] == SHIPPED[op] and h["abi"] == ABI, h
        assert (h["swaps"], h["removals"]) == (before[op]["swaps"] + 2,
                                              before[op]["removals"] + 1), (before[op], h)
        assert h["answered"] >= 3 and metric("efuse_handler_swaps_total", opcode=op) == h["swaps"]
        assert metric("efuse_handler_info", opcode=op, prog_id=str(h["prog_id"])) == 1, h
    # A handler object holds one opcode: the GETXATTR one is refused for LISTXATTR.
    r = ctl("handler", "swap", k.KNAME, "listxattr", SHIPPED["getxattr"], expect=1)
    assert "answers opcode 22, not opcode 23" in r.stderr, r.stderr
    assert not bad_fallbacks(), bad_fallbacks()


def check_swap_positive_lookups():
    """Positive LOOKUP entries (kmod patch 0008) answered by a swapped-in LOOKUP handler:
    the counting program is the mount's, not the handler's, so each lookup the kernel took
    is still folded into efused's count, and the FORGET meets it exactly."""
    os.makedirs(f"{k.KSRC}/swappos", exist_ok=True)
    with open(f"{k.KSRC}/swappos/f", "w") as f:
        f.write("positive\n")
    os.link(f"{k.KSRC}/swappos/f", f"{k.KSRC}/swappos/g")
    k.close_nodes()
    k.eventually("RELEASE of every open", k.released, 0)
    ctl("handler", "swap", k.KNAME, "lookup", VARIANT["lookup"])
    excess0 = metric("efuse_forget_excess_total")
    taken0 = metric("efuse_kernel_entry_lookups_total")
    held = os.open(f"{k.KMNT}/swappos/f", os.O_PATH)  # keeps the node's inode in the kernel
    try:
        def lookup_g():
            k.forget_dentries()
            return k.where("lookup", lambda: k.statx(f"{k.KMNT}/swappos/g"))

        want = k.native(f"{k.KSRC}/swappos/g")
        got = [lookup_g() for _ in range(3)]
        assert got == [(want, "efused"), (want, "kernel"), (want, "kernel")], got
        # Swapped back mid-way: the shipped handler answers from the same map.
        ctl("handler", "swap", k.KNAME, "lookup", SHIPPED["lookup"])
        assert lookup_g() == (want, "kernel")
    finally:
        os.close(held)
    inodes = lambda: (k.forget_dentries(), metric("efuse_inodes"))[1]  # noqa: E731
    k.eventually("every node forgotten but the root", inodes, 1)
    assert metric("efuse_forget_excess_total") == excess0, "a FORGET exceeded efused's count"
    taken = metric("efuse_kernel_entry_lookups_total") - taken0
    assert taken >= 3, f"lookups taken from entries (2 by the variant, 1 shipped): {taken}"
    assert not bad_fallbacks(), bad_fallbacks()


def check_swap_stop():
    k.close_nodes()
    k.stop_efused()
    k.eventually("handler programs freed after SIGTERM", k.handler_programs, [])


CHECKS = (check_swap_setup, check_swap_refusals, check_swap_under_load,
          check_swap_every_request_once, check_swap_every_read_once, check_swap_none_and_back,
          check_swap_xattr_handlers,
          check_swap_positive_lookups, check_swap_stop)
check_swap_under_load.timeout = 1200


def cleanup(failed):
    k.cleanup(failed)
    if bus is not None:
        bus.send_signal(signal.SIGTERM)
        bus.wait(timeout=30)
    subprocess.run(["rmmod", "efuse"], capture_output=True, timeout=60)
