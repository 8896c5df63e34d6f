"""Every runtime x task runner, and every secret backend and CI platform, renders a tidy tree
that passes the generated repository's own ruff configuration."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from tests.rendering import BIN, ROOT, render, run
from tests.test_render import FOREIGN_TEMPLATING, PREFECT_TEMPLATE_FILES, generated_files

QUESTIONS = yaml.safe_load((ROOT / "copier.yml").read_text(encoding="utf-8"))


def choices(question: str) -> list[str]:
    offered = QUESTIONS[question]["choices"]
    return list(offered.values()) if isinstance(offered, dict) else list(offered)


COMBINATIONS = [
    {"runtime": runtime, "task_runner": runner}
    for runtime, runner in itertools.product(choices("runtime"), choices("task_runner"))
]
COMBINATIONS += [{"secret_backend": backend} for backend in choices("secret_backend")]
COMBINATIONS += [{"ci_platform": platform} for platform in choices("ci_platform")]


@pytest.mark.parametrize("answers", COMBINATIONS, ids=["-".join(c.values()) for c in COMBINATIONS])
def test_combination_is_ruff_clean_and_tidy(
    template: Path, tmp_path: Path, answers: dict[str, str]
) -> None:
    repo = render(template, tmp_path / "repo", answers)
    ruff = str(BIN / "ruff")
    run([ruff, "check", "--no-cache", "."], cwd=repo, env={})
    run([ruff, "format", "--no-cache", "--check", "."], cwd=repo, env={})
    problems = []
    for path in generated_files(repo):
        if path.suffix == ".csv":
            continue
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(repo))
        bare = "" if PREFECT_TEMPLATE_FILES.search(name) else FOREIGN_TEMPLATING.sub("", text)
        if "{%" in bare or "%}" in bare or "{{" in bare:
            problems.append(f"{name}: template syntax left")
        if text and (not text.endswith("\n") or text.endswith("\n\n")):
            problems.append(f"{name}: does not end with exactly one newline")
        if "\n\n\n" in text and path.suffix != ".py":
            problems.append(f"{name}: two blank lines in a row")
    assert problems == []
