#!/usr/bin/env python3
"""What efused says when it cannot check or turn on FUSE over io_uring. The fuse module's
/sys/module/fuse/parameters/enable_uring may be invisible (a container's /sys without
module/) or read-only while it is N; the log must name the path and the errno of what
failed, never claim the kernel lacks FUSE over io_uring, and efused must still serve: over
io_uring when the kernel offers it at INIT anyway, else over /dev/fuse.

Each case runs efused in a private mount namespace (unshare -m) in which the parameter is
hidden or replaced; nothing of it is visible outside, and it ends with efused."""

import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402

J = os.path.join
PARAM = "/sys/module/fuse/parameters/enable_uring"

# Runs inside the new mount namespace: hide or replace the parameter, then become efused.
SETUP = {
    "hidden": "mount -t tmpfs efuse-test /sys/module",
    "read-only N": (f"echo N > \"$TMP/param\" && mount --bind \"$TMP/param\" {PARAM} && "
                    f"mount -o remount,bind,ro {PARAM}"),
}


def host_param():
    try:
        with open(PARAM) as f:
            return f.read(1)
    except OSError:
        return None


def run_case(case):
    """Start efused (--transport uring) in its namespace, wait for the ready line, stop it
    with SIGTERM; returns its log. Asserts a clean start and a clean exit."""
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="efuse-uring-setup-", dir="/tmp"))
    src, mnt, log = J(tmp, "src"), J(tmp, "mnt"), J(tmp, "efused.log")
    os.mkdir(src)
    os.mkdir(mnt)
    script = (f"set -e; mount --make-rprivate /; {SETUP[case]}; "
              f"exec \"$@\" >\"$TMP/efused.log\" 2>&1")
    efused = [h.EFUSED, "--mount", f"{src}:{mnt}", "--transport", "uring"]
    env = dict(os.environ, TMP=tmp)
    p = h.spawn(["unshare", "-m", "sh", "-c", script, "sh", *efused], env=env,
                stdin=subprocess.DEVNULL)
    text = lambda: open(log, errors="replace").read() if os.path.exists(log) else ""  # noqa: E731
    try:
        deadline = time.monotonic() + h.START_TIMEOUT
        while h.READY_LINE not in text():
            assert p.poll() is None, f"{case}: efused exited with {p.returncode}\n{text()}"
            assert time.monotonic() < deadline, f"{case}: not ready in time\n{text()}"
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGTERM)
        rc = p.wait(timeout=h.STOP_TIMEOUT)
        assert rc == 0, f"{case}: efused exited with {rc} after SIGTERM\n{text()}"
        return text()
    finally:
        h.reap(p)
        h.shutil.rmtree(tmp, ignore_errors=True)


def assert_no_false_claim(log):
    for claim in ("has no FUSE over io_uring", "has no io_uring support"):
        assert claim not in log, f"efused claims the kernel lacks io_uring:\n{log}"


def test_parameter_hidden():
    log = run_case("hidden")
    print("  " + "\n  ".join(ln for ln in log.splitlines() if "uring" in ln))
    assert_no_false_claim(log)
    assert f"opening {PARAM} failed: No such file or directory (ENOENT)" in log, log
    if host_param() == "Y":
        # The kernel offers io_uring at INIT whatever the container sees: it is used.
        assert "FUSE over io_uring:" in log and "io_uring on" in log, log
    else:
        assert "serving over /dev/fuse" in log and PARAM in log, log


def test_parameter_read_only_and_off():
    log = run_case("read-only N")
    print("  " + "\n  ".join(ln for ln in log.splitlines() if "uring" in ln))
    assert_no_false_claim(log)
    line = next((ln for ln in log.splitlines() if "transport uring unavailable" in ln), "")
    assert line, f"no fallback logged:\n{log}"
    for word in (PARAM, "is N", "Read-only file system (EROFS)", "serving over /dev/fuse"):
        assert word in line, f"{word!r} missing from: {line}"


