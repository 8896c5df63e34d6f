"""Every runtime x task runner, and every secret backend, CI platform and API topology,
renders a tidy tree that passes the generated repository's own ruff configuration, with the
longest names the validators accept (the default names are checked by tests/test_runtimes.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.rendering import BIN, choices, render, run
from tests.test_odd_answers import LONGEST_NAMES
from tests.test_render import template_leftovers, untidy

COMBINATIONS = [
    {"runtime": runtime, "task_runner": runner}
    for runtime, runner in itertools.product(choices("runtime"), choices("task_runner"))
]
COMBINATIONS += [{"secret_backend": backend} for backend in choices("secret_backend")]
COMBINATIONS += [{"ci_platform": platform} for platform in choices("ci_platform")]
COMBINATIONS += [{"api_topology": topology} for topology in choices("api_topology")]


@pytest.mark.parametrize("answers", COMBINATIONS, ids=["-".join(c.values()) for c in COMBINATIONS])
def test_combination_is_ruff_clean_and_tidy(
    template: Path, tmp_path: Path, answers: dict[str, str]
) -> None:
    repo = render(template, tmp_path / "repo", {**LONGEST_NAMES, **answers})
    ruff = str(BIN / "ruff")
    run([ruff, "check", "--no-cache", "."], cwd=repo, env={})
    run([ruff, "format", "--no-cache", "--check", "."], cwd=repo, env={})
    assert template_leftovers(repo) == []
    assert untidy(repo) == []
