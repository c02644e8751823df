#!/usr/bin/env python3
"""systemd/ is loadable and keeps efused's mounts on the host: `systemd-analyze verify`
accepts efused.service (its ExecStart/ExecReload pointed at the build tree), the unit sets
nothing that gives efused a private mount namespace (its mounts would be invisible to
everyone else), it is Type=notify with ExecReload and WatchdogSec, the D-Bus policy is
well-formed XML that a real dbus-daemon loads, the tmpfiles snippet applies, and the
packaged minimal config is valid. The slow end-to-end check under a booted systemd is
scripts/test-system.sh."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from dbus_conf import SYSTEM_POLICY, bus_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(REPO, "systemd/efused.service")
POLICY = os.path.join(REPO, "systemd/org.efuse.Manager1.conf")
TMPFILES = os.path.join(REPO, "systemd/efused.tmpfiles")
LOOPBACK_DROPIN = os.path.join(REPO, "systemd/efused-metrics-loopback.conf")
MAX_EXPOSURE = 4.9  # docs/systemd.md, "Exposure score"
DEB_CONFIG = os.path.join(REPO, "packaging/deb/mounts.yaml")

# Options that make systemd run the service in its own mount namespace (systemd.exec(5):
# every sandboxing option that mounts something, plus those that imply one).
NAMESPACE_OPTIONS = {
    "PrivateTmp", "PrivateDevices", "PrivateMounts", "PrivateNetwork", "PrivateIPC",
    "PrivateUsers", "ProtectSystem", "ProtectHome", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
    "ProcSubset", "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "ExecPaths",
    "NoExecPaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "MountFlags",
    "RootDirectory", "RootImage", "RootImageOptions", "RootHash", "RootVerity",
    "MountImages", "ExtensionImages", "ExtensionDirectories", "MountAPIVFS",
    "DynamicUser", "LogNamespace", "NetworkNamespacePath", "IPCNamespacePath",
    "ReadOnlyDirectories", "ReadWriteDirectories", "InaccessibleDirectories",
}
# Values of those options that leave the namespace alone.
HARMLESS = {
    "PrivateTmp": {"no", "false", "0", "off"},
    "ProtectSystem": {"no", "false", "0", "off"},
    "ProtectHome": {"no", "false", "0", "off"},
    "ProtectProc": {"default"},
    "ProcSubset": {"all"},
}
FALSE = {"no", "false", "0", "off"}


def parse_unit(path):
    """[(section, key, value)] in file order; continuation lines joined."""
    entries, section, pending = [], None, ""
    for raw in open(path, encoding="utf-8").read().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        assert "=" in line, "%s: not KEY=VALUE: %r" % (path, line)
        key, value = line.split("=", 1)
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(entries, section, key):
    return [v for s, k, v in entries if s == section and k == key]


def efusectl_path():
    return os.path.join(os.path.dirname(os.path.abspath(h.EFUSED)), "efusectl")


def test_unit_verifies():
    """systemd-analyze verify, with the unit's binaries taken from the build tree."""
    efusectl = efusectl_path()
    assert os.access(efusectl, os.X_OK), "efusectl not built next to efused: %s" % efusectl
    text = open(UNIT, encoding="utf-8").read()
    assert "/usr/sbin/efused " in text and "/usr/bin/efusectl " in text, \
        "ExecStart/ExecReload no longer name /usr/sbin/efused and /usr/bin/efusectl"
    text = text.replace("/usr/sbin/efused ", os.path.abspath(h.EFUSED) + " ")
    text = text.replace("/usr/bin/efusectl ", efusectl + " ")
    with tempfile.TemporaryDirectory(prefix="efuse-unit-") as d:
        path = os.path.join(d, "efused.service")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        r = h.run(["systemd-analyze", "verify", "--man=no", path], check=False, timeout=60)
    # verify also reports problems of units it pulls in (dbus.service); ours must be clean.
    ours = [l for l in (r.out + r.err).splitlines() if "efused" in l]
    assert r.rc == 0 and not ours, "systemd-analyze verify: exit %d\n%s%s" % (r.rc, r.out, r.err)


