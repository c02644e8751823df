"""A booted systemd-nspawn container and commands run inside it.

The host may not run systemd (no machined, no scope units), so the container is started
with --register=no --keep-unit and commands enter the namespaces of its PID 1 with
nsenter, which is what `machinectl shell` amounts to.
"""
import os
import signal
import subprocess
import time

CONTAINER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def host_runs_systemd():
    return os.path.isdir("/run/systemd/system")


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        if ppid == pid:
            kids.append(int(entry))
    return kids


def _is_pid1_of_namespace(pid):
    try:
        with open("/proc/%d/status" % pid, encoding="utf-8") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) > 1 and ids[-1] == "1"
    except OSError:
        pass
    return False


class Container:
    def __init__(self, root, name, log_path):
        self.root = root
        self.name = name
        self.log_path = log_path
        self.nspawn = None
        self.leader = None

    def nspawn_command(self):
        cmd = ["systemd-nspawn", "--boot", "-D", self.root, "-M", self.name,
               "--private-network",  # its own loopback: /metrics on 127.0.0.1:19567 is its own
               "--bind=/dev/fuse", "--console=passive",
               # nspawn's own seccomp filter refuses bpf(), perf_event_open(), io_uring and
               # fanotify to the container even with CAP_SYS_ADMIN; efused's eBPF
               # telemetry, its FUSE-over-io_uring transport and its write watching need
               # them.
               "--system-call-filter=bpf perf_event_open io_uring_setup io_uring_enter "
               "io_uring_register fanotify_init fanotify_mark open_by_handle_at",
               # nspawn's /sys has no module/ here; efused reads whether FUSE over io_uring
               # is on from /sys/module/fuse/parameters/enable_uring.
               "--bind-ro=/sys/module"]
        if host_runs_systemd():
            # A scope unit whose device cgroup lets the container open /dev/fuse.
            cmd += ["--property=DeviceAllow=/dev/fuse rw"]
        else:
            # No systemd on the host: no machined to register with, no scope to create.
            cmd += ["--register=no", "--keep-unit"]
        return cmd

    def start(self, timeout=60):
        log = open(self.log_path, "wb")
        self.nspawn = subprocess.Popen(self.nspawn_command(), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError("systemd-nspawn exited with %d (see %s)"
                                   % (self.nspawn.returncode, self.log_path))
            todo = [self.nspawn.pid]
            while todo and self.leader is None:
                pid = todo.pop()
                for kid in _children(pid):
                    if _is_pid1_of_namespace(kid):
                        self.leader = kid
                        break
                    todo.append(kid)
            if self.leader is not None:
                break
            time.sleep(0.1)
        if self.leader is None:
            raise RuntimeError("the container's PID 1 did not appear within %ds" % timeout)
        # Wait for the boot to finish: multi-user reached (running or degraded).
        state = ""
        while time.monotonic() < deadline:
            r = self.sh("systemctl is-system-running", timeout=10)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.3)
        raise RuntimeError("the container did not finish booting within %ds (state %r)"
                           % (timeout, state))

    def enter_command(self, argv):
        return (["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C",
                 "-r", "-w", "--", "/usr/bin/env", "-i", "PATH=" + CONTAINER_PATH,
                 "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "TERM=dumb",
                 "HOME=/root"] + argv)

    def sh(self, script, timeout=60, input=None):
        """Runs a bash script inside the container as root; returns CompletedProcess."""
        try:
            return subprocess.run(self.enter_command(["bash", "-c", script]), input=input,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, 124, _text(e.stdout),
                                               _text(e.stderr) + "\n(timed out after %ss)" % timeout)

    def popen(self, script):
        """Starts a bash script inside the container in the background."""
        return subprocess.Popen(self.enter_command(["bash", "-c", script]),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def stop(self, timeout=30):
        """Powers the container off (SIGTERM to nspawn), kills it if that takes too long."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.nspawn.send_signal(signal.SIGTERM)  # nspawn asks PID 1 for an orderly halt
        try:
            self.nspawn.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.nspawn.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.leader is not None:
            try:
                os.kill(self.leader, signal.SIGKILL)  # the container dies with its PID 1
            except ProcessLookupError:
                pass
        self.nspawn.wait(timeout=30)


def _text(b):
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b
