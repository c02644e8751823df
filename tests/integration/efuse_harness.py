"""Harness for efuse integration tests (Python 3 standard library only).

Every test script imports this module, defines functions named ``test_*`` and ends
with ``harness.main(globals())``. The runner runs the tests in definition order, prints
``PASS name`` / ``FAIL name`` (with the traceback), then ``N passed, N failed``, and exits
non-zero when anything failed.

A test function that takes a parameter named ``m`` gets a fresh :class:`EfusedMount`
(one efused instance serving one temporary source directory, plus a native twin
directory on the same file system for comparisons). When the test returns, the runner
checks that efused is still alive, stops it with SIGTERM and requires a clean exit
(status 0, mount gone). Decorate a test with ``@mount_options(...)`` to pass arguments to
:class:`EfusedMount`.

Environment:
  EFUSED       path of the efused binary (default /work/main/build/bin/efused)
  EFUSED_ARGS  extra arguments appended to every efused command line (shlex split),
               e.g. ``--transport uring``
  EFUSE_BACKEND  ``passthrough`` (default) or ``memory``: the backend every EfusedMount
               serves. On memory mounts ``src`` is the mount itself (the backend is the
               store, so a test's read-back checks re-read through the mount), ``native`` is
               a tmpfs (the twin the mount is compared with), and tests marked
               ``@backing_dir(reason)`` (changes made in a backing directory behind efused's
               back) are skipped with that reason
  EFUSE_FSX    path of the fsx binary (used by test_fsx.py)
  EFUSE_FSTYPE the mounts' type in /proc/self/mountinfo (default fuse.efuse; efuse.efuse
               with ``EFUSED_ARGS=--kernel-module on``)
  CI=true      a test that would be skipped (no root, no /dev/fuse) fails instead
  EFUSE_KEEP=1 keep temporary directories of failed tests (mounts are still removed)
  EFUSE_SEED   seed for randomized tests (default: a fresh one, printed)

Everything a test starts is bounded by a timeout, and every mount is removed on exit,
on failure, on SIGINT/SIGTERM/SIGHUP and at interpreter exit.
"""

import atexit
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import inspect
import json
import os
import pickle
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback

EFUSED = os.environ.get("EFUSED") or "/work/main/build/bin/efused"
EFUSED_ARGS = shlex.split(os.environ.get("EFUSED_ARGS", ""))
BACKEND = os.environ.get("EFUSE_BACKEND", "passthrough")
if BACKEND not in ("passthrough", "memory"):
    raise SystemExit(f"EFUSE_BACKEND must be passthrough or memory, not {BACKEND!r}")
# The type efused's mounts have: fuse.efuse; efuse.efuse when EFUSED_ARGS puts them on the
# efuse kernel module (--kernel-module on; tests/vm runs suites that way).
FSTYPE = os.environ.get("EFUSE_FSTYPE") or "fuse.efuse"
READY_LINE = "efused: ready"
SKIP_CODE = 77

START_TIMEOUT = 10.0  # efused must mount and print the ready line within this
STOP_TIMEOUT = 15.0  # efused must exit after SIGTERM/SIGINT within this

# An unprivileged identity for permission and ownership tests (exists on the test machines;
# the kernel does not need a passwd entry anyway).
USER_UID = 1000
USER_GID = 1000


# --------------------------------------------------------------------------------------
# Skips
# --------------------------------------------------------------------------------------

def in_ci():
    return os.environ.get("CI", "").lower() == "true"


