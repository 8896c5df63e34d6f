"""What makes a repository's update safe to stop, to rerun, and to race with another run.

- A lock per repository (`flock` on a file in the git directory): the kernel drops it when the
  holder dies, however it dies, so a killed run never leaves a stale lock behind.
- A marker in the git directory while an update is in progress, with what the repository was
  before it (branch, commit, and the index file's bytes). A run that finds a marker on the
  update branch knows the previous run was cut short (SIGKILL, a power cut) and restores from
  it before updating properly; it never mistakes a half-written update for a current one.
- The restore itself: the tree was clean when the update began (dirty trees are refused), so
  every change and every untracked, unignored file since is the update's own.

Everything lives under the git directory, so none of it ever makes the tree dirty.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from fleet import repo as g

LOCK_FILE = "fleet.lock"
MARKER_FILE = "fleet-update.json"
INDEX_COPY = "fleet-update.index"


class Locked(Exception):
    """Another fleet run holds this repository."""


def git_dir(top: Path) -> Path:
    return Path(g.git(top, "rev-parse", "--absolute-git-dir").stdout.strip())


@contextlib.contextmanager
def repo_lock(gitdir: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold the repository's lock for the block; Locked if another run keeps it past `wait`.

    The lock file is removed on release, so a repository the run only looked at (a dirty one
    it refused) is left without a trace. Removing a lock file races with a waiter that opened
    it before the removal: a holder checks that the path still names the file it locked.
    """
    path = gitdir / LOCK_FILE
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            if time.monotonic() >= deadline:
                raise Locked(
                    f"another fleet run holds this repository ({holder or 'starting'})"
                ) from None
            time.sleep(0.2)
            continue
        try:
            same = path.stat().st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its holder had just removed: try the current one
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"pid {os.getpid()} since {stamp}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the flock


@dataclass(frozen=True)
class Before:
    """The repository as it was when the update began."""

    branch: str | None  # None: a detached HEAD
    commit: str
    update_branch: str
    to_ref: str


def begin(top: Path, gitdir: Path, before: Before) -> None:
    index = gitdir / "index"
    if index.is_file():
        (gitdir / INDEX_COPY).write_bytes(index.read_bytes())
    (gitdir / MARKER_FILE).write_text(json.dumps(asdict(before), indent=2) + "\n")


def read_marker(gitdir: Path) -> Before | None:
    path = gitdir / MARKER_FILE
    try:
        return Before(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def finish(gitdir: Path) -> None:
    for name in (MARKER_FILE, INDEX_COPY):
        (gitdir / name).unlink(missing_ok=True)


def restore(top: Path, gitdir: Path, before: Before) -> None:
    """Put branch, index and tree back as `before` recorded them, then drop the update branch."""
    g.git(top, "reset", "--quiet", "--hard")
    g.git(top, "clean", "--quiet", "-fd")
    target = [before.branch] if before.branch else ["--detach", before.commit]
    g.git(top, "switch", "--quiet", *target)
    if g.head_commit(top) != before.commit:
        # The branch itself moved (only the update branch should have): leave it to a human.
        raise g.GitError(f"{before.branch} is no longer at {before.commit[:12]}")
    if g.branch_exists(top, before.update_branch):
        g.git(top, "branch", "--quiet", "-D", before.update_branch)
    copy = gitdir / INDEX_COPY
    if copy.is_file():
        # Byte for byte: `reset --hard` rewrote the index with new stat data.
        (gitdir / "index").write_bytes(copy.read_bytes())
    finish(gitdir)


def leftover_base(top: Path, branch: str) -> str | None:
    """For an update branch with no commits of its own, a branch it can be dropped in favour of.

    An interrupted run of an older fleet left such branches; they hold nothing, so reusing the
    name is safe. None when the branch has work of its own (a finished or conflicted update).
    """
    tip = g.git(top, "rev-parse", "--verify", f"refs/heads/{branch}").stdout.strip()
    current = g.current_branch(top)
    if current != branch:
        contained = g.git(top, "merge-base", "--is-ancestor", tip, "HEAD", check=False)
        return (current or g.head_commit(top)) if contained.returncode == 0 else None
    same = g.git(
        top, "for-each-ref", "--points-at", tip, "--format=%(refname:short)", "refs/heads/"
    ).stdout.split()
    others = [name for name in same if name != branch]
    return others[0] if others else None
