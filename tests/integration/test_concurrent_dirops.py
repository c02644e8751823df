#!/usr/bin/env python3
"""16 processes create, rename, link, unlink and stat files in ONE directory of the mount,
each on its own names (whose state it tracks exactly) and on shared names (where
ENOENT/EEXIST races are expected). Any other errno, any wrong result, or any difference
between the mount's listing, the backing listing and the tracked state fails the test."""

import errno
import json
import os
import random
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402

J = os.path.join
WORKERS = 16
OPS = 3000 * h.soak_scale()  # per worker
OWN = 40  # names per worker
SHARED = 24  # names every worker touches


def own(w, k):
    return f"w{w:02d}-{k}"


def shared(k):
    return f"shared-{k}"


def worker(w, d, seed, result_path, ops):
    rng = random.Random(seed * 1000 + w)
    state = {}  # own name -> [content, inode tag]; only this worker touches its own names
    tags = iter(range(10**9))
    errors = []
    counts = {}

    def bad(msg):
        if len(errors) < 20:
            errors.append(msg)

    def expect(opname, fn, ok_errnos=(), want_errno=None):
        counts[opname] = counts.get(opname, 0) + 1
        try:
            fn()
        except OSError as e:
            if want_errno is not None and e.errno == want_errno:
                return e.errno
            if e.errno in ok_errnos:
                return e.errno
            bad(f"{opname}: unexpected {errno.errorcode.get(e.errno, e.errno)} "
                f"(wanted {errno.errorcode.get(want_errno) if want_errno else 'success'})")
            return e.errno
        if want_errno is not None:
            bad(f"{opname}: succeeded, wanted {errno.errorcode[want_errno]}")
        return 0

    def create(name, content):
        fd = os.open(J(d, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)

    for i in range(ops):
        op = rng.random()
        a, b = own(w, rng.randrange(OWN)), own(w, rng.randrange(OWN))
        s1, s2 = shared(rng.randrange(SHARED)), shared(rng.randrange(SHARED))
        content = f"{w}:{i}\n"
        if op < 0.20:  # own create
            want = errno.EEXIST if a in state else None
            if expect("create", lambda: create(a, content), want_errno=want) == 0:
                state[a] = [content, next(tags)]
        elif op < 0.35:  # own rename (replaces an existing target)
            want = errno.ENOENT if a not in state else None
            # (an unexpected success is already reported; the model only follows its own)
            if expect("rename", lambda: os.rename(J(d, a), J(d, b)), want_errno=want) == 0 \
                    and a in state:
                # rename between two links of one file changes nothing (POSIX)
                if a != b and state.get(b, [None, None])[1] != state[a][1]:
                    state[b] = state.pop(a)
        elif op < 0.45:  # own unlink
            want = errno.ENOENT if a not in state else None
            if expect("unlink", lambda: os.unlink(J(d, a)), want_errno=want) == 0:
                state.pop(a, None)
        elif op < 0.50:  # own hard link
            want = (errno.ENOENT if a not in state else errno.EEXIST if b in state else None)
            if expect("link", lambda: os.link(J(d, a), J(d, b)), want_errno=want) == 0 \
                    and a in state:
                state[b] = state[a]
        elif op < 0.60:  # own stat + read: exact state
            counts["stat"] = counts.get("stat", 0) + 1
            try:
                with open(J(d, a), "rb") as f:
                    got = f.read().decode()
                if a not in state:
                    bad(f"read {a}: exists but should not (got {got!r})")
                elif got != state[a][0]:
                    bad(f"read {a}: {got!r} != {state[a][0]!r}")
            except OSError as e:
                if not (e.errno == errno.ENOENT and a not in state):
                    bad(f"read {a}: {errno.errorcode.get(e.errno)} (tracked: {state.get(a)!r})")
        elif op < 0.72:  # shared create
            expect("s-create", lambda: create(s1, content), ok_errnos=(errno.EEXIST,))
        elif op < 0.82:  # shared rename
            expect("s-rename", lambda: os.rename(J(d, s1), J(d, s2)), ok_errnos=(errno.ENOENT,))
        elif op < 0.90:  # shared unlink
            expect("s-unlink", lambda: os.unlink(J(d, s1)), ok_errnos=(errno.ENOENT,))
        elif op < 0.95:  # own -> shared rename (gives the file away)
            want = errno.ENOENT if a not in state else None
            if expect("give", lambda: os.rename(J(d, a), J(d, s1)), want_errno=want) == 0:
                # If s1 was already another link of a's file (given away earlier through a
                # hard link of a), rename changes nothing and a stays (POSIX). Only this
                # worker touches its own names, so whether a remains tells which happened.
                if not os.path.lexists(J(d, a)):
                    state.pop(a, None)
        else:  # shared stat (either outcome is fine, but no other errno)
            expect("s-stat", lambda: os.stat(J(d, s1)), ok_errnos=(errno.ENOENT,))
        if i % 250 == 249:  # the listing shows exactly this worker's own names
            mine = sorted(n for n in os.listdir(d) if n.startswith(f"w{w:02d}-"))
            if mine != sorted(state):
                bad(f"listing at op {i}: extra {sorted(set(mine) - set(state))[:5]}, "
                    f"missing {sorted(set(state) - set(mine))[:5]}")
    with open(result_path, "w") as f:
        json.dump({"state": state, "errors": errors, "counts": counts}, f)


def run_workers(m, d, seed, ops=OPS, timeout=300 * h.soak_scale()):
    pids = {}
    for w in range(WORKERS):
        path = J(m.tmp, f"worker-{w}.json")
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                worker(w, d, seed, path, ops)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        pids[pid] = (w, path)
    deadline = time.monotonic() + timeout
    status = {}
    try:
        while len(status) < len(pids):
            if time.monotonic() > deadline:
                raise AssertionError(f"workers did not finish within {timeout}s "
                                     f"(done: {len(status)}/{len(pids)})\n{m.log_tail()}")
            for pid in pids:
                if pid in status:
                    continue
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status[pid] = st
            time.sleep(0.05)
    finally:
        for pid in pids:
            if pid not in status:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
    results = {}
    for pid, (w, path) in pids.items():
        assert os.WIFEXITED(status[pid]) and os.WEXITSTATUS(status[pid]) == 0, \
            f"worker {w} crashed (status {status[pid]})"
        with open(path) as f:
            results[w] = json.load(f)
    return results


def check(m, d_mnt, d_src, results, ops=OPS):
    errors = [f"worker {w}: {e}" for w, r in results.items() for e in r["errors"]]
    assert not errors, "unexpected results:\n" + "\n".join(errors[:40])
    listed = h.assert_listing_equal(d_mnt, d_src)
    for w, r in results.items():
        mine = sorted(n for n in listed if n.startswith(f"w{w:02d}-"))
        assert mine == sorted(r["state"]), (w, mine, sorted(r["state"]))
        for name, (content, _) in r["state"].items():
            assert h.read_file(J(d_mnt, name)).decode() == content, (name, content)
            assert h.read_file(J(d_src, name)).decode() == content, (name, content)
    for name in listed:  # every entry resolves and matches the backing file
        st_m, st_s = os.lstat(J(d_mnt, name)), os.lstat(J(d_src, name))
        assert (st_m.st_size, st_m.st_nlink, st_m.st_mode) == \
               (st_s.st_size, st_s.st_nlink, st_s.st_mode), name
        assert h.read_file(J(d_mnt, name)) == h.read_file(J(d_src, name)), name
    total = sum(sum(r["counts"].values()) for r in results.values())
    assert total == WORKERS * ops, total
    return listed


def test_concurrent_one_directory(m):
    seed = h.seed()
    os.mkdir(m.m("d"))
    results = run_workers(m, m.m("d"), seed)
    check(m, m.m("d"), m.s("d"), results)
    m.check_alive()
    # After a restart the kernel has no cached entries: still the same picture.
    m.restart_if_persistent()
    check(m, m.m("d"), m.s("d"), results)


@h.mount_options(threads=1)
def test_concurrent_single_worker_thread(m):
    # Same workload against a server with one worker thread (requests queue up).
    seed = h.seed()
    os.mkdir(m.m("d"))
    results = run_workers(m, m.m("d"), seed, ops=1500)
    check(m, m.m("d"), m.s("d"), results, ops=1500)


if __name__ == "__main__":
    h.main(globals())
