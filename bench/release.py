"""A realistic next release of the template, made from the working tree, for the fleet bench.

Releases are `Release vX.Y.Z` commits (tests/history.py); the bench needs two that both have
the working tree's structure (the team-owned places included), so it tags the working tree as
OLD and then makes NEW the way a release usually changes a template: a sentence revised at the
start and the end of every README section the template owns, two Makefile target descriptions
reworded and a new target, and one option added to the pre-commit step of every CI platform.
The edits are found by pattern, not by line number, so they follow the template as it changes.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fleet import testing as fx
from tests.history import tagged_template
from tests.rendering import git

OLD, NEW = "v99.0.0", "v99.1.0"
TEAM_HEADING = "## Team notes"
_PROSE = re.compile(r"^[A-Za-z`*]")
_TARGET = re.compile(r"^([a-z-]+):[^=]*## (.+)$")
TEAM_NOTE = "\nOn-call for this pipeline: the data platform rota (team wiki).\n"
TEAM_TARGET = "\nbackfill: ## Re-run last week\n\tuv run python -m scripts.backfill\n"
TEAM_CI_STEP = "\nci-extra:: ## Smoke-test the flow\n\tuv run python -c 'print(1)'\n"
TEAM_FLOW = (
    '"""A flow the team added."""\n\nfrom prefect import flow\n\n\n'
    "@flow\ndef team() -> int:\n    return 1\n"
)
TEAM_TEST = "def test_team() -> None:\n    assert 1 + 1 == 2\n"
CI_FILES = (
    "{% if ci_platform == 'github-actions' %}.github{% endif %}/workflows/ci.yml.jinja",
    "{% if ci_platform == 'gitlab-ci' %}.gitlab-ci.yml{% endif %}.jinja",
    "{% if ci_platform == 'bitbucket-pipelines' %}bitbucket-pipelines.yml{% endif %}.jinja",
    "{% if ci_platform == 'azure-pipelines' %}azure-pipelines.yml{% endif %}.jinja",
)


def build(destination: Path) -> Path:
    """A git copy of the template with OLD (the working tree) and NEW (OLD + a release)."""
    template = tagged_template(destination)
    git("tag", OLD, cwd=template)
    changed = revise_readme(template / "template" / "README.md.jinja")
    changed += revise_makefile(template / "template" / "Makefile.jinja")
    for name in CI_FILES:
        changed += revise_ci(template / "template" / name)
    git("commit", "-q", "-am", f"Release {NEW}", cwd=template)
    git("tag", NEW, cwd=template)
    print(f"release {OLD} -> {NEW}: {changed} template lines changed", flush=True)
    return template


def revise_readme(path: Path) -> int:
    lines = path.read_text().splitlines(keepends=True)
    headings = [i for i, line in enumerate(lines) if line.startswith("## ")]
    targets: set[int] = set()
    for start, end in zip(headings, [*headings[1:], len(lines)], strict=True):
        if lines[start].startswith(TEAM_HEADING):
            break  # the team's section, and everything after it, are not the template's
        prose = [i for i in range(start + 1, end) if _revisable(lines[i])]
        targets.update(prose[:1] + prose[-1:])
    for i in targets:
        lines[i] = lines[i].rstrip("\n") + " (Revised.)\n"
    path.write_text("".join(lines))
    return len(targets)


def _revisable(line: str) -> bool:
    return bool(_PROSE.match(line)) and "{%" not in line and not line.rstrip().endswith("\\")


def revise_makefile(path: Path) -> int:
    lines = path.read_text().splitlines(keepends=True)
    described = [i for i, line in enumerate(lines) if _TARGET.match(line)]
    for i in described[1:3]:
        lines[i] = lines[i].rstrip("\n") + " (revised)\n"
    test = next(i for i, line in enumerate(lines) if line.startswith("test:"))
    lines[test:test] = [
        "typecheck: ## Compile every module (new in the release)\n",
        "\tuv run python -m compileall -q src\n",
        "\n",
    ]
    path.write_text("".join(lines))
    return 2 + 3


def revise_ci(path: Path) -> int:
    text = path.read_text()
    count = text.count("--show-diff-on-failure")
    path.write_text(text.replace("--show-diff-on-failure", "--show-diff-on-failure --color=always"))
    return count


def typical_team_edits(repo: Path) -> None:
    """What teams do in the places the README offers them; none may conflict with a release."""
    answers = yaml.safe_load((repo / ".copier-answers.yml").read_text())
    package, env = answers["package_name"], answers["environments"][0]
    readme = repo / "README.md"
    readme.write_text(readme.read_text() + TEAM_NOTE)
    team_mk = repo / "team.mk"
    team_mk.write_text(
        (team_mk.read_text() if team_mk.exists() else "") + TEAM_TARGET + TEAM_CI_STEP
    )
    (repo / "src" / package / "flows" / "team_flow.py").write_text(TEAM_FLOW)
    (repo / "tests" / "test_team.py").write_text(TEAM_TEST)
    config = repo / "config" / f"{env}.yaml"
    config.write_text(re.sub(r"batch_size: \d+", "batch_size: 75", config.read_text()))
    fx.run_git(repo, "add", "-A")
    fx.run_git(repo, "commit", "--quiet", "-m", "team: the usual edits")
