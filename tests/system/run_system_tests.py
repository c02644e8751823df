#!/usr/bin/env python3
"""efused under a real systemd: boots a Debian 12 container and does what an operator does.

Run through scripts/test-system.sh (root). Each suite unpacks a fresh copy of the cached
rootfs (built once with mmdebstrap), prepares it, boots it with systemd-nspawn and drives
it from inside with systemctl, efusectl, curl and findmnt:
  operator  efused, efusectl, the unit, the D-Bus policy, tmpfiles and a config copied in
            by hand (operator_checks.py)
  package   with --deb FILE: the Debian package installed with dpkg (package_checks.py)
Everything is torn down at the end, also on failure or Ctrl-C. Prints `N passed, N failed`
and exits 1 if anything failed.
"""
import argparse
import os
import shlex
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import checks  # noqa: E402
import container as ct  # noqa: E402
import operator_checks  # noqa: E402
import package_checks  # noqa: E402
import rootfs  # noqa: E402


class Interrupted(BaseException):
    """SIGINT or SIGTERM: not an Exception, so no check swallows it as a failure."""


def on_signal(signum, frame):
    raise Interrupted("signal %d" % signum)


class Tally:
    def __init__(self):
        self.passed = 0
        self.failed = []
        self.notes = {}

    def ok(self, name):
        self.passed += 1
        print("ok   %s" % name, flush=True)

    def fail(self, name, why=""):
        self.failed.append(name)
        print("FAIL %s%s" % (name, ("\n     " + why.replace("\n", "\n     ")) if why else ""),
              flush=True)


def run_suite(label, tarball, args, tally, prepare, binaries, suite_cls):
    """Unpack, prepare, boot, run suite_cls's checks, tear down. Adds to tally."""
    print("==== %s" % label, flush=True)
    root = rootfs.unpack(tarball, args.work_dir)
    log_path = root + ".console.log"
    c = None
    suite = None
    try:
        prepare(root)
        # Log persistently in the container, so a failed run leaves a journal to read.
        os.makedirs(os.path.join(root, "var/log/journal"), exist_ok=True)
        if binaries:
            missing = checks.missing_libraries(root, binaries)
            if missing:
                tally.fail("%s: runtime libraries present in the rootfs" % label,
                           "\n".join(missing) + "\nadd their packages to tests/system/rootfs.py")
                return
            tally.ok("%s: runtime libraries present in the rootfs (ldd)" % label)
        c = ct.Container(root, "efuse-%s-%d" % (label, os.getpid()), log_path)
        print("boot: %s" % " ".join(shlex.quote(a) for a in c.nspawn_command()), flush=True)
        t0 = time.monotonic()
        try:
            state = c.start(timeout=90)
        except RuntimeError as e:
            tally.fail("%s: container boots" % label, "%s\n%s" % (
                e, open(log_path, errors="replace").read()[-4000:]))
            return
        tally.ok("%s: container boots to multi-user (%s, %.1fs)"
                 % (label, state, time.monotonic() - t0))
        suite = suite_cls(c)
        suite.run()
    finally:
        # Teardown runs to the end: a second Ctrl-C must not leave a container behind.
        handlers = (signal.signal(signal.SIGINT, signal.SIG_IGN),
                    signal.signal(signal.SIGTERM, signal.SIG_IGN))
        if suite is not None:
            tally.passed += suite.passed
            tally.failed += ["%s: %s" % (label, f) for f in suite.failed]
            tally.notes.update({"%s.%s" % (label, k): v for k, v in suite.notes.items()})
        if c is not None:
            if c.leader is not None and (suite is None or suite.failed):
                saved = os.path.join(args.work_dir, "efuse-systest-%s-journal.txt" % label)
                with open(saved, "w") as f:
                    f.write(c.sh("journalctl -b -o short-monotonic --no-pager",
                                 timeout=30).stdout)
                print("the container's journal: %s" % saved, flush=True)
            c.stop()
        if args.keep:
            print("kept: %s (console log %s)" % (root, log_path))
        else:
            try:
                rootfs.remove(root)
                if os.path.exists(log_path):
                    os.unlink(log_path)
            except RuntimeError as e:
                tally.fail("%s: teardown" % label, str(e))
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--efused", default=os.path.join(REPO, "build/bin/efused"))
    ap.add_argument("--efusectl", default=os.path.join(REPO, "build/bin/efusectl"))
    ap.add_argument("--deb", help="also install this efused .deb in a fresh container")
    ap.add_argument("--cache-dir", default="/var/cache/efuse-test")
    ap.add_argument("--work-dir", default="/var/tmp")
    ap.add_argument("--keep", action="store_true", help="leave the rootfs copies behind")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run_system_tests: needs root", file=sys.stderr)
        return 2
    for path in (args.efused, args.efusectl) + ((args.deb,) if args.deb else ()):
        if not os.path.isfile(path):
            print("run_system_tests: %s does not exist" % path, file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t_begin = time.monotonic()
    tally = Tally()
    try:
        tarball = rootfs.cached_tarball(args.cache_dir, lambda m: print(m, flush=True))
        run_suite("operator", tarball, args, tally,
                  lambda root: operator_checks.prepare(root, REPO, args.efused, args.efusectl),
                  ("/usr/sbin/efused", "/usr/bin/efusectl"), operator_checks.OperatorChecks)
        if args.deb:
            run_suite("package", tarball, args, tally,
                      lambda root: package_checks.prepare(root, args.deb), (),
                      package_checks.PackageChecks)
    except Interrupted as e:
        tally.fail("interrupted", str(e))
    except Exception:
        tally.fail("harness error", traceback.format_exc())
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    n = tally.notes
    if "operator.security_full" in n:
        print("---- systemd-analyze security efused.service (inside the container)")
        print(n["operator.security_full"].rstrip())
    print("---- summary")
    for key in sorted(n):
        if not key.endswith("_full"):
            print("%-27s %s" % (key + ":", n[key]))
    print("system tests took %.0fs" % (time.monotonic() - t_begin))
    if tally.failed:
        print("failed:\n  " + "\n  ".join(tally.failed))
    print("%d passed, %d failed" % (tally.passed, len(tally.failed)))
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
