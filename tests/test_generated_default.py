"""The default render passes the generated repository's own checks, as its CI would run them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.rendering import BIN, run, run_checks, sync


@pytest.mark.slow
def test_default_repo_passes_ruff_and_its_own_tests(default_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(default_repo, repo)
    run_checks(repo)


@pytest.mark.slow
def test_default_repo_passes_its_own_offline_validation(default_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(default_repo, repo)
    env = sync(repo)
    package = next((repo / "src").iterdir()).name
    run([str(BIN / "uv"), "run", "python", "-m", f"{package}.ops", "validate"], cwd=repo, env=env)


@pytest.mark.slow
def test_default_repo_passes_its_own_pre_commit_hooks(default_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(default_repo, repo)
    env = sync(repo)
    run([str(BIN / "uv"), "run", "pre-commit", "run", "--all-files"], cwd=repo, env=env)