def queue_threads(m):
    """{qid: (allowed CPUs, policy)} of efused's io_uring queue threads, the number of its
    /dev/fuse workers (all SCHED_OTHER), and the policy of its queue guard (None if none)."""
    queues, workers, guard = {}, 0, None
    for tid in os.listdir(f"/proc/{m.proc.pid}/task"):
        try:
            with open(f"/proc/{m.proc.pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            policy = os.sched_getscheduler(int(tid))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just left
        if name.startswith("efuse-uring"):
            with open(f"/proc/{m.proc.pid}/task/{tid}/status") as f:
                cpus = next(ln.split()[1] for ln in f if ln.startswith("Cpus_allowed_list"))
            queues[int(name[len("efuse-uring"):])] = (cpus, policy)
        elif name.startswith("efuse-dev"):
            workers += 1
            assert policy == os.SCHED_OTHER, f"{name}: policy {policy}"
        elif name == "efuse-qguard":
            guard = policy
    return queues, workers, guard


def check_queue_threads(env, want_policy, want_guard):
    # One ring per CPU, each served by a thread pinned to that CPU: SCHED_IDLE under the
    # starvation guard (a client woken by its reply stays on its CPU), SCHED_BATCH with
    # EFUSE_IDLE_QUEUES=0 (its wakeups do not preempt the sender of a request nobody waits
    # for); the /dev/fuse workers and the guard keep the default policy.
    with h.EfusedMount(args=["--transport", "uring"], env=env) as m:
        if "io_uring on" not in m.log_text():
            h.skip("FUSE over io_uring is not in use here")
        h.write_file(m.m("f"), "x" * 10000)
        assert h.read_file(m.m("f")) == b"x" * 10000
        # The guard sets the class right after the rings start.
        h.wait_until(lambda: all(p == want_policy for _, p in queue_threads(m)[0].values()),
                     timeout=30, what=f"queue threads at policy {want_policy}")
        queues, workers, guard = queue_threads(m)
        with open("/sys/devices/system/cpu/possible") as f:
            last = int(f.read().strip().split(",")[-1].split("-")[-1])
        assert sorted(queues) == list(range(last + 1)), f"one queue per CPU: {sorted(queues)}"
        for qid, (cpus, policy) in queues.items():
            assert cpus == str(qid), f"efuse-uring{qid} runs on CPUs {cpus}"
            assert policy == want_policy, f"efuse-uring{qid}: policy {policy}"
        assert workers > 0, "no /dev/fuse workers (FORGET and INTERRUPT)"
        assert guard == want_guard, f"efuse-qguard: policy {guard}"


def test_queue_threads_pinned_and_idle_under_the_guard():
    check_queue_threads(None, os.SCHED_IDLE, os.SCHED_OTHER)


def test_queue_threads_pinned_and_batch_with_efuse_idle_queues_0():
    check_queue_threads({"EFUSE_IDLE_QUEUES": "0"}, os.SCHED_BATCH, None)


def test_auto_prefers_dev_fuse_under_systemd():
    # Under systemd (NOTIFY_SOCKET: efused keeps its /dev/fuse descriptors in the unit's
    # descriptor store) transport auto serves over /dev/fuse, the transport a restart can
    # resume; started by hand it takes io_uring when usable; transport uring under systemd
    # takes io_uring and says that a restart remounts it.
    note = "transport auto under systemd: /dev/fuse"
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="efuse-auto-", dir="/tmp"))
    path = J(tmp, "notify")
    sock, messages, stop, t = h.notify_socket(path)
    try:
        systemd = {"NOTIFY_SOCKET": path}
        with h.EfusedMount(env=systemd) as m:
            h.write_file(m.m("f"), "auto")
            assert h.read_file(m.m("f")) == b"auto"
            log = m.log_text()
        assert note in log and "io_uring on" not in log, log
        h.wait_until(lambda: any("FDSTORE=1" in x for x in messages), 5,
                     what="efused to store its descriptors")
        with h.EfusedMount(args=["--transport", "uring"], env=systemd) as m:
            uring_log = m.log_text()
        assert note not in uring_log, uring_log
        if "io_uring on" not in uring_log:
            h.skip("FUSE over io_uring is not usable here: only the systemd case was checked")
        assert "a restart of efused will remount it (FUSE over io_uring" in uring_log, uring_log
        with h.EfusedMount() as m:
            by_hand = m.log_text()
        assert note not in by_hand and "io_uring on" in by_hand, by_hand
    finally:
        stop.set()
        t.join(5)
        sock.close()
        h.shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    h.main(globals(), require=("unshare", "mount"))
