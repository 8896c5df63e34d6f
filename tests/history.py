"""A git-tagged copy of the template: its releases as tags, the working tree as HEAD.

Releases are the commits whose subject is `Release vX.Y.Z`; they are found in this
repository's history and tagged in the copy, so the tests need no tags to have been pushed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.rendering import ROOT, SNAPSHOT_IGNORES, git

RELEASE_SUBJECT = re.compile(r"^Release (v\d+\.\d+\.\d+)$")


def releases(root: Path = ROOT) -> dict[str, str]:
    """Release tag -> commit, oldest first."""
    log = subprocess.run(
        ["git", "log", "--reverse", "--format=%H %s"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = {}
    for line in log.splitlines():
        commit, _, subject = line.partition(" ")
        if match := RELEASE_SUBJECT.match(subject):
            found[match.group(1)] = commit
    return found


def tagged_template(destination: Path, root: Path = ROOT) -> Path:
    """Clone the history, tag the releases, and commit the working tree on top as HEAD."""
    subprocess.run(["git", "clone", "-q", "--no-local", str(root), str(destination)], check=True)
    for tag, commit in releases(root).items():
        git("tag", "-f", tag, commit, cwd=destination)
    for item in destination.iterdir():
        if item.name != ".git":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    for item in root.iterdir():
        if SNAPSHOT_IGNORES(str(root), [item.name]):
            continue
        target = destination / item.name
        shutil.copytree(item, target, ignore=SNAPSHOT_IGNORES) if item.is_dir() else shutil.copy2(
            item, target
        )
    git("add", "-A", cwd=destination)
    git("commit", "-q", "--allow-empty", "-m", "Working tree", cwd=destination)
    return destination
