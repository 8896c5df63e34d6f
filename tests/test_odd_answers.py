"""Odd answers a team may type are accepted and give a repository that parses, lints and validates.

Each answer set is rendered (no servers, no `uv sync`), then: every YAML/TOML/JSON file parses and
reads back the strings that were typed, the README's Markdown shows them as typed, the Python is
ruff- and format-clean, no Jinja is left, and `ops validate` passes. `ops validate` runs once for
every repository in one process of this repository's own environment, which pins the generated
repositories' prefect and worker packages, with each repository's src/ on sys.path.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown_it import MarkdownIt

from tests.rendering import BIN, render
from tests.test_render import generated_files, template_leftovers

# One worker renders the answer sets once for the whole module.
pytestmark = pytest.mark.xdist_group("odd_answers")

LONG_DESCRIPTION = (
    "Loads every order, refund and subscription event from the billing system into the "
    "warehouse, then computes customer lifetime value per cohort and region, nightly."
)
# The longest names the validators accept; tests/test_combinations.py renders every choice
# with them, so each file that embeds a name is checked at its widest.
LONGEST_NAMES: dict[str, Any] = {
    "project_name": "Forty Characters Is The Longest Slug Ok",
    "project_slug": "forty-characters-is-the-longest-slug-ok1",
    "package_name": "forty_characters_is_the_longest_package1",
    "environments": ["abcdefghijklmnopqrst", "prod"],
    "concurrency_limits": {"t" + "-a" * 31: 3},
    "description": " ".join(["Long"] * 40),
}
# name -> (answers, what it exercises). Runtimes, CI platforms and secret backends vary so every
# file that carries an answer is rendered by some set; task runners stay threads because
# `ops validate` imports the flows, and this environment has neither dask nor ray.
ODD_ANSWERS: dict[str, dict[str, Any]] = {
    "yaml-and-toml-syntax": {
        "project_name": 'Sales: ETL #1 "Beta"',
        "description": 'It\'s a "test" # not a comment: yes, key: value, [list], {map}, & *star',
        "author_name": "O'Brien & Co. <data>",
        "author_email": "o'brien+etl@data.example.com",
        "runtime": "docker",
        "ci_platform": "gitlab-ci",
    },
    "unicode": {
        "project_name": "Données Clients ETL ✓",
        # Typographic dashes and quotes, as word processors type them.
        "description": (
            "Lädt Kundendaten \u2013 täglich, \u201csauber\u201d und \u2019schnell\u2019. 数据管道."
        ),
        "author_name": "Zoë Ærøskøbing",
        "ci_platform": "bitbucket-pipelines",
        "runtime": "kubernetes",
    },
    "shell-and-jinja": {
        "project_name": "ETL $(rm -rf ~) `id` {{ 7*7 }}",
        "description": "{{ 7*7 }} {% if x %}{# c #} ${HOME} $PATH \\n \\ ' \" ${{ a b }} {{ }}",
        "author_name": "Bobby'); DROP TABLE teams;--",
        "ci_platform": "azure-pipelines",
        "runtime": "ecs",
        "secret_backend": "aws-secrets-manager",
    },
    "markdown-syntax": {
        "project_name": "1. *Sales* _ETL_ [beta](x) <b>bold</b> #",
        "project_slug": "markdown-etl",
        "description": "- starts like a list | pipe ~tilde~ &amp; `code` \\ end\\",
        "author_name": "> Quote **Team**",
        "secret_backend": "prefect",
    },
    "long-names": {
        "project_name": "Customer Lifetime Value ETL",
        "description": LONG_DESCRIPTION + " " + LONG_DESCRIPTION,
        "author_name": "The Customer Analytics and Lifetime Value Data Engineering Team of Europe",
        "environments": ["development", "integrationtesting1", "production"],
        "concurrency_limits": {"customer-lifetime-value-warehouse-database-connection-pool": 3},
    },
    "longest-names": {**LONGEST_NAMES, "runtime": "kubernetes"},
    "one-environment-no-limits": {
        "project_name": "A",
        "description": "x",
        "author_name": "Q",
        "environments": ["prod"],
        "concurrency_limits": {},
    },
    "many-environments": {
        "project_name": "Billing Sync",
        "environments": ["dev", "qa", "uat", "staging", "preprod", "prod", "dr", "sandbox1"],
        "concurrency_limits": {"a": 1, "b-c": 2, "d1": 100, "warehouse": 7, "api-x": 3},
        "runtime": "docker",
    },
}


def markdown_texts(markdown: str) -> list[str]:
    """The text of each heading and paragraph as CommonMark renders it."""
    texts = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type == "inline":
            texts.append(
                "".join(
                    child.content if child.type != "softbreak" else "\n"
                    for child in token.children or []
                    if child.type in {"text", "code_inline", "softbreak", "html_inline"}
                )
            )
    return texts


def data_files(repo: Path) -> dict[str, Any]:
    """Every YAML (all documents), TOML and JSON file, parsed, by path."""
    parsed: dict[str, Any] = {}
    for path in generated_files(repo):
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(repo))
        if path.suffix in {".yml", ".yaml"}:
            parsed[name] = list(yaml.safe_load_all(text))
        elif path.suffix == ".toml":
            parsed[name] = tomllib.loads(text)
        elif path.suffix == ".json":
            parsed[name] = json.loads(text)
    return parsed


# Session scope: rendered once even when the scheduler interleaves other modules' tests.
@pytest.fixture(scope="session")
def odd_repos(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("odd")
    return {name: render(template, root / name, answers) for name, answers in ODD_ANSWERS.items()}


@pytest.mark.parametrize("name", ODD_ANSWERS)
def test_odd_answers_read_back_as_typed(odd_repos: dict[str, Path], name: str) -> None:
    repo = odd_repos[name]
    typed = ODD_ANSWERS[name]
    files = data_files(repo)
    answers = files[".copier-answers.yml"][0]
    for question, value in typed.items():
        assert answers[question] == value, question
    project_name, description = answers["project_name"], answers["description"]
    environments = answers["environments"]

    project = files["pyproject.toml"]["project"]
    assert project["description"] == description
    assert project["authors"] == [
        {"name": answers["author_name"], "email": answers["author_email"]}
    ]

    prefect_yaml = files["prefect.yaml"][0]
    assert prefect_yaml["name"] == answers["project_slug"]
    names = [d["name"] for d in prefect_yaml["deployments"]]
    assert sorted(names) == sorted(environments * 2)  # the etl and publish deployments
    for deployment in prefect_yaml["deployments"]:
        env = deployment["name"]
        assert f"env:{env}" in deployment["tags"]
        assert deployment["work_pool"]["name"] == f"{answers['project_slug']}-{env}"
    assert sorted(p for p in files if p.startswith("config/")) == sorted(
        [f"config/{env}.yaml" for env in environments]
        + ["config/orchestration.yaml", "config/secrets.yaml"]
    )
    orchestration = files["config/orchestration.yaml"][0]
    assert orchestration["tag_limits"] == {
        tag: dict.fromkeys(environments, limit)
        for tag, limit in (answers["concurrency_limits"] or {}).items()
    }
    failed = orchestration["automations"]["failed-runs"]["description"]
    assert failed == f"A flow run of {project_name} failed or crashed"

    package = repo / "src" / answers["package_name"]
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()), clean=False)
    assert " ".join((docstring or "").split()) == " ".join(f"{project_name}: {description}".split())

    readme = markdown_texts((repo / "README.md").read_text(encoding="utf-8"))
    assert readme[0] == project_name
    assert readme[1] == description
    owners = next(text for text in readme if text.startswith("Rendered by copier-prefect"))
    assert f"Owned by {answers['author_name']}\n{answers['author_email']}." in owners


# Answers that look like Jinja are text the files must hold as typed (the read-back test checks
# that copier did not evaluate them); every other set must leave no template syntax at all.
JINJA_FREE = [
    name
    for name, answers in ODD_ANSWERS.items()
    if not any(mark in str(value) for value in answers.values() for mark in ("{{", "{%", "%}"))
]


@pytest.mark.parametrize("name", JINJA_FREE)
def test_odd_answers_leave_no_template_syntax(odd_repos: dict[str, Path], name: str) -> None:
    assert template_leftovers(odd_repos[name]) == []


def test_odd_answers_are_ruff_clean(odd_repos: dict[str, Path]) -> None:
    ruff = str(BIN / "ruff")
    for repo in odd_repos.values():
        for args in (["check", "--no-cache", "."], ["format", "--no-cache", "--check", "."]):
            result = subprocess.run([ruff, *args], cwd=repo, capture_output=True, text=True)
            assert result.returncode == 0, f"{repo.name}: ruff {args[0]}\n{result.stdout}"


VALIDATE_ALL = """
import importlib, sys
from pathlib import Path
failed = 0
for root, package in zip(sys.argv[1::2], sys.argv[2::2]):
    sys.path.insert(0, str(Path(root) / "src"))
    problems = importlib.import_module(f"{package}.ops.validate").validate(Path(root))
    for problem in problems:
        print(f"{Path(root).name}: {problem}")
    failed += bool(problems)
sys.exit(failed)
"""


def test_odd_answers_pass_ops_validate(odd_repos: dict[str, Path]) -> None:
    args = []
    for repo in odd_repos.values():
        args += [
            str(repo),
            yaml.safe_load((repo / ".copier-answers.yml").read_text())["package_name"],
        ]
    result = subprocess.run(
        [sys.executable, "-c", VALIDATE_ALL, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"DO_NOT_TRACK": "1", "PATH": str(BIN), "HOME": str(Path.home())},
    )
    assert result.returncode == 0, result.stdout + result.stderr
