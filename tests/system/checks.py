"""What the system checks share: a check runner and helpers that act inside the container."""
import subprocess
import time
import traceback

CONF = "/etc/efuse/mounts.yaml"
UNIT = "efused.service"


class Failure(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise Failure(message)


def describe(r):
    return "exit %d\n--- stdout\n%s--- stderr\n%s" % (r.returncode, r.stdout, r.stderr)


class Checks:
    """Runs named checks against a booted container; counts passes and failures."""

    def __init__(self, c):
        self.c = c
        self.passed = 0
        self.failed = []
        self.notes = {}

    def check(self, name, fn):
        t0 = time.monotonic()
        try:
            fn()
        except Failure as e:
            self.failed.append(name)
            print("FAIL %s (%.1fs)\n     %s" % (name, time.monotonic() - t0,
                                               str(e).replace("\n", "\n     ")), flush=True)
            return False
        except Exception:  # a bug in the test itself still counts as a failure
            self.failed.append(name)
            print("FAIL %s\n%s" % (name, traceback.format_exc()), flush=True)
            return False
        self.passed += 1
        print("ok   %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
        return True

    # ---- helpers -------------------------------------------------------------------------

    def sh(self, script, timeout=60, ok=True):
        r = self.c.sh(script, timeout=timeout)
        if ok:
            expect(r.returncode == 0, "`%s` failed: %s" % (script, describe(r)))
        return r

    def prop(self, name):
        return self.sh("systemctl show -p %s --value %s" % (name, UNIT)).stdout.strip()

    def efuse_mounts(self):
        """{mountpoint: (mount id, fstype, source)} of the FUSE mounts efused made."""
        out = {}
        for line in self.sh("cat /proc/1/mountinfo").stdout.splitlines():
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1].startswith("fuse"):
                out[fields[4]] = (fields[0], fields[sep + 1], fields[sep + 2])
        return out

    def write_config(self, text):
        r = self.c.sh("cat > %s.new && mv %s.new %s" % (CONF, CONF, CONF), input=text)
        expect(r.returncode == 0, "writing %s: %s" % (CONF, describe(r)))

    def journal(self, lines=300):
        return self.sh("journalctl -u %s -o cat --no-pager -n %d" % (UNIT, lines)).stdout

    def wait_for(self, what, fn, timeout):
        deadline = time.monotonic() + timeout
        while True:
            v = fn()
            if v:
                return v
            if time.monotonic() > deadline:
                raise Failure("timed out after %ds waiting for %s" % (timeout, what))
            time.sleep(0.2)



def missing_libraries(root, binaries):
    """ldd inside the rootfs: the libraries of binaries that are not installed there."""
    missing = []
    for binary in binaries:
        r = subprocess.run(["chroot", root, "ldd", binary], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            missing.append("%s: ldd failed: %s" % (binary, r.stderr.strip()))
        missing += ["%s: %s" % (binary, l.strip()) for l in r.stdout.splitlines()
                    if "not found" in l]
    return missing
