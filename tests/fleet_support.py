"""What the fleet's test modules share: helpers here, the tiny template's fixtures in conftest."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

from fleet import testing as fx
from fleet.cli import main

BRANCH = "template-update/v2"
REPO_ROOT = Path(__file__).resolve().parents[1]


def git(repo: Path, *args: str) -> str:
    return fx.run_git(repo, *args)


def snapshot(repo: Path) -> dict[str, bytes]:
    # .git included: a refused repo must not even get a refreshed index or a new ref.
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*") if p.is_file()}


def report_path(directory: Path) -> Path:
    """The newest report-*.json (runs never overwrite each other's)."""
    return max(directory.glob("report-*.json"), key=lambda p: p.stat().st_mtime_ns)


def read_report(directory: Path) -> list[dict]:
    return json.loads(report_path(directory).read_text())


def run_fleet(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["update", *argv])
    return code, out.getvalue()


def copy_repo(pristine: Path, dest: Path) -> Path:
    shutil.copytree(pristine, dest, symlinks=True)
    return dest