def test_unit_keeps_host_mount_namespace():
    entries = parse_unit(UNIT)
    bad = []
    for section, key, value in entries:
        if section != "Service" or key not in NAMESPACE_OPTIONS:
            continue
        value = value.lower()
        if value in HARMLESS.get(key, set()) or (value in FALSE and key.startswith(
                ("Private", "Protect", "DynamicUser", "MountAPIVFS"))):
            continue
        bad.append("%s=%s" % (key, value))
    assert not bad, ("efused.service sets options that give efused a private mount namespace "
                     "(its mounts would not be seen outside it): %s" % ", ".join(bad))


def test_unit_service_contract():
    e = parse_unit(UNIT)
    assert values(e, "Service", "Type") == ["notify"], "Type=%s" % values(e, "Service", "Type")
    start = values(e, "Service", "ExecStart")
    assert len(start) == 1 and start[0].startswith("/usr/sbin/efused --config "), start
    config = start[0].split("--config ", 1)[1].split()[0]
    assert ("ConditionPathExists", config) in [(k, v) for s, k, v in e if s == "Unit"], \
        "ConditionPathExists= must name the config ExecStart reads (%s)" % config
    reload_ = values(e, "Service", "ExecReload")
    # systemd 252 has no Type=notify-reload: the reload command must wait for the reload.
    assert reload_ == ["/usr/bin/efusectl reload"], "ExecReload=%s" % reload_
    watchdog = values(e, "Service", "WatchdogSec")
    assert watchdog and watchdog[-1] not in ("0", "infinity", ""), "WatchdogSec=%s" % watchdog
    assert values(e, "Service", "NotifyAccess") in ([], ["main"]), \
        "NotifyAccess=%s (efused notifies from its main process)" % values(e, "Service",
                                                                         "NotifyAccess")
    allow = " ".join(values(e, "Service", "DeviceAllow"))
    if values(e, "Service", "DevicePolicy") in (["closed"], ["strict"]):
        assert "/dev/fuse rw" in allow, "DevicePolicy closes /dev/fuse: DeviceAllow=%s" % allow
    assert values(e, "Install", "WantedBy") == ["multi-user.target"]


def test_unit_does_not_restart_what_a_restart_cannot_fix():
    """Every exit status efused --help says the unit does not restart on is in
    RestartPreventExitStatus= (an invalid config restarted forever before)."""
    e = parse_unit(UNIT)
    assert values(e, "Service", "Restart") == ["on-failure"], values(e, "Service", "Restart")
    prevent = " ".join(values(e, "Service", "RestartPreventExitStatus")).split()
    text = h.run([h.EFUSED, "--help"], timeout=30).out
    said = re.search(r"efused\.service lists ([0-9 and,]+) in RestartPreventExitStatus=", text)
    assert said, "efused --help does not say which exit statuses the unit does not restart on"
    codes = re.findall(r"[0-9]+", said.group(1))
    assert codes and set(codes) <= set(prevent), \
        "RestartPreventExitStatus=%s lacks %s" % (" ".join(prevent), codes)
    for code in codes:  # each is explained in the exit status list
        assert re.search(r"^\s+%s\s+\S" % code, text, re.M), code
    assert re.search(r"^\s+78\s+the config file is invalid", text, re.M), text


def test_dbus_policy_well_formed():
    root = ET.parse(POLICY).getroot()
    assert root.tag == "busconfig", root.tag
    owners = [a.get("own") for p in root.iter("policy") if p.get("user") == "root"
              for a in p.iter("allow")]
    assert "org.efuse.Manager1" in owners, "root may not own org.efuse.Manager1"
    for p in root.iter("policy"):
        if p.get("context") == "default":
            assert not any(a.get("own") for a in p.iter("allow")), \
                "the default context may own a name"


