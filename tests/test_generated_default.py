"""The default render passes the generated repository's own checks, as its CI would run them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.rendering import BIN, answers_of, run, run_checks


@pytest.mark.slow
def test_default_repo_passes_all_its_own_checks(default_repo: Path, tmp_path: Path) -> None:
    """ruff, format, pytest, then `ops validate` and every pre-commit hook, in one environment."""
    repo = tmp_path / "repo"
    shutil.copytree(default_repo, repo)
    env = run_checks(repo)
    uv = str(BIN / "uv")
    package = answers_of(repo)["package_name"]
    run([uv, "run", "python", "-m", f"{package}.ops", "validate"], cwd=repo, env=env)
    run([uv, "run", "pre-commit", "run", "--all-files"], cwd=repo, env=env)
