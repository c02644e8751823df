#!/usr/bin/env python3
"""Queue balancing on real mounts (docs/adaptive-io.md, "Blocking requests"): a request
that blocks does not hold up the requests queued behind it on the same io_uring queue or
/dev/fuse worker.

Each test gives efused one worker (--threads 1 --max-threads 1) and pins the blocking
process and the one that stats to CPU 0, so that over io_uring both use the same queue.
The blockers are real and deterministic, never timed:

  - SETLKW: another process holds the POSIX lock; the wait lasts until the test releases it;
  - FSYNC on storage that does not answer: efused's source directory lies on a second FUSE
    mount (an efused memory mount, "lower") whose server the test stops with SIGSTOP; the
    upper efused's fsync of the backing file waits in the lower mount until SIGCONT.

While the blocker is outstanding (efused holds it: efuse_worker_in_flight plus
efuse_deferred_requests in /metrics), another process runs stat() calls that each reach
efused (--attr-timeout 0: every stat is a GETATTR); they must all complete, and the blocker
must still be outstanding afterwards. Runs once per transport.

The queue threads' scheduling class (docs/adaptive-io.md, "Queue threads"): over io_uring
they run SCHED_IDLE, and a busy loop on CPU 0 starves queue 0's thread until the guard makes
it SCHED_BATCH; over /dev/fuse there are no queues to classify.
"""

import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port, parse, scrape, value  # noqa: E402

J = os.path.join
STATS = 300  # stat() calls made while the blocker waits


def outstanding(port, mount):
    """Requests of `mount` efused holds unanswered: those being served on a worker or queue
    and those owed a deferred reply (lock waits, the offload pool)."""
    s = parse(scrape(port))
    return ((value(s, "efuse_worker_in_flight", mount=mount) or 0) +
            (value(s, "efuse_deferred_requests", mount=mount) or 0))


