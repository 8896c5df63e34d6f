"""What each deployment records as its `version`: the commit it runs, and for a container
runtime the digest of the image it runs, as `<commit>@sha256:<hex>`.

prefect.yaml reads it as `{{ $DEPLOY_VERSION }}`; reconcile sets it to HEAD when it is unset.
Flow runs keep their deployment's version, so the Prefect API answers "which commit ran, and
did it complete" for the promotion gate and for rollback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .._internal.config import ConfigError

VERSION_VAR = "DEPLOY_VERSION"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def image_tag(commit: str) -> str:
    """The tag HEAD's image is pushed under: IMAGE_TAG (the Makefile's), else the short commit."""
    return os.environ.get("IMAGE_TAG") or commit[:12]


@dataclass(frozen=True)
class Version:
    commit: str
    digest: str = ""

    def __str__(self) -> str:
        return f"{self.commit}@{self.digest}" if self.digest else self.commit

    @classmethod
    def parse(cls, text: str | None) -> Version | None:
        """The version a deployment or flow run records, or None for anything else."""
        commit, _, digest = (text or "").partition("@")
        if not COMMIT.match(commit) or (digest and not DIGEST.match(digest)):
            return None
        return cls(commit, digest)


def git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("git")
    if executable is None:
        raise ConfigError("git is not on PATH: the deploy reads the commit from it.")
    return subprocess.run(
        [executable, *args], cwd=root, capture_output=True, text=True, check=False, timeout=60
    )


def resolve_commit(root: Path, revision: str = "HEAD") -> str:
    """The full commit id of a revision of the repository at root."""
    result = git(root, "rev-parse", "--verify", "--quiet", revision + "^{commit}")
    if result.returncode != 0:
        raise ConfigError(f"'{revision}' is not a commit of the repository at {root}.")
    return result.stdout.strip()


def head_version(root: Path) -> str:
    """HEAD's commit, or '' outside a git repository (the preflight then names the variable)."""
    try:
        return resolve_commit(root)
    except (ConfigError, OSError):
        return ""


def dirty_files(root: Path) -> list[str]:
    """Files that differ from HEAD, untracked ones included (not the ignored): an image built
    now would not be HEAD's, since the build context copies whatever is in src/, config/..."""
    result = git(root, "status", "--porcelain", "--untracked-files=all")
    if result.returncode != 0:
        raise ConfigError(f"git status failed in {root}: {result.stderr.strip()}")
    return [line[3:] for line in result.stdout.splitlines()]
