"""The template renders through copier's API into a tidy tree, and bad answers write nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.rendering import PREFECT_HIGHEST, PREFECT_LOWEST, answers_of, render

# Templating that belongs to the generated files themselves: Prefect's deploy-time `{{ $VAR }}`,
# `{{ prefect.* }}` and step outputs `{{ step-id.field }}`, its trigger templates `{{ event.* }}`,
# and CI's `${{ ... }}`. (A work pool's base job template is all Prefect placeholders.)
FOREIGN_TEMPLATING = re.compile(
    # GitHub's ${{ }}, prefect.yaml's {{ $VAR }} and {{ a.b }}, an automation's {{ obj|filter }}
    r"\$\{\{.*?\}\}|\{\{ \$[A-Z_]+ \}\}|\{\{ [a-z][\w-]*\.[\w.-]+ \}\}|\{\{ [a-z_]+\|[a-z_]+ \}\}"
)
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


def ephemeral_startup_timeout(cwd: Path, home: Path) -> float:
    """What Prefect itself reads as its ephemeral server's start-up bound, run in `cwd` with
    its home in `home` (reading settings creates it: never inside a shared rendered repo)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)
    code = (
        "from prefect.settings import get_current_settings; "
        "print(get_current_settings().server.ephemeral.startup_timeout_seconds)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip())


def test_make_run_gives_the_ephemeral_server_more_than_prefects_default(
    default_repo: Path, tmp_path: Path
) -> None:
    # `make run` with no server starts an ephemeral one; on CI's busy cores it took over
    # Prefect's 20 s default to answer. The generated pyproject.toml raises it for Prefect.
    empty = tmp_path / "empty"
    empty.mkdir()
    default = ephemeral_startup_timeout(empty, tmp_path / "home")
    assert ephemeral_startup_timeout(default_repo, tmp_path / "home") >= 3 * default
    assert not (default_repo / ".prefect-home").exists()


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


SLUG_RULE = (
    "use lowercase letters, digits and dashes, starting with a letter and not ending with a dash"
)
PACKAGE_RULE = "use lowercase letters, digits and underscores, not starting with a digit"
YAML_WORDS = "YAML reads y, n, yes, no, on, off, true, false and null as a boolean or nothing"
YAML_NAME = (
    "YAML reads y, n, yes, no, on, off, true, false, null and ~ as a boolean or nothing; "
    "choose another name"
)
ENV_RULE = (
    "use lowercase letters and digits, starting with a letter, at most 20 characters "
    "(e.g. dev, staging, prod)"
)
TAG_RULE = "use lowercase letters, digits and dashes, starting with a letter"
CONTROL = "has a line break or another control character. Write one line of plain text."
EMAIL = "is not an email address. Use name@domain.tld, without spaces, quotes or line breaks."
PREFECT = (
    "is not a release this template is tested with. "
    f"Use an exact version from {PREFECT_LOWEST} to {PREFECT_HIGHEST} (e.g. '{PREFECT_HIGHEST}')."
)
# The release after the range's top, whatever the top is today (3.8.8 stays below it).
_TOP = PREFECT_HIGHEST.split(".")
ABOVE = ".".join([*_TOP[:2], str(int(_TOP[2]) + 1)])
NEVER = (
    "never fires: none of its months has a day {} (February has 29 days at most; April, June, "
    "September and November 30). Choose days that exist in those months."
)
NOT_A_LIST = "is not a list. Use a YAML list such as [dev, staging, prod]."
NOT_A_MAPPING = (
    "is not a mapping. Use task tag: limit pairs such as {shared-db: 5}, or {} for none."
)
LIMIT = "it must be a positive whole number."


def derived(name: str, what: str, value: str, rule: str, setting: str, example: str) -> str:
    return (
        f"project_name: '{name}' gives the {what} '{value}', which is not allowed: {rule}. "
        f"Rename the project, or set {setting} yourself (e.g. '{example}')."
    )


# (answers as typed, the question copier reports, its whole message). A YAML answer given as a
# string is parsed as copier parses what a user types (`[dev, on]` arrives as ['dev', True]).
REFUSED: list[tuple[dict[str, object], str, str]] = [
    # One-line free text: empty, line breaks and control characters, surrounding spaces.
    ({"project_name": "  "}, "project_name", "project_name: must not be empty."),
    *(
        ({question: value}, question, f"{question}: {json.dumps(value)} {CONTROL}")
        for question, value in (
            ("project_name", "Sales\nETL"),
            ("project_name", "Sales ETL\n"),
            ("project_name", "Sales\tETL"),
            ("project_name", "Sales\u2028ETL"),
            ("description", "One.\r\nTwo."),
            ("description", "Nul\x00"),
            ("author_name", "Team\n"),
        )
    ),
    (
        {"project_name": " Sales ETL"},
        "project_name",
        "project_name: ' Sales ETL' starts or ends with a space. Remove it.",
    ),
    ({"description": ""}, "description", "description: must not be empty."),
    *(
        (
            {"description": f"Loads {placeholder} nightly."},
            "description",
            f"description: 'Loads {placeholder} nightly.' holds '{placeholder}', a placeholder "
            "prefect deploy would replace in prefect.yaml. Write it without the double braces.",
        )
        for placeholder in ("{{ $HOME }}", "{{secrets.X}}", "{{ prefect.variables.x }}")
    ),
    *(
        ({"author_email": value}, "author_email", f"author_email: {shown} {EMAIL}")
        for value, shown in (
            ("not-an-email", "'not-an-email'"),
            ("a@b.co\n", '"a@b.co\\n"'),
            ('a"b@example.com', "'a\"b@example.com'"),
            ("a b@example.com", "'a b@example.com'"),
            ("team@localhost", "'team@localhost'"),
            ("team@-example.com", "'team@-example.com'"),
        )
    ),
    # Slugs typed, and slugs derived from the name (the message blames the name).
    (
        {"project_slug": "Sales_ETL"},
        "project_slug",
        f"project_slug: 'Sales_ETL' is not allowed: {SLUG_RULE} (e.g. 'sales-etl').",
    ),
    (
        {"project_slug": "sales-"},
        "project_slug",
        f"project_slug: 'sales-' is not allowed: {SLUG_RULE} (e.g. 'sales-etl').",
    ),
    (
        {"project_slug": "1etl"},
        "project_slug",
        f"project_slug: '1etl' is not allowed: {SLUG_RULE} (e.g. 'sales-etl').",
    ),
    (
        {"project_slug": "a" * 41},
        "project_slug",
        f"project_slug: '{'a' * 41}' is not allowed: use at most 40 characters (e.g. 'sales-etl').",
    ),
    (
        {"project_slug": "pydantic"},
        "project_slug",
        "project_slug: 'pydantic' is not allowed: it is the name of a package the repository "
        "installs (e.g. 'sales-etl').",
    ),
    (
        {"project_slug": "yes"},
        "project_slug",
        f"project_slug: 'yes' is not allowed: {YAML_WORDS} (e.g. 'sales-etl').",
    ),
    (
        {"project_name": "123 ETL"},
        "project_slug",
        derived("123 ETL", "project slug", "123-etl", SLUG_RULE, "project_slug", "sales-etl"),
    ),
    (
        {"project_name": "数据"},
        "project_slug",
        derived("数据", "project slug", "", SLUG_RULE, "project_slug", "sales-etl"),
    ),
    (
        {"project_name": "Prefect"},
        "project_slug",
        derived(
            "Prefect",
            "project slug",
            "prefect",
            "it is the name of a package the repository installs",
            "project_slug",
            "sales-etl",
        ),
    ),
    (
        {"project_name": "On"},
        "project_slug",
        derived("On", "project slug", "on", YAML_WORDS, "project_slug", "sales-etl"),
    ),
    (
        {"project_name": "Customer Lifetime Value ETL of the Whole Group"},
        "project_slug",
        derived(
            "Customer Lifetime Value ETL of the Whole Group",
            "project slug",
            "customer-lifetime-value-etl-of-the-whole-group",
            "use at most 40 characters",
            "project_slug",
            "sales-etl",
        ),
    ),
    # Package names: not an identifier, a keyword, a module the repository imports.
    (
        {"package_name": "sales-etl"},
        "package_name",
        f"package_name: 'sales-etl' is not allowed: {PACKAGE_RULE} (e.g. 'sales_etl').",
    ),
    (
        {"package_name": "class"},
        "package_name",
        "package_name: 'class' is not allowed: it is a Python keyword (e.g. 'sales_etl').",
    ),
    *(
        (
            {"package_name": module},
            "package_name",
            f"package_name: '{module}' is not allowed: it would shadow the module '{module}' "
            "that the repository imports (e.g. 'sales_etl').",
        )
        for module in ("prefect", "pydantic", "yaml", "tests", "json", "httpx", "boto3", "dask")
    ),
    (
        {"package_name": "a" * 41},
        "package_name",
        f"package_name: '{'a' * 41}' is not allowed: use at most 40 characters (e.g. 'sales_etl').",
    ),
    (
        {"project_name": "Tests"},
        "package_name",
        derived(
            "Tests",
            "package name",
            "tests",
            "it would shadow the module 'tests' that the repository imports",
            "package_name",
            "sales_etl",
        ),
    ),
    (
        {"project_slug": "json"},
        "package_name",
        "project_slug: 'json' gives the package name 'json', which is not allowed: it would "
        "shadow the module 'json' that the repository imports. Set package_name yourself "
        "(e.g. 'sales_etl').",
    ),
    # Prefect releases outside the tested range.
    *(
        ({"prefect_version": version}, "prefect_version", f"prefect_version: '{version}' {PREFECT}")
        for version in (
            "2.20.0",
            "3.0.0",
            "3.8.8",
            ABOVE,
            "4.0.0",
            "3.9",
            f"{PREFECT_HIGHEST}rc1",
            "03.9.1",
        )
    ),
    # Environments: not a list, empty, malformed items, YAML words, reserved and repeated names.
    ({"environments": "dev"}, "environments", f"environments: 'dev' {NOT_A_LIST}"),
    ({"environments": "{dev: 1}"}, "environments", f"environments: {{'dev': 1}} {NOT_A_LIST}"),
    (
        {"environments": []},
        "environments",
        "environments: the list is empty. Name at least one environment, e.g. [dev].",
    ),
    (
        {"environments": ["dev", "dev"]},
        "environments",
        "environments: 'dev' is named twice. Each name must be unique.",
    ),
    (
        {"environments": ["dev", "Prod"]},
        "environments",
        f"environments: 'Prod' is not allowed: {ENV_RULE}.",
    ),
    (
        {"environments": ["dev", "a" * 21]},
        "environments",
        f"environments: '{'a' * 21}' is not allowed: {ENV_RULE}.",
    ),
    (
        {"environments": "[dev, on]"},
        "environments",
        f"environments: True is not allowed: {YAML_NAME}.",
    ),
    (
        {"environments": "[dev, ~]"},
        "environments",
        f"environments: None is not allowed: {YAML_NAME}.",
    ),
    *(
        (
            {"environments": ["dev", word]},
            "environments",
            f"environments: '{word}' is not allowed: {YAML_NAME}.",
        )
        for word in ("on", "no", "y", "null")
    ),
    *(
        (
            {"environments": ["dev", name]},
            "environments",
            f"environments: '{name}' is not allowed: config/{name}.yaml is the repository's own "
            "(orchestration and secrets are taken); choose another name.",
        )
        for name in ("secrets", "orchestration")
    ),
    (
        {"environments": "[{dev: 1}]"},
        "environments",
        f"environments: {{'dev': 1}} is not allowed: it is not a name; {ENV_RULE}.",
    ),
    (
        {"environments": "[[dev]]"},
        "environments",
        f"environments: ['dev'] is not allowed: it is not a name; {ENV_RULE}.",
    ),
    (
        {"environments": "[dev, 2]"},
        "environments",
        f"environments: 2 is not allowed: it is not a name; {ENV_RULE}.",
    ),
    # Concurrency limits: not a mapping, malformed tags and limits, YAML words.
    (
        {"concurrency_limits": ["shared-db"]},
        "concurrency_limits",
        f"concurrency_limits: ['shared-db'] {NOT_A_MAPPING}",
    ),
    (
        {"concurrency_limits": "null"},
        "concurrency_limits",
        f"concurrency_limits: None {NOT_A_MAPPING}",
    ),
    (
        {"concurrency_limits": "{Shared DB: 5}"},
        "concurrency_limits",
        f"concurrency_limits: tag 'Shared DB' is not allowed: {TAG_RULE}.",
    ),
    (
        {"concurrency_limits": "{yes: 5}"},
        "concurrency_limits",
        f"concurrency_limits: tag True is not allowed: {YAML_NAME}.",
    ),
    (
        {"concurrency_limits": {"off": 5}},
        "concurrency_limits",
        f"concurrency_limits: tag 'off' is not allowed: {YAML_NAME}.",
    ),
    *(
        (
            {"concurrency_limits": {"shared-db": limit}},
            "concurrency_limits",
            f"concurrency_limits: the limit for 'shared-db' is {shown}; {LIMIT}",
        )
        for limit, shown in ((0, "0"), (-1, "-1"), ("five", "'five'"), (True, "True"), (2.5, "2.5"))
    ),
    (
        {"concurrency_limits": "{db: [1]}"},
        "concurrency_limits",
        f"concurrency_limits: the limit for 'db' is [1]; {LIMIT}",
    ),
    (
        {"concurrency_limits": "{db: {max: 1}}"},
        "concurrency_limits",
        f"concurrency_limits: the limit for 'db' is {{'max': 1}}; {LIMIT}",
    ),
    # Schedules that are not cron, or never fire.
    *(
        ({"schedule_cron": expr}, "schedule_cron", f"schedule_cron: '{expr}' {NEVER.format(day)}")
        for expr, day in (("0 0 31 2 *", 31), ("0 0 30 2 *", 30), ("0 0 31 4,6,9,11 *", 31))
    ),
]


@pytest.mark.parametrize(
    ("answers", "question", "message"), REFUSED, ids=[repr(a) for a, _, _ in REFUSED]
)
def test_refused_answer_names_the_question_and_writes_nothing(
    template: Path, tmp_path: Path, answers: dict[str, object], question: str, message: str
) -> None:
    destination = tmp_path / "repo"
    with pytest.raises(ValueError) as caught:
        render(template, destination, answers)
    assert str(caught.value) == f"Validation error for question '{question}': {message}"
    assert not destination.exists()


# Questions whose messages are copier's own (choices) or covered by the macros' own tables.
BAD_ANSWERS = [
    ("schedule_cron", "0 25 * * *", "schedule_cron: '0 25 * * *' is not a valid cron"),
    ("schedule_cron", "every day", "schedule_cron: 'every day' is not a valid cron"),
    ("timezone", "Mars/Olympus", "timezone: 'Mars/Olympus' is not an IANA time zone"),
    ("python_version", "3.10", "3.10"),
    ("runtime", "nomad", "nomad"),
    ("secret_backend", "plaintext-file", "plaintext-file"),
    ("ci_platform", "jenkins", "jenkins"),
    ("task_runner", "celery", "celery"),
    ("api_topology", "mesh", "mesh"),
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


# What copier refuses before any validator runs: a list or mapping for a `type: str` question
# (it casts first) and YAML it cannot load. Its messages do not name the question (copier
# 9.19); the answer is still refused and nothing is written.
REFUSED_BY_COPIER = [
    ({"project_name": ["Sales"]}, r"Could not convert \['Sales'\] to string"),
    ({"description": {"text": "x"}}, r"Could not convert \{'text': 'x'\} to string"),
    ({"environments": "[dev, "}, r"while parsing a flow"),
    ({"concurrency_limits": "{[db]: 5}"}, r"found unhashable key"),
]


@pytest.mark.parametrize(
    ("answers", "message"), REFUSED_BY_COPIER, ids=[repr(a) for a, _ in REFUSED_BY_COPIER]
)
def test_answer_copier_cannot_read_is_refused_and_writes_nothing(
    template: Path, tmp_path: Path, answers: dict[str, object], message: str
) -> None:
    destination = tmp_path / "repo"
    with pytest.raises(ValueError, match=message):
        render(template, destination, answers)
    assert not destination.exists()


def test_copy_needs_no_trust(template: Path, tmp_path: Path) -> None:
    """No _tasks and no Jinja extensions: Renovate and cautious users copy without --trust."""
    assert (render(template, tmp_path / "repo", unsafe=False) / "prefect.yaml").is_file()


# A command or path in the README that names an environment: `ENV=dev`, `PIPELINE_ENV=dev`,
# `sales-etl-dev`, `/etc/sales-etl/dev`, "dev only" comments; not /dev/stdin, /dev/shm, --no-dev.
NAMES_DEV = re.compile(r"ENV=dev\b|(?<!no)-dev\b|/dev\b(?!/(?:stdin|shm))|# dev only")


# process: its worker commands; docker: the secrets directory and volumes; kubernetes: namespaces.
@pytest.mark.parametrize("runtime", ["process", "docker", "kubernetes"])
def test_readme_examples_use_the_repositorys_first_environment(
    template: Path, tmp_path: Path, runtime: str
) -> None:
    answers = {"runtime": runtime, "secret_backend": "env", "environments": ["qa", "prod"]}
    readme = (render(template, tmp_path / "r", answers) / "README.md").read_text(encoding="utf-8")
    assert [line for line in readme.splitlines() if NAMES_DEV.search(line)] == []
    assert "make reconcile ENV=qa" in readme
