"""A Prefect bump in a generated repository is one change that the next `copier update` keeps.

Real copier, real git: a repository rendered with the kubernetes runtime (every pin: the
dependency, the answers file, each worker's image tag) at a tagged template release; a bump
commit made by the repository's own ops/prefect_version.py (what `make prefect-bump` and
Renovate's grouped request change); then a template release that edits the lines beside each
pin, and `copier update` to it. The bump must survive, the release arrive, nothing conflict.
The same update after a bump of pyproject.toml alone (what a lone Dependabot request would do)
conflicts, which is why Prefect's other pins move with it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import copier
import pytest

from fleet.repo import find_conflicts
from tests.rendering import answers_of, git, render, snapshot_template

OLD, NEW = "3.9.0", "3.9.1"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template as v90.0.0, then v90.1.0 changing the lines beside Prefect's pins."""
    template = snapshot_template(tmp_path_factory.mktemp("bump") / "template")
    git("tag", "v90.0.0", cwd=template)
    edits = {
        "includes/dependencies.jinja": ('"pydantic>=2.7"', '"pydantic>=2.8"'),
        "template/{% if runtime == 'kubernetes' %}deploy{% endif %}/"
        "{% yield env from environments %}worker-{{ env }}{% endyield %}.yaml.jinja": (
            "  image:\n",
            "  # The worker's image: its tag follows the repository's Prefect release.\n  image:\n",
        ),
    }
    for path, (old, new) in edits.items():
        file = template / path
        text = file.read_text(encoding="utf-8")
        assert old in text, path
        file.write_text(text.replace(old, new), encoding="utf-8")
    git("commit", "-q", "-am", "Release v90.1.0", cwd=template)
    git("tag", "v90.1.0", cwd=template)
    return template


def pin_module(repo: Path) -> ModuleType:
    """The repository's own ops/prefect_version.py (stdlib and PyYAML only: no install)."""
    package = answers_of(repo)["package_name"]
    path = repo / "src" / package / "ops" / "prefect_version.py"
    spec = importlib.util.spec_from_file_location("prefect_version_of_repo", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered_at_old_release(template: Path, destination: Path) -> Path:
    answers = {"runtime": "kubernetes", "environments": ["dev", "prod"], "prefect_version": OLD}
    render(template, destination, answers, vcs_ref="v90.0.0")
    git("init", "-q", "-b", "main", cwd=destination)
    git("add", "-A", cwd=destination)
    git("commit", "-q", "-m", "Render at v90.0.0", cwd=destination)
    return destination


def update_to_new_release(repo: Path) -> None:
    copier.run_update(
        repo, vcs_ref="v90.1.0", defaults=True, overwrite=True, conflict="inline", quiet=True
    )


def test_the_next_copier_update_keeps_a_prefect_bump(releases: Path, tmp_path: Path) -> None:
    repo = rendered_at_old_release(releases, tmp_path / "repo")
    changed = pin_module(repo).bump(repo, NEW, lock=False)
    assert sorted(changed) == [
        ".copier-answers.yml",
        "deploy/worker-dev.yaml",
        "deploy/worker-prod.yaml",
        "pyproject.toml",
    ]
    git("commit", "-q", "-am", f"Bump prefect to {NEW}", cwd=repo)

    update_to_new_release(repo)

    assert find_conflicts(repo) == []
    pins = pin_module(repo).pins(repo)
    assert set(pins.values()) == {NEW}, pins
    assert '"pydantic>=2.8"' in (repo / "pyproject.toml").read_text()  # the release arrived
    assert (
        "follows the repository's Prefect release" in (repo / "deploy/worker-dev.yaml").read_text()
    )
    assert answers_of(repo)["_commit"] == "v90.1.0"


def test_a_bump_of_the_dependency_alone_conflicts_on_update(releases: Path, tmp_path: Path) -> None:
    repo = rendered_at_old_release(releases, tmp_path / "repo")
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'"prefect=={OLD}"', f'"prefect=={NEW}"'))
    git("commit", "-q", "-am", f"Bump prefect to {NEW} in pyproject.toml only", cwd=repo)
    assert pin_module(repo).pins(repo)[".copier-answers.yml"] == OLD  # what the check reports

    update_to_new_release(repo)

    assert "pyproject.toml" in find_conflicts(repo)
    assert re.search(r"<<<<<<<.*\n.*prefect==", pyproject.read_text())