def seed():
    """The seed of a randomized test: EFUSE_SEED, else a fresh one; printed either way so a
    failure can be reproduced."""
    s = int(os.environ.get("EFUSE_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"  seed {s} (reproduce with EFUSE_SEED={s})", flush=True)
    return s


def soak_scale():
    """How many times its default amount of work a stress test does: EFUSE_SOAK_SCALE
    (scripts/soak.sh sets it), 1 in the default suite."""
    v = os.environ.get("EFUSE_SOAK_SCALE", "1")
    if not re.fullmatch(r"[1-9][0-9]*", v):
        raise SystemExit(f"EFUSE_SOAK_SCALE must be a positive integer, not {v!r}")
    return int(v)


def skip(reason):
    """Skip the whole script (exit 77); under CI=true this is a failure (exit 1)."""
    if in_ci():
        print(f"FAIL: cannot run: {reason} (CI=true turns skips into failures)", flush=True)
        sys.exit(1)
    print(f"SKIP: {reason}", flush=True)
    sys.exit(SKIP_CODE)


def require_fuse():
    """Exit 77 (or 1 under CI=true) when this machine cannot mount FUSE as root."""
    if os.geteuid() != 0:
        skip("integration tests need root (efused mounts with mount(2))")
    try:
        st = os.stat("/dev/fuse")
    except OSError as e:
        skip(f"/dev/fuse is missing: {e}")
    if not stat.S_ISCHR(st.st_mode):
        skip("/dev/fuse is not a character device")


def require_tools(*names):
    """Fail (never skip) when a command-line tool the test drives is not installed: the
    machine has FUSE, so a missing tool is a setup error that must not hide a test."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        print(f"FAIL: missing tools: {', '.join(missing)} (install them; see the dependency "
              "installer)", flush=True)
        print("0 passed, 1 failed", flush=True)
        sys.exit(1)


# --------------------------------------------------------------------------------------
# Processes: every wait is bounded, everything started is killed by PID
# --------------------------------------------------------------------------------------

class CommandFailed(AssertionError):
    pass


class Result:
    def __init__(self, cmd, rc, out, err):
        self.cmd, self.rc, self.out, self.err = cmd, rc, out, err

    def __repr__(self):
        return f"Result(rc={self.rc}, cmd={_fmt_cmd(self.cmd)})"


def _fmt_cmd(cmd):
    return cmd if isinstance(cmd, str) else " ".join(shlex.quote(str(c)) for c in cmd)


def _tail(text, n=30):
    lines = (text or "").splitlines()
    return "\n".join(lines[-n:])


_PROCS = []  # background processes started through spawn()
_PROCS_LOCK = threading.Lock()


def _kill_group(p, sig=signal.SIGKILL):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass


def run(cmd, *, timeout=120, check=True, input=None, cwd=None, env=None, user=None,
        shell=False):
    """Run a command with a hard timeout; returns a Result (out/err as text).

    user=(uid, gid) runs it as that identity with no supplementary groups.
    shell=True runs the string with bash -o pipefail.
    On timeout the whole process group is killed and CommandFailed is raised.
    With check=True a non-zero exit raises CommandFailed showing stderr.
    """
    kw = {}
    if shell:  # bash with pipefail, so a failing stage of a pipeline fails the command
        cmd, shell = ["bash", "-o", "pipefail", "-c", cmd], False
    if user is not None:
        kw.update(user=user[0], group=user[1], extra_groups=[])
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env,
                         start_new_session=True, shell=shell, text=True,
                         errors="surrogateescape", **kw)
    try:
        out, err = p.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = "", "(no output: process did not die after SIGKILL within 10 s)"
        raise CommandFailed(f"timed out after {timeout}s (killed): {_fmt_cmd(cmd)}\n"
                            f"--- stderr tail ---\n{_tail(err)}\n--- stdout tail ---\n{_tail(out)}")
    finally:
        if p.poll() is None:
            _kill_group(p)
    res = Result(cmd, p.returncode, out, err)
    if check and p.returncode != 0:
        raise CommandFailed(f"exit status {p.returncode}: {_fmt_cmd(cmd)}\n"
                            f"--- stderr tail ---\n{_tail(err)}\n--- stdout tail ---\n{_tail(out)}")
    return res


def spawn(cmd, **kw):
    """Popen in its own session, registered so cleanup kills it. Caller must wait bounded."""
    kw.setdefault("start_new_session", True)
    p = subprocess.Popen(cmd, **kw)
    with _PROCS_LOCK:
        _PROCS.append(p)
    return p


def reap(p, timeout=10):
    """Kill a spawned process group (SIGTERM, then SIGKILL) and wait for it, bounded."""
    if p.poll() is None:
        _kill_group(p, signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(p, signal.SIGKILL)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
    with _PROCS_LOCK:
        if p in _PROCS:
            _PROCS.remove(p)
    return p.returncode


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until true; raise AssertionError after timeout (guards hangs only)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _python_child(code, timeout, args=()):
    """Run a Python snippet in a fresh interpreter with a timeout. Returns Result."""
    return run([sys.executable, "-c", code, *map(str, args)], timeout=timeout, check=False)


def probe_errno(op, path, timeout=10):
    """Run os.<op>(path) in a child process so a hang cannot hang the test.

    Returns 0 on success, the errno on OSError, or the string "hang" on timeout.
    """
    code = ("import os,sys\n"
            "try:\n"
            f"    os.{op}(sys.argv[1])\n"
            "    print(0)\n"
            "except OSError as e:\n"
            "    print(e.errno)\n")
    try:
        r = _python_child(code, timeout, [path])
    except CommandFailed:
        return "hang"
    try:
        return int(r.out.strip())
    except ValueError:
        raise AssertionError(f"probe {op}({path}) gave no answer: rc={r.rc} err={r.err}")


# --------------------------------------------------------------------------------------
# Running Python code as another user (forked child, bounded)
# --------------------------------------------------------------------------------------

def as_user(fn, *args, uid=USER_UID, gid=USER_GID, groups=(), umask=None, timeout=60):
    """Call fn(*args) in a forked child running as uid/gid; return its result.

    An OSError in the child is re-raised here with the same errno; any other exception
    becomes an AssertionError carrying the child's traceback. The result must pickle.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.close(r)
            try:
                os.setgroups(list(groups))
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                if umask is not None:
                    os.umask(umask)
                res = ("ok", fn(*args))
            except OSError as e:
                res = ("oserror", e.errno, str(e))
            except BaseException:
                res = ("exc", traceback.format_exc())
            data = pickle.dumps(res)
            view = memoryview(data)
            while view:
                n = os.write(w, view)
                view = view[n:]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"as_user({getattr(fn, '__name__', fn)}) timed out after {timeout}s")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        _waitpid_bounded(pid, 10)
    if not chunks:
        raise AssertionError("as_user child died without a result")
    res = pickle.loads(b"".join(chunks))
    if res[0] == "ok":
        return res[1]
    if res[0] == "oserror":
        raise OSError(res[1], res[2])
    raise AssertionError("exception in as_user child:\n" + res[1])


def _waitpid_bounded(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.1)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return
        time.sleep(0.02)


# --------------------------------------------------------------------------------------
# Mount table
# --------------------------------------------------------------------------------------

def _unescape_mountinfo(s):
    return re.sub(r"\\([0-7]{3})", lambda mo: chr(int(mo.group(1), 8)), s)


def mountinfo():
    """List of (mountpoint, fstype, source, options) from /proc/self/mountinfo."""
    res = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split()
            try:
                sep = parts.index("-")
            except ValueError:
                continue
            res.append((_unescape_mountinfo(parts[4]), parts[sep + 1],
                        _unescape_mountinfo(parts[sep + 2]) if len(parts) > sep + 2 else "",
                        parts[5]))
    return res


def fstypes_at(path):
    """fstypes of all mounts stacked at path (bottom first)."""
    return [m[1] for m in mountinfo() if m[0] == path]


def is_efuse_mounted(path):
    return FSTYPE in fstypes_at(path)


def _fuse_type(t):
    """A FUSE mount of the kernel's (fuse, fuse.*) or of the efuse module (efuse, efuse.*)."""
    return t in ("fuse", "efuse") or t.startswith(("fuse.", "efuse."))


def is_fuse_mounted(path):
    return any(_fuse_type(t) for t in fstypes_at(path))


def efuse_mounts_under(prefix):
    prefix = prefix.rstrip("/") + "/"
    return [m for m in mountinfo() if _fuse_type(m[1]) and (m[0] + "/").startswith(prefix)]


def detach(path):
    """Lazily unmount everything FUSE stacked at path (umount -l, then fusermount3 -uz)."""
    for _ in range(8):
        if not is_fuse_mounted(path):
            return True
        for cmd in (["umount", "-l", path], ["fusermount3", "-uz", path]):
            try:
                run(cmd, timeout=15, check=False)
            except CommandFailed:
                pass
            if not is_fuse_mounted(path):
                break
    return not is_fuse_mounted(path)


# --------------------------------------------------------------------------------------
# Host-wide settings: tests share the host with other test runs and other FUSE servers
# --------------------------------------------------------------------------------------

# Every test process that runs efused holds HOST_LOCK shared for its whole life; a test that
# changes a host-wide setting (a sysctl every efused on the host feels) takes it exclusively,
# so no other efuse test run starts or serves under the changed value. The old value is
# written to HOST_JOURNAL first, so that a test killed before it could restore (a ctest
# timeout is SIGKILL) is repaired by the next test that takes the lock.
HOST_LOCK = os.environ.get("EFUSE_TEST_LOCK", "/run/lock/efuse-tests.lock")
HOST_JOURNAL = HOST_LOCK + ".journal"
HOST_LOCK_WAIT = 600.0  # seconds an exclusive taker waits for other test runs to finish
_host_fd = None
_host_exclusive = 0


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _repair_host_settings():
    """Restore the settings a dead test run left changed (its journal names them)."""
    try:
        with open(HOST_JOURNAL) as f:
            journal = json.load(f)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        print(f"  warning: unreadable {HOST_JOURNAL}: {e}", flush=True)
        return
    if journal.get("pid") != os.getpid() and _pid_alive(journal.get("pid", 0)):
        return  # its owner still runs and will restore it
    for path, old in journal.get("settings", {}).items():
        with open(path, "w") as f:
            f.write(old)
        print(f"  host: restored {path} to {old} (left changed by test pid "
              f"{journal.get('pid')})", flush=True)
    try:
        os.unlink(HOST_JOURNAL)
    except FileNotFoundError:
        pass  # another test run repaired it at the same time


def hold_host_shared():
    """Take HOST_LOCK shared for the rest of this process (idempotent)."""
    global _host_fd
    if _host_fd is not None:
        return
    os.makedirs(os.path.dirname(HOST_LOCK), exist_ok=True)
    _host_fd = os.open(HOST_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(_host_fd, fcntl.LOCK_SH)


class HostSysctl:
    """Sets /proc/sys/<name> to value for a with block, host-wide: takes HOST_LOCK
    exclusively (waiting for other efuse test runs), journals the old value, says so in
    the test's output, and restores it in all cases."""

    def __init__(self, name, value):
        self.name, self.value = name, str(value)
        self.path = "/proc/sys/" + name.replace(".", "/")

    def __enter__(self):
        global _host_exclusive
        hold_host_shared()
        if _host_exclusive == 0:
            deadline = time.monotonic() + HOST_LOCK_WAIT
            said = False
            while True:
                try:
                    fcntl.flock(_host_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not said:
                        print(f"  host: waiting for other efuse test runs before changing "
                              f"{self.name}", flush=True)
                        said = True
                    if time.monotonic() > deadline:
                        raise AssertionError(f"other efuse test runs held {HOST_LOCK} for "
                                             f"{HOST_LOCK_WAIT:.0f}s; cannot change {self.name}")
                    time.sleep(0.05)
        _host_exclusive += 1
        try:
            _repair_host_settings()
            with open(self.path) as f:
                self.old = f.read().strip()
            with open(HOST_JOURNAL, "w") as f:
                json.dump({"pid": os.getpid(), "settings": {self.path: self.old}}, f)
            print(f"  host: {self.name} = {self.value} (was {self.old}) for this step; other "
                  f"processes on the host see it too", flush=True)
            with open(self.path, "w") as f:
                f.write(self.value)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            with open(self.path, "w") as f:
                f.write(self.old)
            os.unlink(HOST_JOURNAL)
            print(f"  host: {self.name} restored to {self.old}", flush=True)
        finally:
            self._release()

    @staticmethod
    def _release():
        global _host_exclusive
        _host_exclusive -= 1
        if _host_exclusive == 0:
            fcntl.flock(_host_fd, fcntl.LOCK_SH)


# --------------------------------------------------------------------------------------
# efused instances
# --------------------------------------------------------------------------------------

_LIVE = []  # EfusedMount instances that may need cleanup
_ALL_TMPS = []  # every temp dir this process created (for the leftover check)
_LIVE_LOCK = threading.RLock()
_HANDLERS_INSTALLED = False


_OWNER_PID = os.getpid()  # forked children must never clean up the parent's mounts


def _cleanup_all():
    if os.getpid() != _OWNER_PID:
        return
    with _LIVE_LOCK:
        for inst in list(_LIVE):
            try:
                inst.cleanup()
            except Exception:
                traceback.print_exc()
    with _PROCS_LOCK:
        procs = list(_PROCS)
    for p in procs:
        try:
            reap(p, timeout=5)
        except Exception:
            traceback.print_exc()


def _on_signal(signum, frame):
    # Clean up now (the main code may be anywhere), then leave with the usual status.
    if os.getpid() != _OWNER_PID:  # a forked helper: just die
        os._exit(128 + signum)
    signal.signal(signum, signal.SIG_IGN)
    print(f"\ninterrupted by signal {signum}: cleaning up mounts", file=sys.stderr, flush=True)
    _cleanup_all()
    raise SystemExit(128 + signum)


def _install_handlers():
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    atexit.register(_cleanup_all)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    _HANDLERS_INSTALLED = True


def notify_socket(path):
    """A datagram socket standing in for systemd's notify socket; returns (sock, messages)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    messages = []
    stop = threading.Event()

    def pump():
        while not stop.is_set():
            try:
                # recv() drops the ancillary data: the BARRIER=1 fd is closed at once, which
                # is what systemd does once it has read everything before it.
                messages.append(sock.recv(65536).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return sock, messages, stop, t


def efused_cmd(mounts, threads=None, args=()):
    """The efused command line for [(source, mountpoint), ...] plus EFUSED_ARGS."""
    cmd = [EFUSED]
    for src, mnt in mounts:
        cmd += ["--mount", f"{src}:{mnt}"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return cmd + list(args) + EFUSED_ARGS


class EfusedMount:
    """One efused process serving `count` temporary source dirs at temporary mountpoints.

    Attributes: tmp (private temp dir), src/mnt (first pair), srcs/mnts (all pairs),
    native (a plain directory beside them, for running the same operations natively),
    log (efused's stdout+stderr), proc (the Popen).
    """

    def __init__(self, count=1, threads=None, args=(), start=True, clean_exit=True,
                 tag="efuse", backend=None, env=None):
        self.backend = backend or BACKEND
        self.env = dict(os.environ, **env) if env else None  # efused's environment
        _install_handlers()
        self.count, self.threads, self.args = count, threads, list(args)
        self.clean_exit = clean_exit  # require exit 0 and no mount left on normal exit
        self.proc = None
        self._log_offset = 0
        self._cleaned = False
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix=f"{tag}-it-", dir="/tmp"))
        os.chmod(self.tmp, 0o755)  # an unprivileged test user must reach src/mnt/native
        _ALL_TMPS.append(self.tmp)
        with _LIVE_LOCK:
            _LIVE.append(self)
        if count == 1:
            names = [("src", "mnt")]
        else:
            names = [(f"src{i}", f"mnt{i}") for i in range(count)]
        self.mnts = [os.path.join(self.tmp, m) for _, m in names]
        if self.backend == "memory":
            self.srcs = list(self.mnts)  # the mount is its own store
        else:
            self.srcs = [os.path.join(self.tmp, s) for s, _ in names]
        self.native = os.path.join(self.tmp, "native")
        self.log = os.path.join(self.tmp, "efused.log")
        self._native_tmpfs = False
        for d in sorted(set(self.srcs + self.mnts)) + [self.native]:
            os.mkdir(d)
            os.chmod(d, 0o755)
        if self.backend == "memory":
            # The twin of a memory mount is a tmpfs: the same kind of file system, natively.
            run(["mount", "-t", "tmpfs", "-o", "mode=0755", "efuse-twin", self.native],
                timeout=30)
            self._native_tmpfs = True
        self.src, self.mnt = self.srcs[0], self.mnts[0]
        self._started = False
        if start:
            try:
                self.start()
            except BaseException:
                self.cleanup()
                raise

    # -- lifecycle ---------------------------------------------------------------------
    def cmd(self):
        if self.backend == "memory":
            return efused_cmd([("memory", m) for m in self.mnts], self.threads, self.args)
        return efused_cmd(list(zip(self.srcs, self.mnts)), self.threads, self.args)

    def start(self, timeout=START_TIMEOUT):
        """Start efused and wait until every mount is live and the ready line is printed."""
        assert self.proc is None or self.proc.poll() is not None, "efused already running"
        hold_host_shared()
        if _host_exclusive == 0:
            _repair_host_settings()
        with open(self.log, "ab") as lf:
            self._log_offset = lf.tell()
            lf.write(f"### harness: starting {_fmt_cmd(self.cmd())}\n".encode())
            lf.flush()
            self._log_offset = lf.tell()
            try:
                self.proc = subprocess.Popen(self.cmd(), stdin=subprocess.DEVNULL, stdout=lf,
                                             stderr=lf, start_new_session=True, env=self.env)
            except OSError as e:
                raise AssertionError(f"cannot start efused ({EFUSED}): {e}") from None
        self._started = True
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(f"efused exited with status {rc} before becoming ready\n"
                                     f"command: {_fmt_cmd(self.cmd())}\n{self.log_tail()}")
            mounted = all(is_efuse_mounted(m) for m in self.mnts)
            if mounted and self.ready_printed():
                return self
            if time.monotonic() > deadline:
                state = {m: fstypes_at(m) for m in self.mnts}
                raise AssertionError(
                    f"efused not ready after {timeout}s (mounts: {state}, "
                    f"ready line printed: {self.ready_printed()})\n"
                    f"command: {_fmt_cmd(self.cmd())}\n{self.log_tail()}")
            time.sleep(0.02)

    def ready_printed(self):
        return any(line.strip() == READY_LINE for line in self.log_text().splitlines())

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise AssertionError(f"efused died (status {self.proc.returncode})\n{self.log_tail()}")
        for m in self.mnts:
            if not is_efuse_mounted(m):
                raise AssertionError(f"{m} is no longer an efuse mount (now {fstypes_at(m)})\n"
                                     f"{self.log_tail()}")

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send sig and wait (bounded). Returns the exit status, or None if it did not exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        return self.proc.returncode

    def kill9(self):
        """SIGKILL efused (the mounts become dead: ENOTCONN until detached)."""
        self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("efused did not die within 10 s of SIGKILL")

    def stop_clean(self, sig=signal.SIGTERM):
        """Stop with sig and assert: exit status 0 in time and no mount left behind."""
        rc = self.stop(sig)
        if rc is None:
            raise AssertionError(f"efused did not exit within {STOP_TIMEOUT}s of signal {sig}\n"
                                 f"{self.log_tail()}")
        if rc != 0:
            raise AssertionError(f"efused exited with status {rc} after signal {sig}\n"
                                 f"{self.log_tail()}")
        left = {m: fstypes_at(m) for m in self.mnts if is_fuse_mounted(m)}
        if left:
            raise AssertionError(f"efused exited but left mounts behind: {left}\n{self.log_tail()}")

    def restart(self):
        """Stop cleanly and start again on the same directories."""
        self.stop_clean()
        return self.start()

    def restart_if_persistent(self):
        """restart() (the checks after it then meet cold kernel caches) where the mount's
        contents survive it: passthrough. A memory mount's would not, so it stays up and the
        checks after it run on warm caches. Returns whether it restarted."""
        if self.backend == "memory":
            return False
        self.restart()
        return True

    def cleanup(self, keep_tmp=False):
        """Stop efused, detach anything left, kill -9 if needed, remove the temp dir."""
        if self._cleaned:
            return
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGTERM, timeout=STOP_TIMEOUT)
        for m in self.mnts:
            if is_fuse_mounted(m):
                detach(m)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"warning: efused pid {self.proc.pid} survived SIGKILL", file=sys.stderr)
        for m in self.mnts:
            if is_fuse_mounted(m):
                detach(m)
        if self._native_tmpfs:
            run(["umount", "-l", self.native], timeout=30, check=False)
            self._native_tmpfs = False
        self._cleaned = True
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)
        left = efuse_mounts_under(self.tmp)
        if left:
            print(f"warning: mounts left under {self.tmp}, not removing it: {left}",
                  file=sys.stderr)
            return
        if keep_tmp or os.environ.get("EFUSE_KEEP") == "1":
            print(f"kept {self.tmp}", file=sys.stderr)
            return
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and self.clean_exit and self._started:
                self.check_alive()
                self.stop_clean()
        finally:
            self.cleanup(keep_tmp=exc_type is not None and os.environ.get("EFUSE_KEEP") == "1")
        return False

    # -- logs and helpers --------------------------------------------------------------
    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        return f"--- efused log tail ({self.log}) ---\n{_tail(self.log_text(), n)}"

    def twin(self, index=0):
        """A Twin comparing the native directory with the mount (index-th mountpoint)."""
        return Twin(self.native, self.mnts[index])

    def m(self, *parts):
        return os.path.join(self.mnt, *parts)

    def s(self, *parts):
        return os.path.join(self.src, *parts)


def backing_dir(reason):
    """Decorator: the test needs a passthrough mount's backing directory (it changes files
    behind efused's back, or watches the backing tree); on memory mounts it is skipped, and
    the run says so with `reason`."""
    def deco(fn):
        fn.efuse_backing_dir = reason
        return fn
    return deco


def mount_options(**kw):
    """Decorator: keyword arguments for the EfusedMount the runner gives to this test."""
    def deco(fn):
        fn.efuse_mount_options = kw
        return fn
    return deco


# --------------------------------------------------------------------------------------
# Comparing the mount with a native directory (mergerfs style)
# --------------------------------------------------------------------------------------

def errname(e):
    return errno.errorcode.get(e, str(e))


def outcome(fn, *args, **kw):
    """('ok', result) or ('err', 'ENOENT') for fn(*args)."""
    try:
        return ("ok", fn(*args, **kw))
    except OSError as e:
        return ("err", errname(e.errno))


_ANY = object()


def _outcome_where(fn, *args):
    """outcome() plus, for an OSError, the innermost frames where it was raised."""
    try:
        return ("ok", fn(*args)), None
    except OSError as e:
        frames = traceback.extract_tb(e.__traceback__)[1:][-3:]
        return ("err", errname(e.errno)), "".join(traceback.format_list(frames)).rstrip()


class Twin:
    """Runs the same operation on a native directory and on the mount and compares.

    fn is called with the base directory and must return something comparable (no inode
    numbers or times unless they are meant to match). OSErrors compare by errno name.
    """

    def __init__(self, native, mounted):
        self.native, self.mounted = native, mounted

    def same(self, fn, expect=_ANY, errno_=None, what=None):
        a, a_where = _outcome_where(fn, self.native)
        b, b_where = _outcome_where(fn, self.mounted)
        label = what or getattr(fn, "__name__", "operation")
        if a != b:
            where = b_where or a_where
            raise AssertionError(f"{label}: native gave {a!r} but mount gave {b!r}"
                                 + (f"\n  raised at:\n{where}" if where else ""))
        if errno_ is not None and a != ("err", errname(errno_)):
            raise AssertionError(f"{label}: expected {errname(errno_)}, both gave {a!r}")
        if errno_ is None and a[0] == "err":
            raise AssertionError(f"{label}: failed with {a[1]} both natively and on the mount "
                                 "(the test itself is wrong?)")
        if expect is not _ANY and a != ("ok", expect):
            raise AssertionError(f"{label}: expected {expect!r}, both gave {a!r}")
        return b[1] if b[0] == "ok" else None

    def path(self, base_is_native, *parts):
        return os.path.join(self.native if base_is_native else self.mounted, *parts)


def sha256_file(path, bufsize=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def write_file(path, data, mode=0o644):
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def user_xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)
            if n.startswith("user.")}


def tree_state(root, *, content=True, owner=True, times=False, xattrs=True, dir_size=False):
    """Everything observable about a tree except inode numbers (and times unless asked).

    Returns {relpath: (...)} plus a hard-link grouping so link structure is compared too.
    Directory sizes depend on the history of a directory (not only its entries), so they are
    compared only with dir_size=True (mount against its own backing dir).
    """
    state = {}
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            fmt = stat.S_IFMT(st.st_mode)
            entry = {"type": fmt, "mode": oct(stat.S_IMODE(st.st_mode))}
            if not stat.S_ISDIR(st.st_mode) or dir_size:
                entry["size"] = st.st_size
            if not stat.S_ISDIR(st.st_mode):
                entry["nlink"] = st.st_nlink
            if owner:
                entry["owner"] = (st.st_uid, st.st_gid)
            if times and not stat.S_ISLNK(st.st_mode):
                entry["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode) and content:
                entry["sha256"] = sha256_file(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = st.st_rdev
            if xattrs and not stat.S_ISLNK(st.st_mode):
                x = user_xattrs(p)
                if x:
                    entry["xattrs"] = x
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            state[rel] = entry
    groups = sorted(sorted(v) for v in inodes.values())
    return {"entries": state, "hardlink_groups": groups}


def assert_same_tree(a_root, b_root, **kw):
    a = tree_state(a_root, **kw)
    b = tree_state(b_root, **kw)
    if a == b:
        return a
    lines = []
    ea, eb = a["entries"], b["entries"]
    for k in sorted(set(ea) | set(eb)):
        if ea.get(k) != eb.get(k):
            lines.append(f"  {k!r}:\n    {a_root}: {ea.get(k)}\n    {b_root}: {eb.get(k)}")
            if len(lines) >= 15:
                lines.append("  ...")
                break
    if a["hardlink_groups"] != b["hardlink_groups"]:
        lines.append(f"  hard link groups differ:\n    {a['hardlink_groups'][:10]}\n"
                     f"    {b['hardlink_groups'][:10]}")
    raise AssertionError(f"trees differ: {a_root} vs {b_root}\n" + "\n".join(lines))


def listing(path):
    """Sorted directory listing."""
    return sorted(os.listdir(path))


def assert_listing_equal(mounted, backing):
    a, b = listing(mounted), listing(backing)
    if a != b:
        only_m = sorted(set(a) - set(b))[:20]
        only_b = sorted(set(b) - set(a))[:20]
        raise AssertionError(f"listing differs: {len(a)} via mount, {len(b)} in backing; "
                             f"only via mount: {only_m}; only in backing: {only_b}")
    return a


def assert_serves(m):
    """The mount still answers: a file written through it appears in the backing dir."""
    m.check_alive()
    name = f".probe-{os.getpid()}-{time.monotonic_ns()}"
    data = os.urandom(1000)
    write_file(os.path.join(m.mnt, name), data)
    if read_file(os.path.join(m.src, name)) != data:
        raise AssertionError("probe file written through the mount differs in the backing dir")
    if read_file(os.path.join(m.mnt, name)) != data:
        raise AssertionError("probe file reads back differently through the mount")
    os.unlink(os.path.join(m.mnt, name))
    if os.path.lexists(os.path.join(m.src, name)):
        raise AssertionError("probe file unlinked through the mount still exists in backing dir")


# --------------------------------------------------------------------------------------
# libc calls Python does not wrap
# --------------------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def _check(ret, *what):
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), *what)
    return ret


def renameat2(old, new, flags):
    _libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                ctypes.c_uint]
    return _check(_libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                                  flags), old)


def fallocate(fd, mode, offset, length):
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return _check(_libc.fallocate(fd, mode, offset, length))


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path, atime, mtime, follow=True):
    """atime/mtime: (sec, nsec) or UTIME_NOW / UTIME_OMIT."""
    ts = (_Timespec * 2)()
    for i, t in enumerate((atime, mtime)):
        if t in (UTIME_NOW, UTIME_OMIT):
            ts[i].tv_sec, ts[i].tv_nsec = 0, t
        else:
            ts[i].tv_sec, ts[i].tv_nsec = t
    _libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                                ctypes.c_int]
    flags = 0 if follow else 0x100  # AT_SYMLINK_NOFOLLOW
    return _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), ts, flags), path)


# --------------------------------------------------------------------------------------
# Test runner
# --------------------------------------------------------------------------------------

def main(namespace, require=()):
    """Run the test_* functions of the calling script in order and exit with the verdict.

    Command-line arguments, if given, select tests by (sub)name.
    """
    soak_scale()  # a bad EFUSE_SOAK_SCALE stops the script before any test
    require_fuse()
    if require:
        require_tools(*require)
    _install_handlers()
    if not (os.path.isfile(EFUSED) and os.access(EFUSED, os.X_OK)):
        # Not a skip: a missing binary means the build is broken or EFUSED is wrong.
        print(f"FAIL: efused binary not found or not executable: {EFUSED} (set EFUSED)",
              flush=True)
        print("0 passed, 1 failed", flush=True)
        sys.exit(1)
    tests = [(n, f) for n, f in namespace.items()
             if n.startswith("test_") and inspect.isfunction(f)
             and f.__module__ == namespace.get("__name__")]
    selected = sys.argv[1:]
    if selected:
        tests = [(n, f) for n, f in tests if any(s in n for s in selected)]
    print(f"efused: {EFUSED} {' '.join(EFUSED_ARGS)} (backend {BACKEND})".rstrip(), flush=True)
    passed = failed = skipped = 0
    failures = []
    for name, fn in tests:
        reason = getattr(fn, "efuse_backing_dir", None)
        if BACKEND == "memory" and reason:
            print(f"SKIP {name}: needs a backing directory ({reason})", flush=True)
            skipped += 1
            continue
        print(f"RUN  {name}", flush=True)
        t0 = time.monotonic()
        try:
            params = inspect.signature(fn).parameters
            if "m" in params:
                with EfusedMount(**getattr(fn, "efuse_mount_options", {})) as m:
                    fn(m)
            else:
                fn()
        except Exception:
            failed += 1
            failures.append(name)
            print(f"FAIL {name} ({time.monotonic() - t0:.1f}s)", flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
        else:
            passed += 1
            print(f"PASS {name} ({time.monotonic() - t0:.1f}s)", flush=True)
        _cleanup_all()
    leftovers = [m for t in _ALL_TMPS for m in efuse_mounts_under(t)]
    if leftovers:
        failed += 1
        failures.append("leftover-mounts")
        print(f"FAIL leftover efuse mounts after the tests: {leftovers}", flush=True)
        for mp, *_ in leftovers:
            detach(mp)
    if failures:
        print("failed: " + " ".join(failures))
    print(f"{passed} passed, {failed} failed"
          + (f", {skipped} skipped (passthrough only)" if skipped else ""), flush=True)
    sys.exit(1 if failed else 0)