def test_dbus_daemon_loads_policy():
    """A private dbus-daemon whose config includes the policy starts and answers."""
    with tempfile.TemporaryDirectory(prefix="efuse-dbus-") as d:
        sock = os.path.join(d, "bus")
        conf = os.path.join(d, "bus.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(bus_config(sock, SYSTEM_POLICY, POLICY))
        p = h.spawn(["dbus-daemon", "--config-file=" + conf, "--nofork", "--nopidfile",
                     "--print-address=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            h.wait_until(lambda: os.path.exists(sock) or p.poll() is not None, 10,
                         what="dbus-daemon to listen")
            assert p.poll() is None, "dbus-daemon rejected the config: %s" % p.stderr.read()
            # The bus answers with the policy loaded.
            if shutil.which("busctl"):
                r = h.run(["busctl", "--address=unix:path=" + sock, "call",
                           "org.freedesktop.DBus", "/org/freedesktop/DBus",
                           "org.freedesktop.DBus", "GetId"], check=False, timeout=10)
                assert r.rc == 0, "the bus does not answer: %s %s" % (r.out, r.err)
        finally:
            h.reap(p)
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        assert "org.efuse.Manager1" not in err and "Manager1.conf" not in err, \
            "dbus-daemon complained about the policy: %s" % err


def test_tmpfiles_apply():
    with tempfile.TemporaryDirectory(prefix="efuse-tmpfiles-") as d:
        r = h.run(["systemd-tmpfiles", "--create", "--root=" + d, TMPFILES], check=False,
                  timeout=30)
        assert r.rc == 0 and not r.err.strip(), "systemd-tmpfiles: exit %d %s" % (r.rc, r.err)
        made = sorted(os.path.relpath(os.path.join(dp, n), d)
                      for dp, dirs, files in os.walk(d) for n in dirs + files)
        # Only what efused uses: its runtime directory for the config lock.
        assert made == ["run", "run/efuse"], "systemd-tmpfiles created %s" % made


def exposure(dropins=()):
    """`systemd-analyze security --offline` of the unit (plus drop-ins) in a scratch root:
    (overall exposure, {setting: line})."""
    with tempfile.TemporaryDirectory(prefix="efuse-security-") as root:
        unit_dir = os.path.join(root, "etc/systemd/system")
        os.makedirs(os.path.join(unit_dir, "efused.service.d"))
        shutil.copy(UNIT, unit_dir)
        for d in dropins:
            shutil.copy(d, os.path.join(unit_dir, "efused.service.d"))
        r = h.run(["systemd-analyze", "security", "--offline=true", "--root=" + root,
                   "--no-pager", "efused.service"], check=False, timeout=60)
    m = re.search(r"Overall exposure level for efused\.service: ([0-9.]+)", r.out)
    assert m, "systemd-analyze security: exit %d\n%s%s" % (r.rc, r.out, r.err)
    items = {}
    for line in r.out.splitlines():
        mo = re.match(r"\W*(\w+)=", line)
        if mo:
            items[mo.group(1)] = line
    return float(m.group(1)), items


def test_exposure_score():
    """The unit's exposure stays at or below 4.9; the optional loopback-only drop-in
    installs an IP allow list of localhost only and lowers it."""
    score, _ = exposure()
    assert score <= MAX_EXPOSURE, "exposure %.1f > %.1f" % (score, MAX_EXPOSURE)
    dropin = parse_unit(LOOPBACK_DROPIN)
    assert values(dropin, "Service", "IPAddressDeny") == ["any"], dropin
    assert values(dropin, "Service", "IPAddressAllow") == ["localhost"], dropin
    with_dropin, items = exposure([LOOPBACK_DROPIN])
    assert "only localhost" in items.get("IPAddressDeny", ""), items.get("IPAddressDeny")
    assert with_dropin < score, "drop-in: %.1f, unit alone: %.1f" % (with_dropin, score)


def test_version_from_changelog():
    """CMake's project VERSION is read from debian/changelog: the binaries report the
    upstream part of its top entry."""
    top = open(os.path.join(REPO, "packaging/deb/debian/changelog")).readline()
    m = re.match(r"efuse \((\d+\.\d+\.\d+)[^)]*\)", top)
    assert m, top
    for prog in (h.EFUSED, efusectl_path()):
        out = h.run([prog, "--version"], timeout=30).out.strip()
        want = "%s %s" % (os.path.basename(prog), m.group(1))
        assert out == want, "%s --version: %r, debian/changelog says %r" % (prog, out, want)


def test_packaged_config_valid():
    if not os.path.exists(DEB_CONFIG):
        return  # packaging/deb ships no config
    r = h.run([h.EFUSED, "--check-config", DEB_CONFIG], check=False, timeout=30)
    assert r.rc == 0, "efused --check-config %s: %s%s" % (DEB_CONFIG, r.out, r.err)


if __name__ == "__main__":
    h.main(globals(), require=("systemd-analyze", "systemd-tmpfiles", "dbus-daemon"))
