#!/usr/bin/env python3
"""The hand-written manual page docs/man/mounts.yaml.5: groff formats it without warnings,
it documents every key of config/mounts.schema.json (as `.TP` items named after the full
key), every example in it passes `efused --check-config`, and it has FILES and SEE ALSO
sections that name installed paths, not the source tree. The help2man includes of
efused(8) and efusectl(1) (docs/man/*.h2m) are checked for the same sections."""

import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAN = os.path.join(REPO, "docs", "man")
PAGE = os.path.join(MAN, "mounts.yaml.5")
SCHEMA = os.path.join(REPO, "config", "mounts.schema.json")


def schema_keys():
    """Dotted keys a mount or the top level can carry (defaults.* are the mount keys)."""
    s = json.load(open(SCHEMA))
    d = s["definitions"]
    keys = {"metrics." + k for k in d["metrics"]["properties"]}
    keys |= {k for k in s["properties"] if k != "metrics"}  # defaults, mounts, telemetry...
    for k in d["mount"]["properties"]:
        if k in ("adaptive", "cache", "options"):
            keys |= {f"{k}.{sub}" for sub in d[k]["properties"]}
        else:
            keys.add(k)
    return keys


def text():
    return open(PAGE, encoding="utf-8").read()


def test_groff_clean():
    r = h.run(["groff", "-man", "-ww", "-z", PAGE], check=False, timeout=30)
    assert r.rc == 0 and not r.err.strip(), f"groff: exit {r.rc}\n{r.err}"


def test_every_key_documented():
    # A key is documented by a tagged paragraph whose tag starts with the key in bold.
    tags = set(re.findall(r"^\.TP\n\.BR? ([\w.]+)", text(), re.M))
    missing = schema_keys() - tags
    assert not missing, f"keys of {SCHEMA} without an item in mounts.yaml(5): {sorted(missing)}"
    for opcode in json.load(open(SCHEMA))["definitions"]["bpf_handlers"]["properties"]:
        assert f"\\fB{opcode}\\fR" in text(), f"bpf_handlers opcode {opcode} not listed"


def test_examples_valid():
    examples = [re.sub(r"\\-", "-", e) for e in
                re.findall(r"^\.nf\n(.*?)^\.fi$", text(), re.M | re.S)]
    yaml = [e for e in examples if re.match(r"(metrics|mounts|defaults):", e)]
    assert len(yaml) >= 2, f"expected at least two YAML examples, found {len(yaml)}"
    with tempfile.TemporaryDirectory(prefix="efuse-man-") as d:
        for i, e in enumerate(yaml):
            path = os.path.join(d, f"example{i}.yaml")
            with open(path, "w") as f:
                f.write(e)
            r = h.run([h.EFUSED, "--check-config", path], check=False, timeout=30)
            assert r.rc == 0, f"example {i} of mounts.yaml(5) is invalid:\n{e}\n{r.out}{r.err}"


def sections(roff):
    return re.findall(r"^(?:\.SH\s+\"?([^\"\n]+)\"?|\[([^\]]+)\])$", roff, re.M)


def test_files_and_see_also():
    pages = {"mounts.yaml.5": text()}
    for name in ("efused.h2m", "efusectl.h2m", "efuse-run.h2m"):
        pages[name] = open(os.path.join(MAN, name), encoding="utf-8").read()
    for name, roff in pages.items():
        found = {a or b for a, b in sections(roff)}
        assert {"FILES", "SEE ALSO"} <= found, f"{name}: sections {sorted(found)}"
        # Paths an operator has: nothing from the source tree.
        for path in re.findall(r"\.I\s+(/\S+)", roff):
            assert path.startswith(("/etc/", "/usr/", "/lib/", "/run/")), f"{name}: {path}"
        for bad in ("config/README.md)", "docs/metrics.md)", "../", "build/"):
            assert bad not in roff, f"{name}: mentions {bad!r}"


if __name__ == "__main__":
    h.main(globals(), require=("groff",))
