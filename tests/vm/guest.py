"""Building and booting a test guest (host side): initramfs, data disk, QEMU.

The guest boots a Debian kernel under QEMU (TCG, or KVM when /dev/kvm exists) with a
busybox-static initramfs whose /init (tests/vm/init) mounts the host's / read-only over
virtio-9p, chroots into it and runs one program; the data the program works on is an ext4
image made here with `mkfs.ext4 -d` and attached as a virtio disk (bulk reads over 9p are
slow under TCG). The program leaves its results in /out on that disk, which the host reads
back with debugfs after the guest has powered off.
"""
import ctypes
import lzma
import os
import re
import select
import shutil
import signal
import subprocess
import time

import kernels

HERE = os.path.dirname(os.path.abspath(__file__))


def build_initramfs(kernel, work):
    """A gzip'd newc cpio with busybox, /init, the guest's modules in /modules (in load
    order, decompressed) and the on-demand ones under /lib/modules for modprobe."""
    root = os.path.join(work, "initramfs")
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "sbin", "dev", "proc", "sys", "modules", "host"):
        os.makedirs(os.path.join(root, d))
    shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
    for applet in ("sh", "mount", "umount", "insmod", "mknod", "mkdir", "chroot", "ip",
                   "poweroff", "reboot", "sync", "uname", "echo", "cat"):
        os.symlink("busybox", os.path.join(root, "bin", applet))
    os.symlink("../bin/busybox", os.path.join(root, "sbin", "modprobe"))
    shutil.copy2(os.path.join(HERE, "init"), os.path.join(root, "init"))

    def unpack_module(src, dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        opener = lzma.open if src.endswith(".xz") else open
        with opener(src, "rb") as f, open(dst, "wb") as out:
            shutil.copyfileobj(f, out)

    order = []
    for path in kernel.modules_for(kernels.GUEST_MODULES):
        name = os.path.basename(path).removesuffix(".xz")
        unpack_module(path, os.path.join(root, "modules", name))
        order.append(name)
    with open(os.path.join(root, "modules", "order"), "w") as f:
        f.write("".join(n + "\n" for n in order))

    # On-demand modules keep their place in the tree; depmod -b indexes the small tree
    # (modules.dep, modules.alias) for busybox modprobe.
    mini = os.path.join(root, "lib", "modules", kernel.release)
    os.makedirs(mini)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        shutil.copy2(os.path.join(kernel.moddir, name), mini)
    for path in kernel.modules_for(kernels.ON_DEMAND_MODULES):
        rel = os.path.relpath(path, kernel.moddir).removesuffix(".xz")
        unpack_module(path, os.path.join(mini, rel))
    subprocess.run(["depmod", "-b", root, kernel.release], check=True)

    img = os.path.join(work, "initramfs.cpio.gz")
    with open(img, "wb") as out:
        find = subprocess.Popen(["find", "."], cwd=root, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root,
                                stdin=find.stdout, stdout=subprocess.PIPE)
        gz = subprocess.Popen(["gzip", "-1"], stdin=cpio.stdout, stdout=out)
        find.stdout.close()
        cpio.stdout.close()
        if gz.wait() or cpio.wait() or find.wait():
            raise RuntimeError("building the initramfs failed")
    return img


def make_data_disk(src_dir, path, size_mb=256, inodes=None):
    """An ext4 image holding src_dir's tree (mkfs.ext4 -d, no mount, no loop device);
    `inodes`: how many it has room for (mkfs.ext4's default otherwise)."""
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "efuse-data", "-E", "root_owner=0:0",
                    *(["-N", str(inodes)] if inodes else []),
                    "-d", src_dir, path, f"{size_mb}M"], check=True,
                   stdout=subprocess.DEVNULL)


