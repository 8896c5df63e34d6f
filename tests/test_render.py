"""The template renders through copier's API into a tidy tree, and bad answers write nothing."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.rendering import answers_of, render

# Templating that belongs to the generated files themselves: Prefect's deploy-time `{{ $VAR }}`,
# `{{ prefect.* }}` and step outputs `{{ step-id.field }}`, its trigger templates `{{ event.* }}`,
# and CI's `${{ ... }}`. (A work pool's base job template is all Prefect placeholders.)
FOREIGN_TEMPLATING = re.compile(r"\$\{\{.*?\}\}|\{\{ \$[A-Z_]+ \}\}|\{\{ [a-z][\w-]*\.[\w.-]+ \}\}")
PREFECT_TEMPLATE_FILES = re.compile(r"base-job-template\.json$")


def generated_files(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)


def test_defaults_render_the_documented_tree(default_repo: Path) -> None:
    answers = answers_of(default_repo)
    package = answers["package_name"]
    expected = [
        ".copier-answers.yml",
        ".pre-commit-config.yaml",
        "Makefile",
        "README.md",
        "prefect.yaml",
        "pyproject.toml",
        "config/orchestration.yaml",
        "config/secrets.yaml",
        *(f"config/{env}.yaml" for env in answers["environments"]),
        f"src/{package}/flows/etl.py",
        f"src/{package}/settings.py",
        f"src/{package}/secrets.py",
        f"src/{package}/ops/reconcile.py",
        "tests/conftest.py",
        "tests/flows/test_etl.py",
    ]
    missing = [path for path in expected if not (default_repo / path).is_file()]
    assert missing == []


def template_leftovers(repo: Path) -> list[str]:
    """Files with Jinja syntax copier should have rendered (not their own templating)."""
    leftovers = []
    for path in generated_files(repo):
        name = str(path.relative_to(repo))
        if PREFECT_TEMPLATE_FILES.search(name) or path.suffix == ".csv":
            continue
        text = FOREIGN_TEMPLATING.sub("", path.read_text(encoding="utf-8"))
        if "{{" in text or "{%" in text or "%}" in text:
            leftovers.append(name)
    return leftovers


def untidy(repo: Path) -> list[str]:
    """Blank-line litter, trailing spaces and missing final newlines, as Jinja leaves them."""
    problems = []
    for path in generated_files(repo):
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(repo))
        if path.suffix == ".csv" or not text:
            continue
        if not text.endswith("\n") or text.endswith("\n\n"):
            problems.append(f"{name}: does not end with exactly one newline")
        if "\n\n\n" in text and path.suffix != ".py":
            problems.append(f"{name}: two blank lines in a row")
        if re.search(r"[ \t]+$", text, re.MULTILINE):
            problems.append(f"{name}: trailing whitespace")
        if text.startswith("\n"):
            problems.append(f"{name}: starts with a blank line")
    return problems


def test_no_template_syntax_is_left(default_repo: Path) -> None:
    assert template_leftovers(default_repo) == []


def test_every_data_file_parses(default_repo: Path) -> None:
    parsed = 0
    for path in generated_files(default_repo):
        text = path.read_text(encoding="utf-8")
        if path.suffix in {".yml", ".yaml"}:
            list(yaml.safe_load_all(text))
        elif path.suffix == ".toml":
            tomllib.loads(text)
        elif path.suffix == ".json":
            json.loads(text)
        else:
            continue
        parsed += 1
    assert parsed >= 8


def test_files_read_as_if_written_by_hand(default_repo: Path) -> None:
    assert untidy(default_repo) == []


def test_answers_file_records_questions_not_derived_values(default_repo: Path) -> None:
    answers = answers_of(default_repo)
    assert {"runtime", "secret_backend", "ci_platform", "environments"} <= set(answers)
    assert not {"flow_name", "prod_environment"} & set(answers)
    assert answers["_src_path"]


def test_answers_change_the_output(template: Path, tmp_path: Path) -> None:
    repo = render(
        template,
        tmp_path / "repo",
        {
            "project_name": "Billing Sync",
            "environments": ["qa", "live"],
            "concurrency_limits": {"billing-api": 2, "ledger-db": 1},
            "schedule_cron": "*/15 6-18 * * mon-fri",
            "timezone": "Europe/Berlin",
        },
    )
    assert (repo / "src" / "billing_sync" / "flows" / "etl.py").is_file()
    assert sorted(p.stem for p in (repo / "config").glob("*.yaml")) == [
        "live",
        "orchestration",
        "qa",
        "secrets",
    ]
    project = yaml.safe_load((repo / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in project["deployments"] if d["entrypoint"].endswith(":etl")}
    assert list(by_name) == ["qa", "live"]
    assert [s["active"] for s in by_name["live"]["schedules"]] == [True]
    assert [s["active"] for s in by_name["qa"]["schedules"]] == [False]
    assert by_name["live"]["schedules"][0]["timezone"] == "Europe/Berlin"
    assert by_name["qa"]["work_pool"]["name"] == "billing-sync-qa"
    limits = yaml.safe_load((repo / "config" / "orchestration.yaml").read_text())["tag_limits"]
    assert limits == {"billing-api": 2, "ledger-db": 1}


BAD_ANSWERS = [
    ("project_name", "  ", "project_name: must not be empty"),
    ("project_name", 'Say "hi"', "project_name: must not contain double quotes"),
    ("project_slug", "Sales_ETL", "project_slug: 'Sales_ETL' is not allowed"),
    ("project_slug", "1etl", "project_slug: '1etl' is not allowed"),
    ("package_name", "sales-etl", "package_name: 'sales-etl' is not a valid package name"),
    ("package_name", "class", "package_name: 'class' is a Python keyword"),
    ("description", "", "description: must not be empty"),
    ("author_email", "not-an-email", "author_email: 'not-an-email' is not an email address"),
    ("prefect_version", "2.20.0", "prefect_version: '2.20.0' is not a Prefect 3 release"),
    ("environments", "dev", "environments: dev is not a list"),
    ("environments", [], "environments: the list is empty"),
    ("environments", ["dev", "dev"], "names an environment twice"),
    ("environments", ["dev", "Prod"], "environments: 'Prod' is not allowed"),
    ("concurrency_limits", ["shared-db"], "concurrency_limits: ['shared-db'] is not a mapping"),
    ("concurrency_limits", {"Shared DB": 5}, "concurrency_limits: tag 'Shared DB' is not allowed"),
    ("concurrency_limits", {"shared-db": 0}, "the limit for 'shared-db' is 0"),
    ("concurrency_limits", {"shared-db": "five"}, "the limit for 'shared-db' is five"),
    ("schedule_cron", "0 25 * * *", "schedule_cron: '0 25 * * *' is not a valid cron"),
    ("schedule_cron", "every day", "schedule_cron: 'every day' is not a valid cron"),
    ("timezone", "Mars/Olympus", "timezone: 'Mars/Olympus' is not an IANA time zone"),
    ("python_version", "3.10", "3.10"),
    ("runtime", "nomad", "nomad"),
    ("secret_backend", "plaintext-file", "plaintext-file"),
    ("ci_platform", "jenkins", "jenkins"),
    ("task_runner", "celery", "celery"),
]


@pytest.mark.parametrize(
    ("question", "value", "message"), BAD_ANSWERS, ids=[f"{q}={v!r}" for q, v, _ in BAD_ANSWERS]
)
def test_bad_answer_is_refused_with_a_clear_message_and_writes_nothing(
    template: Path, tmp_path: Path, question: str, value: object, message: str
) -> None:
    destination = tmp_path / "repo"
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        render(template, destination, {question: value})
    assert question in str(caught.value)
    assert not destination.exists()


def test_copy_needs_no_trust(template: Path, tmp_path: Path) -> None:
    """No _tasks and no Jinja extensions: Renovate and cautious users copy without --trust."""
    assert (render(template, tmp_path / "repo", unsafe=False) / "prefect.yaml").is_file()
