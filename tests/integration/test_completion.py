#!/usr/bin/env python3
"""bash completion (completions/efused, completions/efusectl) as bash-completion runs it:
every option `efused --help` lists is offered, option values complete, efusectl offers
its commands and, for status/mount/unmount, the names of the mounts a real efused serves
(asked over a private D-Bus)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from test_dbus import EFUSECTL, DbusEfused  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"


def complete(program, line, path_dir=None):
    """COMPREPLY for `line` (the cursor at its end) after loading bash-completion and
    completions/PROGRAM, as an interactive bash would."""
    words = line.split(" ")
    script = f"""
source {BASH_COMPLETION}
source {shlex.quote(os.path.join(REPO, "completions", program))}
COMP_WORDS=({" ".join(shlex.quote(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={shlex.quote(line)}
COMP_POINT=${{#COMP_LINE}}
_{program}
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = dict(os.environ)
    if path_dir:
        env["PATH"] = path_dir + ":" + env["PATH"]
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                       env=env)
    assert r.returncode == 0, f"bash: {r.returncode}\n{r.stderr}"
    return [w for w in r.stdout.splitlines() if w]


def help_options():
    out = h.run([h.EFUSED, "--help"], timeout=30).out
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", out))


def test_efused_options():
    offered = set(complete("efused", "efused --"))
    missing = help_options() - offered
    assert not missing, f"efused --help lists options the completion lacks: {sorted(missing)}"
    unknown = offered - help_options()
    assert not unknown, f"the completion offers options efused does not have: {sorted(unknown)}"
    assert complete("efused", "efused --transport ") == ["auto", "classic", "uring"]
    assert complete("efused", "efused --io-path p") == ["passthrough"]
    assert complete("efused", "efused --log-level w") == ["warning"]


def test_efused_paths():
    d = os.path.realpath(tempfile.mkdtemp(prefix="efuse-compl-"))
    try:
        os.mkdir(os.path.join(d, "srcdir"))
        open(os.path.join(d, "conf.yaml"), "w").close()
        open(os.path.join(d, "notes.txt"), "w").close()
        got = complete("efused", f"efused --config {d}/")
        assert f"{d}/conf.yaml" in got and f"{d}/notes.txt" not in got, got
        got = complete("efused", f"efused --mount {d}/src:{d}/sr")
        assert got == [f"{d}/src:{d}/srcdir"], got
    finally:
        shutil.rmtree(d)


def test_efusectl_commands():
    assert complete("efusectl", "efusectl ") == ["status", "mounts", "mount", "unmount",
                                                 "reload"]
    assert set(complete("efusectl", "efusectl --")) == {"--json", "--bus", "--help",
                                                       "--version"}


def test_efusectl_mount_names():
    bindir = os.path.dirname(EFUSECTL)  # the completion runs `efusectl` from PATH
    with DbusEfused() as m:
        got = complete("efusectl", f"efusectl --bus {m.address} status ", bindir)
        assert got == ["a"], got
        got = complete("efusectl", f"efusectl --json --bus={m.address} unmount ", bindir)
        assert got == ["a"], got
        # One name per command: nothing after it.
        assert complete("efusectl", f"efusectl --bus {m.address} status a ", bindir) == []
    # No efused on that bus any more: nothing, and no error on the terminal.
    assert complete("efusectl", f"efusectl --bus {m.address} status ", bindir) == []


if __name__ == "__main__":
    h.main(globals(), require=("bash", "dbus-daemon"))