def read_from_disk(img, path):
    """A file's content from an ext4 image (debugfs, read-only), or None when absent."""
    r = subprocess.run(["debugfs", "-R", f"cat {path}", img], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if r.returncode != 0 or b"File not found" in r.stderr:
        return None
    return r.stdout.decode(errors="replace")


# Under KVM the guest's init starts within seconds; a boot that has not reached it by then
# is stuck (see boot()), and TCG takes over.
KVM_INIT_SECONDS = 60
_kvm_failed = []  # the first KVM failure of this run: later boots go to TCG at once


def kvm_present():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def qemu_command(kernel, initramfs, disk, append, accel):
    return ["qemu-system-x86_64", "-accel", accel, "-cpu", "max", "-m", "4G", "-smp", "2",
            "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", kernel.vmlinuz, "-initrd", initramfs, "-append", append,
            "-virtfs", "local,path=/,mount_tag=host,security_model=passthrough,readonly=on,"
                       "multidevs=remap",
            "-drive", f"file={disk},if=virtio,format=raw"]


def _die_with_parent():
    """In QEMU's child before exec: SIGKILL when the test driver dies, even by SIGKILL
    (a ctest timeout), so no guest outlives its run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# Terminal control sequences SeaBIOS and the kernel send to the serial console.
_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")


class Boot:
    """Outcome of one boot: console lines, exit status of the program (None when the
    guest never reported one), whether it was killed by the timeout."""

    def __init__(self, accel):
        self.accel = accel
        self.lines, self.status, self.timed_out, self.init_failed = [], None, False, None
        self.seconds_to_init = None
        self.seconds = None
        self.qemu_status = None
        self.kvm_error = None  # KVM stopped the guest (QEMU's "KVM internal error" line)


def boot(kernel, initramfs, disk, env, timeout, console_log, echo, accel="auto"):
    """Boot the guest and run tests/vm/init's program; kill QEMU (by PID) after `timeout`
    seconds. `env` becomes name=value kernel parameters (init's environment). accel:
    "kvm", "tcg" or "auto" (KVM when /dev/kvm exists, and TCG again when QEMU cannot start
    a vCPU there: some machines have /dev/kvm without usable virtualization, where QEMU
    aborts on its first MSR write before the guest prints anything; others where KVM stops
    the guest after the firmware with "KVM internal error ... emulation failure", after
    which QEMU waits with the vCPU stopped; and others where the kernel, started by the
    firmware, never reaches init and QEMU spins: such a KVM boot is ended at that line, or
    when init has not started KVM_INIT_SECONDS after QEMU did)."""
    if accel == "auto":
        if _kvm_failed:
            echo(f"(KVM failed earlier in this run: {_kvm_failed[0]}; TCG)")
        elif kvm_present():
            res = boot(kernel, initramfs, disk, env, timeout, console_log, echo, "kvm")
            if res.kvm_error and res.seconds_to_init is None:
                # Nothing of the guest's init ran: the data disk is as it was made.
                _kvm_failed.append(res.kvm_error)
                echo(f"(KVM failed: {res.kvm_error}; booting again with TCG)")
            elif res.lines or res.qemu_status == 0 or res.timed_out:
                return res
            else:
                echo(f"(KVM did not start: QEMU exited {res.qemu_status} before any output; "
                     "TCG)")
        return boot(kernel, initramfs, disk, env, timeout, console_log, echo, "tcg")
    append = " ".join(["console=ttyS0", "quiet", "loglevel=3", "panic=-1", "rdinit=/init",
                       *(f"{k}={v}" for k, v in env.items())])
    cmd = qemu_command(kernel, initramfs, disk, append,
                       "kvm" if accel == "kvm" else
                       f"tcg,thread={os.environ.get('EFUSE_VM_TCG_THREAD', 'multi')}")
    res = Boot(accel)
    start = time.monotonic()
    with open(console_log, "w") as log:
        log.write("# " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            buf = b""
            deadline = start + timeout
            while True:
                now = time.monotonic()
                left = deadline - now
                if left <= 0:
                    res.timed_out = True
                    break
                if (accel == "kvm" and res.seconds_to_init is None
                        and now - start > KVM_INIT_SECONDS):
                    res.kvm_error = f"the guest's init did not start within {KVM_INIT_SECONDS} s"
                    echo(f"({res.kvm_error} under KVM)")
                    break
                ready, _, _ = select.select([proc.stdout], [], [], min(left, 5))
                if not ready:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    line = _ESCAPES.sub("", raw.decode(errors="replace")).rstrip("\r")
                    log.write(line + "\n")
                    log.flush()
                    if line.startswith("qemu-system-x86_64:"):  # QEMU's own errors
                        echo(line)
                        continue
                    if accel == "kvm" and line.startswith("KVM internal error"):
                        # QEMU stopped the vCPU and would wait for the timeout.
                        echo(line)
                        res.kvm_error = line
                        break
                    res.lines.append(line)
                    echo(line)
                    # Markers may follow output that ended without a newline.
                    if "EFUSE-VM-INIT-DONE" in line:
                        res.seconds_to_init = time.monotonic() - start
                    elif mo := re.search(r"EFUSE-VM-EXIT (\d+)", line):
                        res.status = int(mo.group(1))
                    elif "EFUSE-VM-INIT-FAILED" in line:
                        res.init_failed = line[line.index("EFUSE-VM-INIT-FAILED"):]
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            res.qemu_status = proc.wait()
    res.seconds = time.monotonic() - start
    return res
