#!/usr/bin/env python3
"""Relative links in the documentation resolve, in the source tree and in the installed
/usr/share/doc/efused/.

The package installs the documents of SHIPPED_DOCS at the same relative paths below
/usr/share/doc/efused/ (packaging/deb/debian/efused.install), so a relative link between
two shipped files works in both places; a shipped document must not link to anything the
package does not ship (bench/, tests/, the shared ARCHITECTURE.md). Anchors (#...) must
name a heading or an explicit id of the target. Documents that are not shipped
(bench/README.md, tests/vm/README.md) are checked against the source tree only.

    check_links.py                     the source tree
    check_links.py --installed DIR     an installed doc directory (the system test)

Python standard library only."""

import argparse
import glob
import os
import re
import sys
import unicodedata

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Repository paths (globs) the package ships below /usr/share/doc/efused/, same layout.
SHIPPED_DOCS = ["README.md", "docs/*.md", "config/README.md", "config/mounts.yaml",
                "config/mounts.schema.json", "config/examples/*.yaml", "dashboards/README.md"]
SOURCE_ONLY_DOCS = ["bench/README.md", "tests/vm/README.md"]

LINK = re.compile(r"(?<!!)\[(?:[^\]\n]|\n(?!\n))*?\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def shipped(root=REPO):
    out = set()
    for pattern in SHIPPED_DOCS:
        out.update(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, pattern)))
    return out


def slug(heading):
    """GitHub's anchor for a heading."""
    h = re.sub(r"[`*_]|<[^>]+>", "", heading.strip()).lower()
    h = "".join(c for c in h if c in " -" or unicodedata.category(c)[0] in "LN")
    return h.replace(" ", "-")


def anchors(path):
    text = FENCE.sub("", open(path, encoding="utf-8").read())
    out = set(re.findall(r'<a id="([^"]+)"', text))
    seen = {}
    for h in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", text, re.M):
        s = slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def check(doc, root, allowed):
    """Problems of the links in root/doc; `allowed` limits the targets (None: any file)."""
    problems = []
    text = FENCE.sub("", open(os.path.join(root, doc), encoding="utf-8").read())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        full = os.path.join(root, dest)
        if not os.path.exists(full):
            problems.append(f"{doc}: {target}: {dest} does not exist")
            continue
        if allowed is not None:
            inside = dest in allowed or (os.path.isdir(full) and any(
                a.startswith(dest + "/") for a in allowed))
            if not inside:
                problems.append(f"{doc}: {target}: {dest} is not installed with the package")
                continue
        if anchor and dest.endswith(".md") and anchor not in anchors(full):
            problems.append(f"{doc}: {target}: no heading or id #{anchor} in {dest}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--installed", metavar="DIR", help="an installed /usr/share/doc/efused")
    args = ap.parse_args()
    problems = []
    if args.installed:
        docs = shipped()
        missing = sorted(d for d in docs if not os.path.exists(os.path.join(args.installed, d)))
        problems += [f"{d}: not installed in {args.installed}" for d in missing]
        for d in sorted(docs - set(missing)):
            if d.endswith(".md"):
                problems += check(d, args.installed, docs)
    else:
        docs = shipped()
        for d in sorted(docs):
            if d.endswith(".md"):
                problems += check(d, REPO, docs)
        for d in SOURCE_ONLY_DOCS:
            problems += check(d, REPO, None)
    for p in problems:
        print(p)
    print(f"check_links: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
