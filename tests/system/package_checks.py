"""The packaged path: `dpkg -i efused_*.deb` in a fresh container, the service the package
enables and starts on the empty config it ships, a first mount added with reload, and
`dpkg --purge` that stops it and leaves no mount behind."""
import os
import re
import shutil
import subprocess
import sys

from checks import CONF, UNIT, Checks, describe, expect

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = "/usr/share/doc/efused"
# What an operator looks for after installing (besides binaries, unit and policy).
INSTALLED = [
    "/usr/share/man/man5/mounts.yaml.5.gz", "/usr/share/man/man8/efused.8.gz",
    "/usr/share/man/man1/efusectl.1.gz",
    "/usr/share/bash-completion/completions/efused",
    "/usr/share/bash-completion/completions/efusectl",
    "/usr/share/efuse/dashboards/efuse.json", "/usr/share/efuse/dashboards/prometheus.yml",
    "/usr/share/efuse/dashboards/provisioning/dashboards/efuse.yml",
    "/usr/share/efuse/dashboards/provisioning/datasources/efuse-prometheus.yml",
    DOC + "/README.md", DOC + "/config/README.md", DOC + "/copyright",
    DOC + "/examples/efused-metrics-loopback.conf",
]

DEB_IN_ROOT = "/root/efused.deb"
# Holds a file open on the mount across the upgrade: each line it reads is written over the
# file's content through the same descriptor and read back.
UPGRADE_HOLDER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
def put(tag):
    data = (tag + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    ok = os.pread(fd, 64, 0) == data
    print(("ok " if ok else "FAIL ") + tag, flush=True)
put("before")
for line in sys.stdin:
    put(line.strip())
os.close(fd)
"""
CONFIG_PKG = """\
metrics:
  listen: "127.0.0.1:19567"
mounts:
  - name: pkg
    mountpoint: /srv/efuse/pkg
    backend: passthrough
    source: /var/lib/efuse-test/pkg
"""


def prepare(root, deb):
    shutil.copyfile(deb, os.path.join(root, DEB_IN_ROOT.lstrip("/")))
    for d in ("srv/efuse/pkg", "var/lib/efuse-test/pkg"):
        os.makedirs(os.path.join(root, d), exist_ok=True)


class PackageChecks(Checks):
    def run(self):
        if not self.check("dpkg -i efused.deb", self.t_install):
            return
        self.check("the package enables and starts efused on its empty config",
                   self.t_started)
        self.check("efusectl status after install", self.t_efusectl)
        self.check("the package's files: man pages with FILES and SEE ALSO, bash completion, "
                   "dashboards, README.Debian, copyright, version from debian/changelog",
                   self.t_contents)
        self.check("links in %s resolve to installed files" % DOC, self.t_doc_links)
        self.check("a mount added to the shipped config goes live with systemctl reload",
                   self.t_first_mount)
        self.check("upgrade (dpkg -i again) with a file held open on the mount: efused "
                   "restarted into the installed binary, same mount, the open file keeps "
                   "working, the edited conffile kept", self.t_upgrade)
        self.check("dpkg --purge: efused stopped, mounts gone, config removed", self.t_purge)

    def t_install(self):
        r = self.sh("DEBIAN_FRONTEND=noninteractive dpkg -i %s" % DEB_IN_ROOT, timeout=120,
                    ok=False)
        expect(r.returncode == 0, "dpkg -i: %s" % describe(r))
        self.notes["dpkg"] = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""

    def t_started(self):
        enabled = self.sh("systemctl is-enabled %s" % UNIT, ok=False).stdout.strip()
        expect(enabled == "enabled", "is-enabled: %s" % enabled)
        self.wait_for("efused to be active", lambda: self.prop("ActiveState") in
                      ("active", "failed"), 30)
        state = (self.prop("ActiveState"), self.prop("SubState"))
        expect(state == ("active", "running"), "state after install: %s\n%s" % (
            state, self.journal(30)))
        expect(self.efuse_mounts() == {}, "mounts with the empty config: %s"
               % self.efuse_mounts())
        r = self.sh("efused --check-config %s" % CONF)
        self.notes["shipped_config"] = r.stdout.strip()

    def t_efusectl(self):
        r = self.sh("efusectl status", ok=False)
        expect(r.returncode == 0, "efusectl status: %s" % describe(r))

    def t_contents(self):
        missing = [p for p in INSTALLED if self.sh("test -e %s" % p, ok=False).returncode]
        expect(not missing, "not installed: %s" % missing)
        r = self.sh("ls %s/README.Debian*" % DOC, ok=False)
        expect(r.returncode == 0, "no README.Debian: %s" % describe(r))
        for page in ("man5/mounts.yaml.5.gz", "man8/efused.8.gz", "man1/efusectl.1.gz"):
            roff = self.sh("zcat /usr/share/man/%s" % page).stdout
            for section in ("FILES", "SEE ALSO"):
                expect(re.search(r'^\.SH "?%s"?$' % section, roff, re.M), "%s: no %s section"
                       % (page, section))
        expect("GPL-2+" in self.sh("cat %s/copyright" % DOC).stdout, "copyright: no GPL-2+")
        tmpfiles = [l for l in self.sh("cat /usr/lib/tmpfiles.d/efused.conf").stdout.splitlines()
                    if l.strip() and not l.startswith("#")]
        expect([l.split()[1] for l in tmpfiles] == ["/run/efuse"], "tmpfiles: %s" % tmpfiles)
        version = self.sh("dpkg-query -W -f '${Version}' efused").stdout.strip()
        upstream = version.split("-")[0]
        out = self.sh("efused --version").stdout.strip()
        expect(out == "efused %s" % upstream, "efused --version %r, package %s" % (out, version))
        self.notes["package_version"] = version

    def t_doc_links(self):
        # The container has no python; its root is a directory here.
        r = subprocess.run([sys.executable, os.path.join(REPO, "tests/docs/check_links.py"),
                            "--installed", os.path.join(self.c.root, DOC.lstrip("/"))],
                           capture_output=True, text=True, timeout=60)
        expect(r.returncode == 0, "check_links.py --installed:\n%s%s" % (r.stdout, r.stderr))

    def t_first_mount(self):
        self.write_config(CONFIG_PKG)
        r = self.sh("systemctl reload %s" % UNIT, timeout=90, ok=False)
        expect(r.returncode == 0, "systemctl reload: %s\n%s" % (describe(r), self.journal(20)))
        expect("/srv/efuse/pkg" in self.efuse_mounts(), "/srv/efuse/pkg not mounted after "
               "reload: %s" % self.efuse_mounts())
        self.sh("echo pkg > /srv/efuse/pkg/p.txt && grep -qx pkg /var/lib/efuse-test/pkg/p.txt")

    def t_upgrade(self):
        # dpkg -i of the installed version again is an upgrade to it: prerm upgrade, then
        # postinst configure with the old version, where debhelper restarts the unit. The
        # operator's edit: a thread count. The transport stays auto, which under systemd is
        # /dev/fuse, the transport a restart keeps (io_uring mounts are remounted).
        self.write_config(CONFIG_PKG.replace("    source: /var/lib/efuse-test/pkg\n",
                                             "    source: /var/lib/efuse-test/pkg\n"
                                             "    threads: 3\n"))
        r = self.sh("systemctl reload %s" % UNIT, timeout=90, ok=False)
        expect(r.returncode == 0, "systemctl reload: %s\n%s" % (describe(r), self.journal(20)))
        expect("threads: 3" in self.sh("cat %s" % CONF).stdout, "config not edited")
        st = self.sh("efusectl --json status pkg", ok=False).stdout
        expect(re.search(r'"transport":\s*"classic"', st) and "transport auto under systemd" in st,
               "transport auto under systemd is not /dev/fuse with its note: %s" % st)
        held = "/proc/%d/root/srv/efuse/pkg/held.txt" % self.c.leader  # from the host
        holder = subprocess.Popen(
            [sys.executable, "-c", UPGRADE_HOLDER, held], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            expect(holder.stdout.readline().strip() == "ok before", "holder could not write")
            conf = self.sh("sha256sum %s" % CONF).stdout
            pid = self.prop("MainPID")
            mount = self.efuse_mounts().get("/srv/efuse/pkg")
            r = self.sh("DEBIAN_FRONTEND=noninteractive dpkg -i %s" % DEB_IN_ROOT, timeout=180,
                        ok=False)
            expect(r.returncode == 0, "dpkg -i (upgrade): %s" % describe(r))
            self.wait_for("efused to run again", lambda: self.prop("SubState") == "running"
                          and self.prop("MainPID") not in ("0", pid), 60)
            new_pid = self.prop("MainPID")
            expect(self.sh("readlink /proc/%s/exe" % new_pid).stdout.strip() ==
                   "/usr/sbin/efused", "efused runs a deleted binary after the upgrade")
            expect(self.efuse_mounts().get("/srv/efuse/pkg") == mount,
                   "the mount was replaced: %s -> %s\n%s" % (
                       mount, self.efuse_mounts().get("/srv/efuse/pkg"), self.journal(40)))
            holder.stdin.write("after\n")
            holder.stdin.flush()
            line = holder.stdout.readline().strip()
            expect(line == "ok after", "the open file failed after the upgrade: %r" % line)
            expect(self.sh("sha256sum %s" % CONF).stdout == conf, "the edited %s changed" % CONF)
            expect("pkg: resumed FUSE connection" in self.journal(200),
                   "no resume in the journal:\n%s" % self.journal(60))
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        self.sh("grep -qx after /var/lib/efuse-test/pkg/held.txt")

    def t_purge(self):
        r = self.sh("DEBIAN_FRONTEND=noninteractive dpkg --purge efused", timeout=120, ok=False)
        expect(r.returncode == 0, "dpkg --purge: %s" % describe(r))
        expect(self.sh("pidof efused", ok=False).returncode != 0, "efused still runs")
        expect(self.efuse_mounts() == {}, "mounts left: %s" % self.efuse_mounts())
        r = self.sh("ls /srv/efuse/pkg >/dev/null && ! mountpoint -q /srv/efuse/pkg && "
                    "! test -e %s && ! test -e /usr/sbin/efused" % CONF, ok=False)
        expect(r.returncode == 0, "after purge: %s" % describe(r))
