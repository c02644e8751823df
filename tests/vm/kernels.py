"""Debian kernels for the test guests: resolve, download, unpack, index (host side).

Packages are fetched with `apt-get download` into the cache (EFUSE_VM_CACHE, default
/var/cache/efuse-vm) and unpacked there with `dpkg-deb -x`; nothing is installed on the
host. Each unpacked kernel gets a `modules.dep` from `depmod -b` (the debs ship none).
"""
import fcntl
import glob
import os
import re
import shutil
import subprocess

# Profiles: which Debian kernel a guest boots and what the guest expects of it. `image` is
# a regular expression over binary package names, the newest match in apt's lists wins
# (EFUSE_VM_IMAGE_<profile> with dots as underscores names a package instead).
PROFILES = {
    "6.12": {"image": r"linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned"},
    "6.1": {"image": r"linux-image-6\.1\.0-[0-9]+-amd64-unsigned"},
}

# What the guest needs from the kernel's modules (each with its dependencies).
GUEST_MODULES = ["virtio_pci", "virtio_blk", "9p", "9pnet_virtio", "ext4"]
# Loaded on demand inside the guest (kept in the initramfs' /lib/modules, not preloaded).
ON_DEMAND_MODULES = ["fuse"]


def cache_dir():
    d = os.environ.get("EFUSE_VM_CACHE", "/var/cache/efuse-vm")
    os.makedirs(d, exist_ok=True)
    return d


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE, **kw).stdout


def _newest(names):
    best = None
    for n in names:
        if best is None or subprocess.run(
                ["dpkg", "--compare-versions", _abi_version(n), "gt", _abi_version(best)]).returncode == 0:
            best = n
    return best


def _abi_version(name):
    mo = re.search(r"linux-image-([0-9.+a-z-]+?)-amd64", name)
    return mo.group(1).replace("+", "~") if mo else name


def resolve_image(profile):
    """The image package name for a profile: the environment's choice, else the newest
    name apt knows that matches the profile, else the newest one already in the cache."""
    env = os.environ.get("EFUSE_VM_IMAGE_" + profile.replace(".", "_"))
    if env:
        return env
    pat = re.compile(PROFILES[profile]["image"] + r"$")
    names = run(["apt-cache", "pkgnames", "linux-image-"]).split()
    found = [n for n in names if pat.fullmatch(n)]
    if not found:
        cached = [os.path.basename(p).split("_")[0]
                  for p in glob.glob(os.path.join(cache_dir(), "debs", "*.deb"))]
        found = [n for n in cached if pat.fullmatch(n)]
    if not found:
        raise RuntimeError(f"no package matching {PROFILES[profile]['image']} in apt's lists "
                           "(run apt-get update; bookworm-security must be a source)")
    return _newest(found)


def download(pkg):
    """Path of the package's .deb in the cache, fetched with apt-get download if missing."""
    debs = os.path.join(cache_dir(), "debs")
    os.makedirs(debs, exist_ok=True)
    have = sorted(glob.glob(os.path.join(debs, f"{pkg}_*.deb")))
    if have:
        return have[-1]
    # _apt cannot write to a root-owned cache; downloading as root is what apt then does.
    subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg],
                   cwd=debs, check=True, stdout=subprocess.DEVNULL)
    have = sorted(glob.glob(os.path.join(debs, f"{pkg}_*.deb")))
    if not have:
        raise RuntimeError(f"apt-get download {pkg} left no .deb in {debs}")
    return have[-1]


class Kernel:
    """An unpacked Debian kernel: vmlinuz, release string and module tree."""

    def __init__(self, root):
        self.root = root
        (self.release,) = os.listdir(os.path.join(root, "lib", "modules"))
        self.vmlinuz = os.path.join(root, "boot", f"vmlinuz-{self.release}")
        self.config = os.path.join(root, "boot", f"config-{self.release}")
        self.moddir = os.path.join(root, "lib", "modules", self.release)

    def modules_for(self, names):
        """Module files (absolute, in load order, no repeats) that loading `names` needs;
        built-in ones are left out."""
        order = []
        for n in names:
            out = run(["modprobe", "-d", self.root, "-S", self.release, "--show-depends", n])
            for line in out.splitlines():
                parts = line.split()
                if parts and parts[0] == "insmod" and parts[1] not in order:
                    order.append(parts[1])
        return order


def prepare(profile, log=print):
    """Download and unpack the profile's kernel into the cache (once); return a Kernel."""
    pkg = resolve_image(profile)
    lock = open(os.path.join(cache_dir(), "lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be preparing the same kernel
    try:
        deb = download(pkg)
        root = os.path.join(cache_dir(), "kernels", os.path.basename(deb)[:-len(".deb")])
        stamp = os.path.join(root, ".ready")
        if not os.path.exists(stamp):
            log(f"unpacking {os.path.basename(deb)} (once; cached in {root})")
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
            k = Kernel(root)
            subprocess.run(["depmod", "-b", root, k.release], check=True)
            open(stamp, "w").close()
        return Kernel(root)
    finally:
        lock.close()