def child(code, *args):
    """A Python child pinned to CPU 0 that talks over stdin/stdout lines."""
    prelude = "import os, sys, fcntl\nos.sched_setaffinity(0, {0})\n"
    return h.spawn([sys.executable, "-c", prelude + code, *args], stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def expect_line(p, want):
    line = p.stdout.readline().strip()
    assert line == want, (want, line, p.stderr.read() if p.poll() is not None else "")


def stat_all(paths):
    """STATS stat() calls over `paths` from CPU 0; returns once every one was answered."""
    r = h.run([sys.executable, "-c",
               "import os, sys\nos.sched_setaffinity(0, {0})\n"
               f"paths = sys.argv[1:]\nfor i in range({STATS}):\n"
               "    os.stat(paths[i % len(paths)])\nprint('statted')", *paths], timeout=120)
    assert r.out.strip() == "statted", r


def one_worker(port, *more):
    return ["--threads", "1", "--max-threads", "1", "--attr-timeout", "0",
            "--metrics", f"127.0.0.1:{port}", *more]


def test_stats_complete_while_a_setlkw_waits():
    port = free_port()
    with h.EfusedMount(args=one_worker(port), tag="efuse-qb") as m:
        path = J(m.mnt, "locked")
        h.write_file(path, b"x" * 100)
        for i in range(4):
            h.write_file(J(m.mnt, f"s{i}"), b"s")
        holder = child("fd = os.open(sys.argv[1], os.O_RDWR)\n"
                       "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\n"
                       "sys.stdin.readline()\nfcntl.lockf(fd, fcntl.LOCK_UN)\n"
                       "print('released', flush=True)\nsys.stdin.readline()", path)
        waiter = None
        name = os.path.basename(m.mnt)
        try:
            expect_line(holder, "held")
            waiter = child("fd = os.open(sys.argv[1], os.O_RDWR)\nprint('open', flush=True)\n"
                           "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)", path)
            expect_line(waiter, "open")
            # Its SETLKW is with efused, waiting for the lock.
            h.wait_until(lambda: outstanding(port, name) == 1, 30, what="the SETLKW outstanding")
            stat_all([J(m.mnt, f"s{i}") for i in range(4)])
            # Every stat was answered while the lock wait went on.
            assert waiter.poll() is None and outstanding(port, name) == 1
            holder.stdin.write("\n")
            holder.stdin.flush()
            expect_line(holder, "released")
            expect_line(waiter, "locked")
            assert waiter.wait(timeout=60) == 0
        finally:
            for p in (waiter, holder):
                if p is not None and p.poll() is None:
                    p.kill()
                    h.reap(p)
        s = parse(scrape(port))
        # The holder's lock and the waiter's (lockf takes both with F_SETLKW).
        assert value(s, "efuse_requests_total", mount=name, opcode="setlkw") >= 2
        assert value(s, "efuse_requests_total", mount=name, opcode="getattr") >= STATS


class Stacked:
    """A lower efused memory mount and an upper efused whose source is a directory on it."""

    def __init__(self, upper_args, env=None):
        self.lower = h.EfusedMount(backend="memory", tag="efuse-qb-lower")
        self.stopped = False
        try:
            os.mkdir(J(self.lower.mnt, "src"))
            self.upper = h.EfusedMount(args=upper_args, start=False, tag="efuse-qb", env=env,
                                       backend="passthrough")
            self.upper.srcs[0] = self.upper.src = J(self.lower.mnt, "src")
            self.upper.start()
        except BaseException:
            self.lower.cleanup()
            raise

    def stop_lower(self):
        os.kill(self.lower.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def cont_lower(self):
        if self.stopped:
            os.kill(self.lower.proc.pid, signal.SIGCONT)
            self.stopped = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cont_lower()
        try:
            self.upper.cleanup()
        finally:
            self.lower.cleanup()


def fsync_blocked_while_stats_run(st, port):
    """The fsync of a file of the upper mount waits in the stopped lower mount while
    stat() calls through the upper mount all complete. Returns the upper's /metrics."""
    up = st.upper
    for i in range(4):
        h.write_file(J(up.mnt, f"s{i}"), b"s")
    paths = [J(up.mnt, f"s{i}") for i in range(4)]
    for p in paths:  # the lower mount caches their attributes from now on
        os.stat(p)
    syncer = child("fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
                   "os.write(fd, b'y' * 65536)\nprint('written', flush=True)\n"
                   "sys.stdin.readline()\nos.fsync(fd)\nprint('synced', flush=True)",
                   J(up.mnt, "synced"))
    name = os.path.basename(up.mnt)
    try:
        expect_line(syncer, "written")
        st.stop_lower()
        syncer.stdin.write("\n")
        syncer.stdin.flush()
        # The FSYNC is with the upper efused, whose fsync of the backing file waits for the
        # lower mount's server: stopped, it cannot answer.
        h.wait_until(lambda: outstanding(port, name) == 1, 30, what="the FSYNC outstanding")
        stat_all(paths)
        assert syncer.poll() is None and outstanding(port, name) == 1, \
            "the fsync must still be outstanding"
        samples = parse(scrape(port))
        st.cont_lower()
        expect_line(syncer, "synced")
        assert syncer.wait(timeout=60) == 0
    finally:
        st.cont_lower()
        if syncer.poll() is None:
            syncer.kill()
            h.reap(syncer)
    with open(J(up.src, "synced"), "rb") as f:
        assert f.read() == b"y" * 65536
    return samples


def test_stats_complete_while_an_fsync_blocks_on_storage():
    """The offload pool serves the fsync (its first guess): the one worker or queue goes on."""
    port = free_port()
    with Stacked(one_worker(port, "--io-path", "cache")) as st:
        s = fsync_blocked_while_stats_run(st, port)
        name = os.path.basename(st.upper.mnt)
        # While it was outstanding: on the pool, owed a deferred reply. (The truncating
        # creates of the files before went through the scheduler too: offloaded or not.)
        assert value(s, "efuse_offloaded_requests_total", mount=name) >= 1
        assert value(s, "efuse_offload_pool_depth", mount=name) == 1
        assert value(s, "efuse_deferred_requests", mount=name) == 1
        assert value(s, "efuse_offload_pool_threads", mount=name) == 1
        assert value(s, "efuse_blocking_requests_total", mount=name, opcode="fsync",
                     path="offload", reason="guess") == 1
        assert value(s, "efuse_requests_total", mount=name, opcode="getattr") >= STATS
        after = parse(scrape(port))
        assert value(after, "efuse_offload_pool_depth", mount=name) == 0
        assert value(after, "efuse_requests_total", mount=name, opcode="fsync") == 1


# A busy loop pinned to CPU 0, started by the same shell that execs efused, so that it runs
# in efused's session: SCHED_IDLE yields to normal tasks of the thread's own scheduling group
# (with autogroup: its session; under systemd: its service's cgroup). A busy loop in another
# session competes with efused's group as a whole, at the group's normal weight, and leaves
# an idle-class thread that is alone in its group a fair share (docs/adaptive-io.md). It
# spins once GO exists, until killed by the pid it wrote to PID.
HOG = ("import os, sys, time\nos.sched_setaffinity(0, {0})\n"
       "open(sys.argv[2], 'w').write(str(os.getpid()))\n"
       "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\nwhile True: pass")


def with_hog_cpu0(command, go, pidfile):
    """efused's command line, run by a shell that first starts HOG in the background."""
    return ["sh", "-c", '"$0" -c "$1" "$2" "$3" & shift 4; exec "$@"', sys.executable, HOG,
            go, pidfile, "--"] + command


def stat_missing(d, first, n):
    """n stat() calls of names that do not exist (each one a LOOKUP) from CPU 0."""
    r = h.run([sys.executable, "-c",
               "import os, sys\nos.sched_setaffinity(0, {0})\n"
               "d, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
               "for i in range(first, first + n):\n"
               "    try:\n        os.stat(os.path.join(d, 'missing-%d' % i))\n"
               "    except FileNotFoundError:\n        pass\nprint('statted')",
               d, str(first), str(n)], timeout=120)
    assert r.out.strip() == "statted", r


def test_a_starved_idle_queue_thread_becomes_batch_and_idle_again():
    port = free_port()
    with h.EfusedMount(args=one_worker(port), tag="efuse-qc", start=False) as m:
        go, pidfile = os.path.join(m.tmp, "hog-go"), os.path.join(m.tmp, "hog-pid")
        command = m.cmd()
        m.cmd = lambda: with_hog_cpu0(command, go, pidfile)  # sh execs efused: same pid
        m.start()
        h.wait_until(lambda: os.path.exists(pidfile) and open(pidfile).read(), 30,
                     what="the busy loop waiting in efused's session")
        hog = int(open(pidfile).read())
        name = os.path.basename(m.mnt)
        s = parse(scrape(port))
        if value(s, "efuse_worker_requests_total", mount=name, worker="uring-0") is None:
            # /dev/fuse workers have no scheduling class to export.
            assert value(s, "efuse_worker_idle_class", mount=name, worker="classic-0") is None
            assert value(s, "efuse_worker_starved_total", mount=name, worker="classic-0") is None
            return
        assert value(s, "efuse_worker_idle_class", mount=name, worker="uring-0") == 1
        assert value(s, "efuse_worker_starved_total", mount=name, worker="uring-0") == 0
        assert "SCHED_IDLE under the starvation guard" in open(m.log).read()
        open(go, "w").close()
        try:
            # Batches of LOOKUPs from CPU 0 until the guard found queue 0 starved (bounded by
            # the number of batches, never by time).
            for batch in range(50):
                stat_missing(m.mnt, batch * 200, 200)
                s = parse(scrape(port))
                if value(s, "efuse_worker_starved_total", mount=name, worker="uring-0") >= 1:
                    break
            assert value(s, "efuse_worker_starved_total", mount=name, worker="uring-0") >= 1, s
        finally:
            os.kill(hog, signal.SIGKILL)  # a zombie child of efused until efused exits
        # CPU 0 free again: idle after the hold (1 s, doubled per starvation soon after one).
        h.wait_until(lambda: value(parse(scrape(port)), "efuse_worker_idle_class", mount=name,
                                   worker="uring-0") == 1, timeout=200,
                     what="queue 0 idle again")
        stat_missing(m.mnt, 100000, 200)  # the mount still answers


def test_efuse_idle_queues_0_keeps_the_queue_threads_batch():
    port = free_port()
    with h.EfusedMount(args=one_worker(port), tag="efuse-qc",
                       env={"EFUSE_IDLE_QUEUES": "0"}) as m:
        name = os.path.basename(m.mnt)
        stat_missing(m.mnt, 0, 200)
        s = parse(scrape(port))
        if value(s, "efuse_worker_requests_total", mount=name, worker="uring-0") is None:
            return  # /dev/fuse: see the test above
        for q in range(os.cpu_count() or 1):
            if value(s, "efuse_worker_requests_total", mount=name, worker=f"uring-{q}") is None:
                continue
            assert value(s, "efuse_worker_idle_class", mount=name, worker=f"uring-{q}") == 0
            assert value(s, "efuse_worker_starved_total", mount=name, worker=f"uring-{q}") == 0
        assert "SCHED_IDLE" not in open(m.log).read()


if __name__ == "__main__":
    h.main(globals())
