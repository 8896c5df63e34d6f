"""`make upgrade-prefect` in a generated repository: one change moves every place Prefect is
pinned (and the template's answer, so the next `copier update` keeps it); a version the
template does not accept changes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.rendering import BIN, answers_of, git, repo_env, run
from tests.test_prefect_versions import HIGHEST, LOWEST
from tests.test_update import copy_at, update

# An integration release older than the newest that fits Prefect (>= the template's floor).
OLD_DOCKER = ("prefect-docker", "0.7.0")


def make(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = repo_env(str(answers_of(repo)["python_version"]))
    env["PATH"] = f"{BIN}:{env.get('PATH', os.environ['PATH'])}"
    return subprocess.run(
        ["make", *args, f"COPIER={BIN / 'copier'}"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def changed(repo: Path) -> set[str]:
    status = git("status", "--porcelain", "--untracked-files=all", cwd=repo)
    return {line[3:] for line in status.splitlines()}


def locked_prefect_packages(repo: Path) -> dict[str, str]:
    """The version uv.lock holds of prefect and each prefect-* package."""
    lock = tomllib.loads((repo / "uv.lock").read_text(encoding="utf-8"))
    return {
        package["name"]: package["version"]
        for package in lock["package"]
        if package["name"] == "prefect" or package["name"].startswith("prefect-")
    }


def uv_lock(repo: Path, *args: str) -> None:
    env = repo_env(str(answers_of(repo)["python_version"]))
    run([str(BIN / "uv"), "lock", "--quiet", *args], cwd=repo, env=env, timeout=300)


def pins(repo: Path) -> dict[str, str]:
    """Where the repository pins Prefect, and to what."""
    project = yaml.safe_load((repo / "prefect.yaml").read_text(encoding="utf-8"))
    found = {"prefect.yaml": str(project["prefect-version"])}
    dependencies = (repo / "pyproject.toml").read_text(encoding="utf-8")
    [pin] = [line for line in dependencies.splitlines() if '"prefect==' in line]
    found["pyproject.toml"] = pin.split("==")[1].strip('",')
    for values in sorted((repo / "deploy").glob("worker-*.yaml")):
        worker = yaml.safe_load(values.read_text(encoding="utf-8"))["worker"]
        found[values.name] = str(worker["image"]["prefectTag"]).split("-")[0]
    found[".copier-answers.yml"] = str(answers_of(repo)["prefect_version"])
    return found


@pytest.mark.slow
def test_one_change_moves_every_pin_and_a_template_update_keeps_it(
    tagged: Path, tmp_path: Path
) -> None:
    answers = {"runtime": "kubernetes", "prefect_version": LOWEST, "environments": ["dev", "prod"]}
    repo = copy_at(tagged, "HEAD", tmp_path / "repo", answers)
    # A lock a few integration releases behind, as a repository's lock is after a few months.
    uv_lock(repo, "--upgrade-package", f"{OLD_DOCKER[0]}=={OLD_DOCKER[1]}")
    assert locked_prefect_packages(repo)[OLD_DOCKER[0]] == OLD_DOCKER[1]
    git("add", "uv.lock", cwd=repo)
    git("commit", "-q", "-m", "Lock", cwd=repo)
    before = pins(repo)
    assert set(before.values()) == {LOWEST} and len(before) == 5, before

    refused = make(repo, "upgrade-prefect", "VERSION=3.0.0")
    assert refused.returncode != 0
    assert "prefect_version" in refused.stdout + refused.stderr
    assert changed(repo) == set() and pins(repo) == before
    usage = make(repo, "upgrade-prefect")
    assert usage.returncode == 2 and "VERSION=<x.y.z>" in usage.stdout

    upgraded = make(repo, "upgrade-prefect", f"VERSION={HIGHEST}")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    after = pins(repo)
    assert after == dict.fromkeys(before, HIGHEST), after
    # One change: the pins, the lock, and the README naming the version; nothing else.
    assert changed(repo) == {
        "pyproject.toml",
        "prefect.yaml",
        "deploy/worker-dev.yaml",
        "deploy/worker-prod.yaml",
        ".copier-answers.yml",
        "uv.lock",
        "README.md",
    }
    lock = (repo / "uv.lock").read_text(encoding="utf-8")
    assert f'name = "prefect"\nversion = "{HIGHEST}"' in lock
    # The integrations moved too, to what uv resolves afresh for the new Prefect: the newest
    # releases that fit it.
    fresh = shutil.copytree(repo, tmp_path / "fresh", ignore=shutil.ignore_patterns(".git"))
    (fresh / "uv.lock").unlink()
    uv_lock(fresh)
    upgraded_packages = locked_prefect_packages(repo)
    assert {"prefect-docker", "prefect-kubernetes"} <= set(upgraded_packages)
    assert upgraded_packages == locked_prefect_packages(fresh)
    assert upgraded_packages[OLD_DOCKER[0]] != OLD_DOCKER[1], upgraded_packages

    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", f"Prefect {HIGHEST}", cwd=repo)
    update(repo)  # the next template update renders from the recorded answer
    assert pins(repo) == after
