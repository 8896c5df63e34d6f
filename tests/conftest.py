from __future__ import annotations

from pathlib import Path

import pytest

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
