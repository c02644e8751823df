"""The Debian 12 root file system the system tests boot, cached between runs.

mmdebstrap builds it once from the Debian mirror the host's apt uses; it is kept as a
tarball under the cache directory, named after a hash of everything that went into it
(package list, suites, mirrors), and each run unpacks a fresh copy.
"""
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

SUITE = "bookworm"

# Everything an operator's machine has that the tests use: systemd as PID 1, the system
# bus, fuse3 (/etc/fuse.conf, fusermount3), curl for /metrics, util-linux (findmnt,
# setpriv, mountpoint), procps. The runtime libraries of efused and efusectl are listed
# by name (ldd build/bin/efused); run_system_tests checks that ldd finds all of them.
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "libfuse3-3", "fuse3", "curl", "procps",
    "util-linux",
    "libstdc++6", "libgcc-s1", "libc6", "libsystemd0", "liburing2", "libyaml-cpp0.7",
    "libprometheus-cpp-core1.0", "libprometheus-cpp-pull1.0", "libcivetweb1", "zlib1g",
    "libbpf1", "libelf1",
]


def host_debian_sources():
    """The host's apt entries for Debian's own archive (suites bookworm*), one-line form."""
    entries = []
    one_line = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in one_line:
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                entries.append((line[1], line[2], line[3:] or ["main"]))
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = open(path, encoding="utf-8").read()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
            if "deb" not in fields.get("types", []) or fields.get("enabled") == ["no"]:
                continue
            for uri in fields.get("uris", []):
                for suite in fields.get("suites", []):
                    entries.append((uri, suite, fields.get("components", ["main"])))
    keep = []
    for uri, suite, comps in entries:
        if not suite.startswith(SUITE) or "debian" not in uri:
            continue
        line = "deb %s %s %s" % (uri, suite, " ".join(c for c in comps if c == "main") or "main")
        if line not in keep:
            keep.append(line)
    if not any(l.split()[2] == SUITE for l in keep):
        raise RuntimeError("no '%s' entry for Debian's archive in the host's apt sources" % SUITE)
    return keep


def cache_key(sources):
    h = hashlib.sha256()
    h.update(("\n".join([SUITE] + sorted(PACKAGES) + sources)).encode())
    return h.hexdigest()[:16]


def cached_tarball(cache_dir, log):
    """Path of the rootfs tarball, built with mmdebstrap first if it is not cached."""
    os.makedirs(cache_dir, exist_ok=True)
    sources = host_debian_sources()
    tarball = os.path.join(cache_dir, "rootfs-%s-%s.tar" % (SUITE, cache_key(sources)))
    with open(os.path.join(cache_dir, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same tarball
        if os.path.exists(tarball):
            log("rootfs: cached %s" % tarball)
            return tarball
        log("rootfs: building %s with mmdebstrap (a few minutes, once)" % tarball)
        for line in sources:
            log("rootfs:   " + line)
        tmp = tarball + ".part"
        cmd = ["mmdebstrap", "--variant=minbase", "--format=tar",
               "--include=" + ",".join(PACKAGES), SUITE, tmp] + sources
        try:
            subprocess.run(cmd, check=True, timeout=1800, stdin=subprocess.DEVNULL)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        os.rename(tmp, tarball)
        # Older tarballs (another package list) are not used again.
        for old in glob.glob(os.path.join(cache_dir, "rootfs-*.tar")):
            if old != tarball:
                os.unlink(old)
        return tarball


def unpack(tarball, parent):
    """A fresh writable copy of the rootfs in a new directory under parent."""
    root = tempfile.mkdtemp(prefix="efuse-systest-", dir=parent)
    subprocess.run(["tar", "-xpf", tarball, "-C", root, "--numeric-owner"], check=True,
                   timeout=300)
    return root


def remove(root):
    """Deletes a rootfs copy; refuses while anything is mounted inside it."""
    real = os.path.realpath(root)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == real or target.startswith(real + "/"):
                raise RuntimeError("%s is still mounted; not removing %s" % (target, real))
    shutil.rmtree(real, ignore_errors=True)
