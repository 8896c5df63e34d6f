from __future__ import annotations

from pathlib import Path

import pytest

from fleet import testing as fx
from tests.history import tagged_template
from tests.rendering import render, snapshot_template


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git snapshot of the template's working tree, rendered at HEAD by every test."""
    return snapshot_template(tmp_path_factory.mktemp("template") / "copier-prefect")


@pytest.fixture(scope="session")
def default_repo(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template rendered with every default answer (do not modify it in a test)."""
    return render(template, tmp_path_factory.mktemp("default") / "sales-etl")


@pytest.fixture(scope="session")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of the history with its releases tagged and the working tree as HEAD."""
    return tagged_template(tmp_path_factory.mktemp("tagged") / "copier-prefect")


# The fleet's tiny fixture template (fleet/testing.py), built once per module that asks.
@pytest.fixture(scope="module")
def git_env(tmp_path_factory, pytestconfig):
    with pytest.MonkeyPatch.context() as mp:
        for key, value in fx.isolated_git_env(tmp_path_factory.mktemp("gitconfig")).items():
            mp.setenv(key, value)
        # Each fleet run starts `python -m copier` processes; without bytecode (uv venvs with
        # PYTHONDONTWRITEBYTECODE) each one recompiles copier for seconds. Share one cache
        # across runs and sessions, outside the source tree.
        mp.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        mp.setenv("PYTHONPYCACHEPREFIX", str(pytestconfig.cache.mkdir("fleet-pycache")))
        yield


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory, git_env) -> Path:
    return fx.build_template(tmp_path_factory.mktemp("tpl") / "template")


@pytest.fixture(scope="module")
def pristine(tiny_template, tmp_path_factory) -> Path:
    # Rendered once; every test copies it (copier renders cost ~1 s each).
    return fx.render_repo(tiny_template, tmp_path_factory.mktemp("pristine") / "repo")
