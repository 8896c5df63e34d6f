"""Render the template through copier's own API and run a generated repository's checks.

Tests render a snapshot of the working tree (committed to a throwaway git repository), so an
uncommitted change is tested as it stands and copier never sees a dirty template.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import copier
import yaml

from scripts import follow_prefect

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "copier-prefect tests",
    "GIT_AUTHOR_EMAIL": "tests@copier-prefect.invalid",
    "GIT_COMMITTER_NAME": "copier-prefect tests",
    "GIT_COMMITTER_EMAIL": "tests@copier-prefect.invalid",
}
# copier.yml's questions: tests derive the choices they cover from it, so a new choice is
# covered (or fails a coverage test) without editing them.
QUESTIONS = yaml.safe_load((ROOT / "copier.yml").read_text(encoding="utf-8"))
# The Prefect releases copier.yml accepts, as includes/validators.jinja states them.
PREFECT_LOWEST, PREFECT_HIGHEST = (follow_prefect.shown(v) for v in follow_prefect.accepted_range())
# What `prefect deploy` substitutes in prefect.yaml from the deploying environment: `{{ $NAME }}`.
DEPLOY_ENV_PLACEHOLDER = re.compile(r"\{\{ \$([A-Z_]+) \}\}")
# An alerts target for a deploy of an environment that requires one (the last, by default:
# ops/preflight.py) where a test does not read the alerts: nothing listens on port 9 of
# 127.0.0.1, so a firing is only an error in the server's log.
UNHEARD_ALERTS = {"ALERTS_TARGET": "http://127.0.0.1:9/alerts"}

# The ones a deploy always has: the Makefile sets IMAGE_TAG, reconcile DEPLOY_VERSION (the commit).
SET_WHEN_DEPLOYING = {"IMAGE_TAG", "DEPLOY_VERSION", "DEPLOY_REPOSITORY"}


def choices(question: str) -> list[str]:
    """The values a question offers, in copier.yml's order."""
    offered = QUESTIONS[question]["choices"]
    return list(offered.values()) if isinstance(offered, dict) else list(offered)


# pytest-cache-files-*: the temporary directory another xdist worker creates (and renames to
# .pytest_cache) in the repository's root on a fresh checkout; it can vanish mid-copy.
SNAPSHOT_IGNORES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    "pytest-cache-files-*",
    ".ruff_cache",
    "node_modules",
    "demo",
)


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_IDENTITY},
    )
    return result.stdout


def snapshot_template(destination: Path, source: Path = ROOT) -> Path:
    """Copy the template's working tree into a fresh git repository with one commit."""
    shutil.copytree(source, destination, ignore=SNAPSHOT_IGNORES)
    git("init", "-q", "-b", "main", cwd=destination)
    git("add", "-A", cwd=destination)
    git("commit", "-q", "-m", "snapshot", cwd=destination)
    return destination


def render(
    template: Path, destination: Path, answers: Mapping[str, Any] | None = None, **kwargs: Any
) -> Path:
    options = {"defaults": True, "vcs_ref": "HEAD", "quiet": True, "unsafe": True, **kwargs}
    copier.run_copy(str(template), destination, data=dict(answers or {}), **options)
    return destination


@cache
def python_for(version: str) -> str | None:
    """An interpreter for `version` that uv can use without downloading one.

    uv finds interpreters on PATH; pyenv keeps its other versions off PATH, so look there too.
    None lets uv fetch a managed Python, as it does on an ordinary machine.
    """
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([str(candidate), "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return str(candidate)
    return None


def repo_env(python_version: str) -> dict[str, str]:
    """The environment a generated repository's commands run in: our uv first on PATH."""
    env = {**os.environ, **GIT_IDENTITY, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    # PYTHONDONTWRITEBYTECODE (set on these machines and many CI images) on a venv `uv sync`
    # left without .pyc files makes every process recompile what it imports: each pytest,
    # server, worker, flow run and Ray or Dask worker spent seconds recompiling Prefect. A
    # developer's machine writes .pyc files on first import; so do the generated repositories here.
    unset = (
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PREFECT_API_URL",
        "PREFECT_HOME",
        "PYTHONDONTWRITEBYTECODE",
    )
    for name in unset:
        env.pop(name, None)
    env["DO_NOT_TRACK"] = "1"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["UV_NO_PROGRESS"] = "1"
    interpreter = python_for(python_version)
    if interpreter:
        env["UV_PYTHON"] = interpreter
    return env


def run(args: list[str], cwd: Path, env: Mapping[str, str], timeout: float = 600) -> str:
    """Run a command; on failure the assertion shows its whole output."""
    result = subprocess.run(
        args,
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{output}"
    return output


def answers_of(repo: Path) -> dict[str, Any]:
    return yaml.safe_load((repo / ".copier-answers.yml").read_text())


def sync(repo: Path) -> dict[str, str]:
    """git init, commit and uv sync a generated repository; returns its command environment."""
    env = repo_env(str(answers_of(repo)["python_version"]))
    if not (repo / ".git").exists():
        git("init", "-q", "-b", "main", cwd=repo)
        git("add", "-A", cwd=repo)
        git("commit", "-q", "-m", "Render from copier-prefect", cwd=repo)
    run([str(BIN / "uv"), "sync", "--quiet"], cwd=repo, env=env)
    return env


def commit_lock(repo: Path) -> None:
    """Commit the uv.lock `sync` wrote, as `make setup` asks: an image is built only from a
    committed tree (ops/image.py counts an untracked file as a change)."""
    git("add", "uv.lock", cwd=repo)
    git("commit", "-q", "-m", "Lock the dependencies", cwd=repo)


def run_checks(repo: Path, *, pytest: bool = True) -> dict[str, str]:
    """The generated repository's own checks: ruff check, ruff format --check, pytest.

    Returns the environment they ran in, for further commands in the same repository."""
    env = sync(repo)
    uv = str(BIN / "uv")
    run([uv, "run", "ruff", "check", "--no-cache", "."], cwd=repo, env=env)
    run([uv, "run", "ruff", "format", "--no-cache", "--check", "."], cwd=repo, env=env)
    if pytest:
        # A generated suite on Ray takes about 5 min on 2 busy cores: leave it room.
        run([uv, "run", "pytest", "-q", "-p", "no:cacheprovider"], cwd=repo, env=env, timeout=1200)
    return env


def assert_kubernetes_valid(manifests: Path) -> None:
    """kubernetes-validate --strict on a file of manifests (its bundled schemas, offline)."""
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--no-warn", str(manifests)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
