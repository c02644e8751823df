#!/usr/bin/env python3
"""git through efused: the same scripted history (init, add, commit, branch, checkout,
merge, mv, rm, gc, fsck, clone) runs natively and on the mount with fixed dates, so every
commit id, listing and status output must be identical."""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from efuse_harness import run, write_file  # noqa: E402

J = os.path.join


def git_env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", HOME=home, XDG_CONFIG_HOME=home, LC_ALL="C", TZ="UTC",
               GIT_AUTHOR_DATE="2020-01-01T00:00:00+0000",
               GIT_COMMITTER_DATE="2020-01-01T00:00:00+0000", GIT_TERMINAL_PROMPT="0")
    return env


class Git:
    def __init__(self, home):
        self.env = git_env(home)
        self.n = 0

    def __call__(self, repo, *args, check=True):
        self.n += 1  # distinct, deterministic dates per command
        env = dict(self.env, GIT_AUTHOR_DATE=f"2020-01-01T00:{self.n // 60:02d}:{self.n % 60:02d}+0000",
                   GIT_COMMITTER_DATE=f"2020-01-01T00:{self.n // 60:02d}:{self.n % 60:02d}+0000")
        return run(["git", "-C", repo, *args], env=env, timeout=300, check=check).out


def populate(repo, rng, count, tag):
    for i in range(count):
        d = J(repo, f"src{i % 7}", f"pkg{i % 3}")
        os.makedirs(d, exist_ok=True)
        write_file(J(d, f"file{i}.txt"), f"{tag} {i}\n" + "line\n" * rng.randrange(0, 200))
    write_file(J(repo, "blob.bin"), rng.randbytes(300_000))
    write_file(J(repo, "run.sh"), "#!/bin/sh\necho hi\n")
    os.chmod(J(repo, "run.sh"), 0o755)
    if not os.path.lexists(J(repo, "link")):
        os.symlink("src0/pkg0/file0.txt", J(repo, "link"))


def scenario(base, git):
    """Returns everything observable about the history; runs identically in any dir."""
    repo = J(base, "repo")
    rng = random.Random(11)
    out = {}
    git(base, "init", "-q", "-b", "main", repo)
    git(repo, "config", "user.name", "Efuse Test")
    git(repo, "config", "user.email", "test@efuse.invalid")
    git(repo, "config", "core.fsync", "all")  # exercise fsync of objects, refs and index
    out["config"] = git(repo, "config", "--local", "--list")  # filemode/symlinks detection
    populate(repo, rng, 300, "v1")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    out["c1"] = git(repo, "rev-parse", "HEAD")
    out["status1"] = git(repo, "status", "--porcelain")

    git(repo, "branch", "feature")
    git(repo, "checkout", "-q", "feature")
    for i in range(0, 300, 5):
        with open(J(repo, f"src{i % 7}", f"pkg{i % 3}", f"file{i}.txt"), "a") as f:
            f.write(f"feature change {i}\n")
    git(repo, "mv", "src1", "renamed-src1")
    git(repo, "rm", "-q", "-r", "-f", "src2")
    os.chmod(J(repo, "run.sh"), 0o644)
    git(repo, "commit", "-q", "-a", "-m", "feature work")
    out["c2"] = git(repo, "rev-parse", "HEAD")

    git(repo, "checkout", "-q", "main")
    out["after_checkout_main"] = sorted(os.listdir(repo))
    write_file(J(repo, "main-only.txt"), "main\n")
    git(repo, "add", "main-only.txt")
    git(repo, "commit", "-q", "-m", "main work")
    git(repo, "merge", "-q", "--no-edit", "feature")
    out["log"] = git(repo, "log", "--format=%H %P %an %ad %s", "--date=iso")
    out["ls_files"] = git(repo, "ls-files", "-s")
    out["status2"] = git(repo, "status", "--porcelain")
    # Stat data the index recorded must still match: nothing looks modified.
    out["diff_files"] = git(repo, "diff-files", "--name-only")
    out["show_stat"] = git(repo, "show", "--stat", "--format=%H", "HEAD~1")

    git(repo, "gc", "-q", "--prune=now")
    out["count_objects"] = sorted(
        line for line in git(repo, "count-objects", "-v").splitlines()
        if line.split(":")[0] in ("count", "in-pack", "packs", "prune-packable", "garbage"))
    out["fsck"] = git(repo, "fsck", "--full", "--strict", "--no-progress")
    out["status3"] = git(repo, "status", "--porcelain")

    git(base, "clone", "-q", repo, J(base, "clone"))  # a local clone hard-links objects
    out["clone_head"] = git(J(base, "clone"), "rev-parse", "HEAD")
    out["clone_fsck"] = git(J(base, "clone"), "fsck", "--full", "--no-progress")
    git(J(base, "clone"), "config", "user.name", "Efuse Clone")
    git(J(base, "clone"), "config", "user.email", "clone@efuse.invalid")
    git(J(base, "clone"), "checkout", "-q", "-b", "topic", "HEAD~2")
    write_file(J(base, "clone", "topic.txt"), "topic\n")
    git(J(base, "clone"), "add", "topic.txt")
    git(J(base, "clone"), "commit", "-q", "-m", "topic")
    git(J(base, "clone"), "push", "-q", "origin", "topic")
    out["pushed"] = git(repo, "rev-parse", "topic")
    out["branches"] = git(repo, "branch", "-a", "--format=%(refname) %(objectname)")
    return out


def test_git_history_identical(m):
    home = J(m.tmp, "home")
    os.mkdir(home)
    native = scenario(m.native, Git(home))
    mounted = scenario(m.mnt, Git(home))
    for key in native:
        assert native[key] == mounted[key], (
            f"{key} differs:\n--- native ---\n{native[key]}\n--- mount ---\n{mounted[key]}")
    assert mounted["status1"] == mounted["status2"] == mounted["status3"] == ""
    assert mounted["diff_files"] == ""
    assert "core.filemode=true" in mounted["config"] and "core.symlinks" not in mounted["config"]
    assert len(mounted["log"].splitlines()) == 4
    # The working trees (and the .git dirs) agree; the backing store holds the same bytes.
    wt_native = {k: v for k, v in h.tree_state(J(m.native, "repo"))["entries"].items()
                 if not k.startswith(".git")}
    wt_mount = {k: v for k, v in h.tree_state(J(m.mnt, "repo"))["entries"].items()
                if not k.startswith(".git")}
    assert wt_native == wt_mount
    h.assert_same_tree(m.m("repo"), m.s("repo"), times=True, dir_size=True)
    h.assert_same_tree(m.m("clone"), m.s("clone"), times=True, dir_size=True)

    # After a restart (cold kernel caches) the repository is still clean and consistent.
    m.restart_if_persistent()
    git = Git(home)
    assert git(m.m("repo"), "status", "--porcelain") == ""
    assert git(m.m("repo"), "fsck", "--full", "--strict", "--no-progress") == native["fsck"]
    assert git(m.m("repo"), "log", "--format=%H %P %an %ad %s", "--date=iso") == native["log"]


if __name__ == "__main__":
    h.main(globals(), require=["git"])
