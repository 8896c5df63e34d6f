"""The container runtimes (docker, kubernetes, ecs) and the Dask and Ray task runners.

Every runtime x task runner combination is rendered and checked offline against real oracles:
Prefect's PrefectYamlModel and its step functions (resolved with importlib), each worker's own
base job template and job configuration model (prefect-docker, prefect-kubernetes, prefect-aws),
hadolint, kubernetes-validate, and the prefect-worker Helm chart's values schema
(tests/schemas/). The slow tests install every combination, each with a secret backend and a
CI platform in rotation, and run its own ruff (on threads also its ops validate and pre-commit
hooks); its own pytest runs on six of them that cover every answer (WHOLE_SUITE).
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import re
import subprocess
import tomllib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import copier
import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.importtools import import_object
from prefect.workers.process import ProcessWorker
from prefect_aws.workers.ecs_worker import ECSWorker
from prefect_docker.worker import DockerWorker
from prefect_kubernetes.worker import KubernetesWorker

from tests.gitlab_ci_local import run_check_job
from tests.rendering import (
    BIN,
    DEPLOY_ENV_PLACEHOLDER,
    QUESTIONS,
    ROOT,
    SET_WHEN_DEPLOYING,
    assert_kubernetes_valid,
    choices,
    git,
    render,
    run,
    run_checks,
    sync,
)
from tests.test_ci_platforms import node_tools  # noqa: F401 (the fixture the GitLab job needs)

RUNTIMES = ["process", "docker", "kubernetes", "ecs"]
CONTAINER_RUNTIMES = RUNTIMES[1:]
TASK_RUNNERS = ["threads", "dask", "ray"]
WORKERS = {"docker": DockerWorker, "kubernetes": KubernetesWorker, "ecs": ECSWorker}
WORKER_PACKAGES = {
    "docker": "prefect-docker",
    "kubernetes": "prefect-kubernetes",
    "ecs": "prefect-aws",
}
RUNNERS = {
    "threads": (None, "ThreadPoolTaskRunner"),
    "dask": ("prefect-dask", "DaskTaskRunner"),
    "ray": ("prefect-ray", "RayTaskRunner"),
}
ENVIRONMENTS = ["dev", "staging", "prod"]
IMAGE = "registry.example.com/pipelines/sales-etl"
CHART_SCHEMA = ROOT / "tests" / "schemas" / "prefect-worker-chart-values.schema.json"
# Names that suggest a secret value; a *_DIR names a directory (PIPELINE_SECRETS_DIR), not a value.
SECRET_WORDS = re.compile(
    r"^(?!.*_DIR$).*(SECRET|PASSWORD|TOKEN|DSN|API_KEY|CREDENTIAL)", re.IGNORECASE
)


@pytest.fixture(scope="session")
def rendered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """render(runtime, task_runner, python_version) once per session (per xdist worker)."""
    cache: dict[tuple[str, str, str], Path] = {}

    def get(runtime: str, task_runner: str = "threads", python_version: str = "3.12") -> Path:
        key = (runtime, task_runner, python_version)
        if key not in cache:
            dest = tmp_path_factory.mktemp("-".join(key)) / "sales-etl"
            answers = {
                "runtime": runtime,
                "task_runner": task_runner,
                "python_version": python_version,
            }
            cache[key] = render(template, dest, answers)
        return cache[key]

    return get


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def deploy_time(value: Any, env: dict[str, str] | None = None) -> Any:
    """value with each `{{ $VAR }}` replaced as `prefect deploy` would, from env."""
    env = env or {}
    text = DEPLOY_ENV_PLACEHOLDER.sub(
        lambda m: env.get(m[1], f"value-of-{m[1]}"), json.dumps(value)
    )
    return json.loads(text)


def deployments(repo: Path) -> list[dict[str, Any]]:
    return load_yaml(repo / "prefect.yaml")["deployments"]


def env_of(deployment: dict[str, Any]) -> str:
    (tag,) = [t for t in deployment["tags"] if t.startswith("env:")]
    return tag.removeprefix("env:")


class NoAPI:
    """A client that fails the test if the job configuration needed the Prefect API."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"building the job configuration called the API: {name}")


def job_configuration(runtime: str, template: dict[str, Any], variables: dict[str, Any]) -> Any:
    """What the worker builds for a flow run: its own from_template_and_values and model."""
    config_class = WORKERS[runtime].job_configuration
    return asyncio.run(config_class.from_template_and_values(template, variables, client=NoAPI()))


# --- Every combination ------------------------------------------------------------------------


@pytest.mark.parametrize("task_runner", TASK_RUNNERS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_combination_has_its_files_and_dependencies(
    rendered: Callable[..., Path], runtime: str, task_runner: str
) -> None:
    repo = rendered(runtime, task_runner)
    container = runtime != "process"
    assert (repo / "Dockerfile").is_file() == container
    assert (repo / ".dockerignore").is_file() == container
    assert (repo / "deploy" / "ecs-base-job-template.json").is_file() == (runtime == "ecs")
    assert (repo / "deploy" / "flow-runs.yaml").is_file() == (runtime == "kubernetes")
    helm_values = sorted(p.name for p in (repo / "deploy").glob("worker-*.yaml"))
    want_values = [f"worker-{env}.yaml" for env in sorted(ENVIRONMENTS)]
    assert helm_values == (want_values if runtime == "kubernetes" else [])

    answers = load_yaml(repo / ".copier-answers.yml")
    assert ("image_registry" in answers) == container
    assert ("image_name" in answers) == container

    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[]", dep)[0] for dep in deps}
    assert (WORKER_PACKAGES.get(runtime) in names) == container
    assert ("prefect-docker" in names) == container  # the build and push steps
    package, runner_class = RUNNERS[task_runner]
    assert package is None or package in names
    assert not names & ({"prefect-dask", "prefect-ray"} - {package})
    task_runner_py = (repo / "src" / "sales_etl" / "task_runner.py").read_text()
    assert f"import {runner_class}" in task_runner_py
    has_runner_tests = (repo / "tests" / "test_task_runner.py").is_file()
    assert has_runner_tests == (task_runner != "threads")

    makefile = (repo / "Makefile").read_text()
    assert ("\nimage: ##" in makefile) == container
    orchestration = load_yaml(repo / "config" / "orchestration.yaml")
    assert orchestration["work_pool_type"] == runtime
    base_job_template = orchestration.get("base_job_template")
    # One per container runtime that needs more than the worker's default (every backend's).
    templates = {"ecs": "deploy/ecs-base-job-template.json"}
    templates["kubernetes"] = "deploy/kubernetes-base-job-template.json"
    assert base_job_template == templates.get(runtime)

    # The files these answers add or change read as if written by hand.
    touched = [repo / name for name in ("prefect.yaml", "Makefile", "README.md")]
    touched += [
        repo / "config" / "orchestration.yaml",
        repo / "src" / "sales_etl" / "task_runner.py",
    ]
    touched += [repo / name for name in ("Dockerfile", ".dockerignore") if container]
    touched += sorted(path for path in (repo / "deploy").rglob("*") if path.is_file())
    for path in touched:
        text = path.read_text()
        blank_run = "\n\n\n\n" if path.suffix == ".py" else "\n\n\n"
        assert blank_run not in text, f"blank-line litter in {path}"
        assert not re.search(r"[ \t]+\n", text), f"trailing whitespace in {path}"
        assert "{%" not in text and "{#" not in text, f"unrendered Jinja in {path}"


def test_process_output_has_no_container_traces(rendered: Callable[..., Path]) -> None:
    repo = rendered("process")
    makefile = (repo / "Makefile").read_text()
    assert "IMAGE" not in makefile
    assert not makefile.endswith("\n\n")
    project = load_yaml(repo / "prefect.yaml")
    assert project["build"] is None and project["push"] is None
    assert "prefect_docker" not in (repo / "prefect.yaml").read_text()


# --- prefect.yaml ------------------------------------------------------------------------------


def build_step(project: dict[str, Any]) -> dict[str, Any]:
    """prefect.yaml's image build step, found by name as ops/image.py finds it."""
    [build] = [
        step["prefect_docker.deployments.steps.build_docker_image"]
        for step in project["build"]
        if "prefect_docker.deployments.steps.build_docker_image" in step
    ]
    return build


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_prefect_yaml_fits_prefects_model_and_its_steps_exist(
    rendered: Callable[..., Path], runtime: str
) -> None:
    repo = rendered(runtime)
    project = load_yaml(repo / "prefect.yaml")
    PrefectYamlModel.model_validate(project)
    steps = [step for section in ("build", "push", "pull") for step in project[section] or []]
    for step in steps:
        ((dotted, _kwargs),) = step.items()
        if ".py:" in dotted:  # a file of the clone, loaded by its path as Prefect's run_step does
            assert callable(import_object(str(repo / dotted))), dotted
            continue
        module, _, function = dotted.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function)), dotted
    names = [next(iter(step)) for step in steps]
    if runtime == "process":
        # No checkout on the worker: each run clones the deployed commit and enters the clone.
        # Then makes the commit's locked environment, failing the run with uv's reason.
        clone, enter, environment = project["pull"]
        assert environment == {"src/sales_etl/_internal/run_environment.py:make_environment": {}}
        assert clone["prefect.deployments.steps.git_clone"] == {
            "id": "clone",
            "repository": "{{ $DEPLOY_REPOSITORY }}",
            "commit_sha": "{{ $DEPLOY_VERSION }}",
        }
        directory = enter["prefect.deployments.steps.set_working_directory"]["directory"]
        assert directory == "{{ clone.directory }}"
        for deployment in deployments(repo):
            env = deployment["work_pool"]["job_variables"]["env"]
            assert env["PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES"] == "true"
            assert env["UV_FROZEN"] == "1"
        return
    assert "prefect.deployments.steps.git_clone" not in names
    # Kubernetes: prefect deploy by hand first checks the team's job variables (ops/hand_deploy.py).
    guard = ["prefect.deployments.steps.run_shell_script"] if runtime == "kubernetes" else []
    assert names == [
        *guard,
        "prefect_docker.deployments.steps.build_docker_image",
        "prefect_docker.deployments.steps.push_docker_image",
        "prefect.deployments.steps.set_working_directory",
    ]
    build = build_step(project)
    assert (build["image_name"], build["tag"], build["dockerfile"]) == (
        IMAGE,
        "{{ $IMAGE_TAG }}",
        "Dockerfile",
    )
    push = project["push"][0]["prefect_docker.deployments.steps.push_docker_image"]
    assert push["image_name"] == "{{ " + build["id"] + ".image_name }}"
    assert push["tag"] == "{{ " + build["id"] + ".tag }}"
    pull_dir = project["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    workdirs = re.findall(r"^WORKDIR (\S+)$", (repo / "Dockerfile").read_text(), re.MULTILINE)
    assert pull_dir == workdirs[-1]
    for deployment in deployments(repo):
        module = deployment["entrypoint"].partition(":")[0]
        # The image installs the package from src/: the entrypoint's module must be in it.
        assert (repo / "src" / f"{module.replace('.', '/')}.py").is_file(), module


@pytest.mark.parametrize("runtime", CONTAINER_RUNTIMES)
def test_the_image_is_built_for_linux_amd64_and_docker_runs_ask_for_it(
    rendered: Callable[..., Path], runtime: str
) -> None:
    """Whatever the deploying machine's architecture (ops/image.py builds for this platform)."""
    repo = rendered(runtime)
    assert build_step(load_yaml(repo / "prefect.yaml"))["platform"] == "linux/amd64"
    if runtime == "docker":
        for deployment in deployments(repo):
            variables = deployment["work_pool"]["job_variables"]
            assert variables["container_create_kwargs"] == {"platform": "linux/amd64"}


@pytest.mark.parametrize("task_runner", ["dask", "ray"])
@pytest.mark.parametrize("runtime", ["kubernetes", "ecs"])
def test_flow_runs_have_cpus_to_fan_out_on(
    rendered: Callable[..., Path], runtime: str, task_runner: str
) -> None:
    """A local Dask or Ray counts the container's CPU quota: one CPU would run one task."""
    for deployment in deployments(rendered(runtime, task_runner)):
        variables = deployment["work_pool"]["job_variables"]
        kubernetes = runtime == "kubernetes"
        cpus = float(variables["cpu_limit"]) if kubernetes else variables["cpu"] / 1024
        assert cpus >= 2, deployment["name"]


@pytest.mark.parametrize("runtime", CONTAINER_RUNTIMES)
def test_job_variables_build_the_workers_job_configuration(
    rendered: Callable[..., Path], runtime: str
) -> None:
    repo = rendered(runtime)
    worker = WORKERS[runtime]
    default = worker.get_default_base_job_template()
    templates = [default]
    orchestration = load_yaml(repo / "config" / "orchestration.yaml")
    if orchestration.get("base_job_template"):
        templates.append(json.loads((repo / orchestration["base_job_template"]).read_text()))
    seen_envs = set()
    for deployment in deployments(repo):
        env = env_of(deployment)
        seen_envs.add(env)
        assert deployment["work_pool"]["name"] == f"sales-etl-{env}"
        raw = deployment["work_pool"]["job_variables"]
        assert set(raw) <= set(default["variables"]["properties"]), runtime
        assert raw["env"]["PIPELINE_ENV"] == env
        assert not [k for k in raw["env"] if SECRET_WORDS.search(k)]
        assert "prefect.blocks" not in json.dumps(raw)
        assert raw["image"] == IMAGE + ":{{ $IMAGE_TAG }}"
        variables = deploy_time(raw, {"IMAGE_TAG": "0123456789ab"})
        for template in templates:
            config = job_configuration(runtime, template, variables)
            check_configuration(runtime, config, env)
    assert seen_envs == set(ENVIRONMENTS)


def check_configuration(runtime: str, config: Any, env: str) -> None:
    image = f"{IMAGE}:0123456789ab"
    if runtime == "docker":
        assert config.image == image
        assert config.env["PIPELINE_ENV"] == env
        assert config.mem_limit
    elif runtime == "kubernetes":
        pod = config.job_manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == image
        assert (
            config.namespace == config.job_manifest["metadata"]["namespace"] == f"sales-etl-{env}"
        )
        assert pod["serviceAccountName"] == "sales-etl-flow-run"
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    else:
        assert config.task_definition["containerDefinitions"][0]["image"] == image
        assert config.task_run_request["cluster"] == "value-of-ECS_CLUSTER"
        assert config.task_run_request["overrides"]["taskRoleArn"] == "value-of-ECS_TASK_ROLE_ARN"
        assert config.task_definition["executionRoleArn"] == "value-of-ECS_EXECUTION_ROLE_ARN"
        assert config.vpc_id == "value-of-ECS_VPC_ID"
        assert config.network_configuration["assignPublicIp"] == "DISABLED"
        assert len(config.network_configuration["subnets"]) == 2
        assert config.configure_cloudwatch_logs is True
        assert config.cloudwatch_logs_options["awslogs-group"] == f"/prefect/sales-etl/{env}"
        # The API credential reaches the task from Secrets Manager, not containerOverrides.
        assert config.prefect_api_key_secret_arn == "value-of-ECS_PREFECT_API_KEY_SECRET_ARN"
        assert (
            config.prefect_api_auth_string_secret_arn
            == "value-of-ECS_PREFECT_API_AUTH_STRING_SECRET_ARN"
        )


def test_the_job_configuration_oracle_rejects_a_broken_variable(
    rendered: Callable[..., Path],
) -> None:
    """ECS refuses a custom network without a VPC: the oracle above can fail."""
    repo = rendered("ecs")
    variables = deploy_time(deployments(repo)[0]["work_pool"]["job_variables"])
    del variables["vpc_id"]
    with pytest.raises(ValueError, match="vpc_id"):
        job_configuration("ecs", ECSWorker.get_default_base_job_template(), variables)


# --- Dockerfile ------------------------------------------------------------------------------


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("python_version", ["3.11", "3.12", "3.13"])
def test_dockerfile_is_hadolint_clean_and_follows_the_lock(
    rendered: Callable[..., Path], python_version: str, tmp_path: Path
) -> None:
    repo = rendered("docker", "threads", python_version)
    dockerfile = (repo / "Dockerfile").read_text()
    result = hadolint(repo / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ARG PYTHON_IMAGE=python:{python_version}-slim-bookworm\n" in dockerfile
    assert dockerfile.count("FROM ${PYTHON_IMAGE}") == 2  # build and run stages, one base
    # Dependencies from the lock alone, the code as later layers: a code-only change ships only
    # those (bench/docker_bench.py shows it).
    assert "RUN uv sync --locked --no-dev --no-install-project\n" in dockerfile
    assert "RUN uv sync --locked --no-dev\n" not in dockerfile
    assert "COPY --from=build /app/.venv /app/.venv\nCOPY src/ src/\n" in dockerfile
    assert "PYTHONPATH=/app/src" in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    # No build-time secrets: the base image and the commit (which each flow run records).
    assert "ARG" not in dockerfile.replace("ARG PYTHON_IMAGE", "").replace(
        'ARG PIPELINE_COMMIT=""', ""
    )
    assert "ENV PIPELINE_COMMIT=${PIPELINE_COMMIT}\n" in dockerfile

    # The oracle can fail: an unpinned base image and unpinned apt packages.
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        dockerfile.replace(f"python:{python_version}-slim-bookworm", "python")
        + "RUN apt-get update && apt-get install -y curl\n"
    )
    assert hadolint(broken).returncode != 0


def test_dockerignore_admits_exactly_what_the_dockerfile_copies(
    rendered: Callable[..., Path],
) -> None:
    repo = rendered("docker")
    patterns = [
        line
        for line in (repo / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # deny by default: .env, .git, .venv never reach the context
    admitted = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for line in (repo / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied |= {src.rstrip("/") for src in line.split()[1:-1]}
    assert copied == admitted
    for source in copied:
        assert (repo / source).exists() or source == "uv.lock", source  # uv.lock: make setup


def test_makefile_builds_the_image_of_the_commit(rendered: Callable[..., Path]) -> None:
    repo = rendered("docker")
    env = {"PATH": "/usr/bin:/bin", "IMAGE_TAG": "0123456789ab"}
    dry = subprocess.run(
        ["make", "-n", "image"], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    assert dry.stdout.strip() == f"docker build --platform linux/amd64 --tag {IMAGE}:0123456789ab ."
    helped = subprocess.run(["make", "help"], cwd=repo, capture_output=True, text=True, check=True)
    assert "make image" in helped.stdout
    process = subprocess.run(
        ["make", "-n", "image"], cwd=rendered("process"), capture_output=True, text=True
    )
    assert process.returncode != 0


@pytest.mark.parametrize("runtime", CONTAINER_RUNTIMES)
def test_deploy_logs_in_to_the_registry_before_it_pushes(
    rendered: Callable[..., Path], runtime: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", "IMAGE_TAG": "0123456789ab"}
    dry = subprocess.run(
        ["make", "-n", "deploy", "ENV=dev"],
        cwd=rendered(runtime),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    commands = dry.stdout.splitlines()
    login = commands.index(f"uv run python -m sales_etl.ops.registry_login {IMAGE} --env dev")
    reconcile = commands.index(
        "uv run python -m sales_etl.ops.promote --env dev --default-branch main"
    )
    assert login < reconcile
    process = subprocess.run(
        ["make", "-n", "deploy"], cwd=rendered("process"), capture_output=True, text=True
    )
    assert "registry_login" not in process.stdout


# --- Kubernetes ------------------------------------------------------------------------------


def check_jsonschema(schema: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--schemafile", str(schema), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )


def merged_values(base: Any, over: Any) -> Any:
    """Helm's merge of a later values file over an earlier one: maps deeply, the rest replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{key: merged_values(base.get(key), v) for key, v in over.items()}}
    return over


def helm_values(repo: Path, env: str) -> dict[str, Any]:
    """The values Helm gets for an environment's worker: the template's, then the team's."""
    template_values = load_yaml(repo / "deploy" / f"worker-{env}.yaml")
    return merged_values(
        template_values, load_yaml(repo / "deploy" / "team" / f"worker-{env}.yaml")
    )


def test_helm_values_pass_the_chart_schema_and_poll_their_pool(
    rendered: Callable[..., Path], tmp_path: Path
) -> None:
    repo = rendered("kubernetes")
    files = sorted((repo / "deploy").glob("worker-*.yaml"))
    # The team's values, given to Helm after the template's (deploy/team/ is _skip_if_exists).
    team_files = sorted((repo / "deploy" / "team").glob("worker-*.yaml"))
    assert [p.name for p in team_files] == [p.name for p in files]
    assert "deploy/team/*.yaml" in QUESTIONS["_skip_if_exists"]
    result = check_jsonschema(CHART_SCHEMA, *files, *team_files)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in files:
        env = path.stem.removeprefix("worker-")
        team = load_yaml(repo / "deploy" / "team" / path.name)
        # What teams tune lives only in their file: an update never conflicts on it.
        assert set(team["worker"]) == {"selfHostedServerApiConfig", "resources"}
        values = helm_values(repo, env)
        merged = tmp_path / f"merged-{env}.yaml"
        merged.write_text(yaml.safe_dump(values))
        assert check_jsonschema(CHART_SCHEMA, merged).returncode == 0
        assert values["worker"]["selfHostedServerApiConfig"]["apiUrl"].startswith("http")
        assert "apiUrl" not in load_yaml(path)["worker"]["selfHostedServerApiConfig"]
        assert values["worker"]["config"] == {"workPool": f"sales-etl-{env}", "type": "kubernetes"}
        default = QUESTIONS["prefect_version"]["default"]
        assert values["worker"]["image"]["prefectTag"] == f"{default}-python3.12-kubernetes"
        # Basic auth comes from an existing secret, never from a value in the file.
        basic_auth = values["worker"]["selfHostedServerApiConfig"]["basicAuth"]
        assert basic_auth == {"enabled": False, "existingSecret": "sales-etl-prefect-auth"}
        # The namespace's registry login, as the flow-run service account's.
        assert values["worker"]["image"]["pullSecrets"] == [f"sales-etl-{env}-registry"]

    # The oracle can fail: a misspelt key is rejected.
    typo = load_yaml(files[0])
    typo["worker"]["config"]["workpool"] = typo["worker"]["config"].pop("workPool")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(typo))
    assert check_jsonschema(CHART_SCHEMA, tmp_path / "typo.yaml").returncode != 0


def test_flow_run_manifests_are_valid_and_match_the_job_variables(
    rendered: Callable[..., Path], tmp_path: Path
) -> None:
    repo = rendered("kubernetes")
    manifests = repo / "deploy" / "flow-runs.yaml"
    assert_kubernetes_valid(manifests)
    documents = [d for d in yaml.safe_load_all(manifests.read_text()) if d]
    accounts = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in documents
        if d["kind"] == "ServiceAccount"
    }
    namespaces = {d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"}
    for deployment in deployments(repo):
        variables = deployment["work_pool"]["job_variables"]
        assert variables["namespace"] in namespaces
        assert (variables["namespace"], variables["service_account_name"]) in accounts
    assert all(
        d.get("automountServiceAccountToken") is False
        for d in documents
        if d["kind"] == "ServiceAccount"
    )
    # Each namespace enforces Pod Security "restricted" (tests/test_kubernetes_pods.py: the
    # pods pass it), and its flow runs pull with its own registry Secret, which the README
    # lists among what a team creates.
    readme = (repo / "README.md").read_text()
    for document in documents:
        if document["kind"] == "Namespace":
            labels = document["metadata"]["labels"]
            assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        if document["kind"] == "ServiceAccount":
            secret = f"{document['metadata']['namespace']}-registry"
            assert document["imagePullSecrets"] == [{"name": secret}]
    assert "`sales-etl-<env>-registry`, a `kubernetes.io/dockerconfigjson` Secret" in readme
    assert "kubectl create secret docker-registry sales-etl-dev-registry" in readme
    # What the team sets on those accounts (annotations: the cloud identity) and on the
    # namespaces (labels and annotations of its own) is in its own file, valid, naming the same
    # objects, and applied beside the template's by the README.
    team_accounts = repo / "deploy" / "team" / "flow-run-accounts.yaml"
    assert_kubernetes_valid(team_accounts)
    team_documents = [d for d in yaml.safe_load_all(team_accounts.read_text()) if d]
    team_of = {kind: [d for d in team_documents if d["kind"] == kind] for kind in KINDS}
    assert sum(map(len, team_of.values())) == len(team_documents)
    team_accounts_named = {
        (d["metadata"]["namespace"], d["metadata"]["name"]) for d in team_of["ServiceAccount"]
    }
    assert team_accounts_named == accounts
    assert {d["metadata"]["name"] for d in team_of["Namespace"]} == namespaces
    assert all(d["metadata"]["annotations"] == {} for d in team_documents)
    assert all(d["metadata"]["labels"] == {} for d in team_of["Namespace"])
    assert not any("annotations" in d["metadata"] for d in documents)
    # The template's namespace labels are the ones the team file says are the template's:
    # the team's apply conflicts with them rather than silently taking them over.
    template_labels = {
        k for d in documents if d["kind"] == "Namespace" for k in d["metadata"]["labels"]
    }
    owned = ("app.kubernetes.io/part-of", "pod-security.kubernetes.io/")
    assert template_labels and all(key.startswith(owned) for key in template_labels)
    assert all(prefix.rstrip("/") in team_accounts.read_text() for prefix in owned)
    assert "--field-manager=sales-etl-team -f deploy/team/flow-run-accounts.yaml" in readme
    # A team's own namespace label and annotation pass the same schema check.
    labelled = tmp_path / "labelled.yaml"
    labelled.write_text(
        team_accounts.read_text().replace(
            "  labels: {}\n  annotations: {}",
            "  labels:\n    team.example.com/tier: gold\n"
            "  annotations:\n    team.example.com/owner: data-platform",
        )
    )
    assert labelled.read_text().count("tier: gold") == len(namespaces)
    assert_kubernetes_valid(labelled)

    # The oracle can fail: an unknown field is rejected under --strict.
    broken = tmp_path / "broken.yaml"
    broken.write_text(manifests.read_text().replace("automountServiceAccountToken", "automount"))
    rejected = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--no-warn", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rejected.returncode != 0


# --- Results ---------------------------------------------------------------------------------

# What a runtime whose flow runs take their disk with them declares as each environment's
# result storage, by (runtime, secret backend): the block type (on Kubernetes the backend's
# cloud, S3 elsewhere), its package and the variables reconcile fills it from.
RESULT_STORAGE = {
    ("ecs", "env"): ("s3-bucket", "prefect-aws", {"RESULTS_BUCKET"}),
    ("kubernetes", "env"): ("s3-bucket", "prefect-aws", {"RESULTS_BUCKET"}),
    ("kubernetes", "vault"): ("s3-bucket", "prefect-aws", {"RESULTS_BUCKET"}),
    ("kubernetes", "gcp-secret-manager"): (
        "gcs-bucket",
        "prefect-gcp",
        {"RESULTS_BUCKET", "GOOGLE_CLOUD_PROJECT"},
    ),
    ("kubernetes", "azure-key-vault"): (
        "azure-blob-storage-container",
        "prefect-azure",
        {"RESULTS_CONTAINER", "RESULTS_ACCOUNT_URL"},
    ),
}
# Each block type's field naming the environment's folder.
FOLDER_FIELD = {
    "s3-bucket": "bucket_folder",
    "gcs-bucket": "bucket_folder",
    "azure-blob-storage-container": "base_folder",
}


def variables_in(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(variables_in(v) for v in value.values()))
    return set(re.findall(r"\$\{(\w+)\}", value)) if isinstance(value, str) else set()


@pytest.mark.parametrize(("runtime", "backend"), list(RESULT_STORAGE))
def test_kubernetes_and_ecs_environments_keep_their_results_in_a_bucket_of_their_own(
    rendered: Callable[..., Path], template: Path, tmp_path: Path, runtime: str, backend: str
) -> None:
    """A pod's emptyDir and a task's disk go with the run: without a declared block the cache
    would never hit, so each environment declares one, in a folder of its own."""
    if backend == "env":
        repo = rendered(runtime)
    else:
        answers = {"runtime": runtime, "secret_backend": backend}
        repo = render(template, tmp_path / "sales-etl", answers)
    block_type, package, variables = RESULT_STORAGE[(runtime, backend)]
    folders = set()
    for env in ENVIRONMENTS:
        declared = load_yaml(repo / "config" / f"{env}.yaml")["result_storage"]
        assert declared["block_type"] == block_type
        assert variables_in(declared) == variables
        folders.add(declared[FOLDER_FIELD[block_type]])
    assert folders == set(ENVIRONMENTS)
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    assert package in {re.split(r"[<>=\[]", dep)[0] for dep in deps}
    # What a team must create is in the README, and CI hands reconcile the variables.
    readme = (repo / "README.md").read_text()
    deploy_job = (repo / ".github" / "workflows" / "deploy.yml").read_text()
    for name in variables:
        assert f"`{name}`" in readme
        assert f"{name}: ${{{{ vars.{name} }}}}" in deploy_job
    words = " ".join(readme.split())
    access = {"prefect-azure": "Storage Blob Data Contributor", "prefect-gcp": "storage.objectUser"}
    assert access.get(package, "s3:PutObject") in words
    if block_type == "s3-bucket":
        # prefect-aws is this interpreter's too: the declaration makes a real block.
        filled = {
            k: (v.replace("${RESULTS_BUCKET}", "results") if isinstance(v, str) else v)
            for k, v in declared.items()
            if k != "block_type"
        }
        block = importlib.import_module("prefect_aws.s3").S3Bucket(**filled)
        assert (block.bucket_name, block.bucket_folder) == ("results", ENVIRONMENTS[-1])


@pytest.mark.parametrize("runtime", ["process", "docker"])
def test_process_and_docker_environments_keep_their_results_where_they_run(
    rendered: Callable[..., Path], runtime: str
) -> None:
    """The worker's home or the environment's Docker volume keeps them: nothing to declare."""
    repo = rendered(runtime)
    for env in ENVIRONMENTS:
        config = load_yaml(repo / "config" / f"{env}.yaml")
        assert "result_storage" not in config
        assert "# result_storage:" in (repo / "config" / f"{env}.yaml").read_text()


KINDS = ("Namespace", "ServiceAccount")


# --- ECS -------------------------------------------------------------------------------------


def test_ecs_base_job_template_is_the_workers_with_our_defaults(
    rendered: Callable[..., Path],
) -> None:
    repo = rendered("ecs")
    ours = json.loads((repo / "deploy" / "ecs-base-job-template.json").read_text())
    default = ECSWorker.get_default_base_job_template()
    # Fails when prefect-aws changes its template: refresh the file from the new default.
    assert ours["job_configuration"] == default["job_configuration"]
    assert set(ours["variables"]["properties"]) == set(default["variables"]["properties"])
    changed = {
        name
        for name, spec in ours["variables"]["properties"].items()
        if spec != default["variables"]["properties"][name]
    }
    assert changed == {"configure_cloudwatch_logs", "match_latest_revision_in_family"}
    assert ours["variables"]["properties"]["configure_cloudwatch_logs"]["default"] is True
    assert ours["variables"]["properties"]["match_latest_revision_in_family"]["default"] is True
    # What the server checks when `prefect work-pool create --base-job-template` sends it; the
    # check can fail: a placeholder without its variable is refused.
    WorkPoolCreate(name="sales-etl-dev", type="ecs", base_job_template=ours)
    ours["job_configuration"]["cluster"] = "{{ clustre }}"
    with pytest.raises(ValueError, match="must be present"):
        WorkPoolCreate(name="sales-etl-dev", type="ecs", base_job_template=ours)


def test_ecs_deploy_reads_the_environments_aws_identifiers(rendered: Callable[..., Path]) -> None:
    repo = rendered("ecs")
    readme = (repo / "README.md").read_text()
    text = (repo / "prefect.yaml").read_text()
    for name in sorted(set(DEPLOY_ENV_PLACEHOLDER.findall(text)) - SET_WHEN_DEPLOYING):
        assert f"| `{name}` |" in readme, f"{name} is not documented in README.md"
    assert "arn:aws" not in text and "subnet-" not in text  # no account in the repository


# --- Questions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "name"),
    [
        ("ghcr.io/acme", "sales-etl"),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "team/sales.etl__v2"),
        ("localhost:5000", "sales_etl"),
        ("registry.example.com:8443/team/sub_team", "a"),
    ],
)
def test_valid_image_answers_name_the_image(
    template: Path, tmp_path: Path, registry: str, name: str
) -> None:
    answers = {"runtime": "docker", "image_registry": registry, "image_name": name}
    repo = render(template, tmp_path / "repo", answers)
    variables = deployments(repo)[0]["work_pool"]["job_variables"]
    assert variables["image"] == f"{registry}/{name}:{{{{ $IMAGE_TAG }}}}"


@pytest.mark.parametrize(
    ("question", "value"),
    [
        ("image_registry", "acme"),  # no host: would silently mean Docker Hub
        ("image_registry", "ghcr.io/Acme"),
        ("image_registry", "ghcr.io/acme/"),
        ("image_registry", "https://ghcr.io/acme"),
        ("image_registry", "ghcr.io/acme:latest"),
        ("image_name", "Sales-ETL"),
        ("image_name", "sales-etl:1.0"),
        ("image_name", "-sales"),
        ("image_name", ""),
    ],
)
def test_invalid_image_answers_are_refused(
    template: Path, tmp_path: Path, question: str, value: str
) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"question '{question}': {question}: '{value}' is not a")
    ):
        copier.run_copy(
            str(template),
            tmp_path / "repo",
            data={"runtime": "docker", question: value},
            defaults=True,
            vcs_ref="HEAD",
            quiet=True,
            unsafe=True,
        )


PROD_REGISTRY = "127.0.0.1:5001/prod"


@pytest.mark.parametrize("runtime", ["docker", "kubernetes", "ecs"])
def test_an_environment_with_its_own_registry_names_it_and_ci_maps_the_copy_s_logins(
    template: Path, tmp_path: Path, runtime: str
) -> None:
    answers = {
        "runtime": runtime,
        "environments": ["dev", "staging", "prod"],
        "environment_registries": {"prod": PROD_REGISTRY},
    }
    repo = render(template, tmp_path / "repo", answers)
    images = {
        spec["name"]: spec["work_pool"]["job_variables"]["image"] for spec in deployments(repo)
    }
    tag = ":{{ $IMAGE_TAG }}"
    default = QUESTIONS["image_registry"]["default"]
    assert images == {
        "dev": f"{default}/sales-etl{tag}",
        "staging": f"{default}/sales-etl{tag}",
        "prod": f"{PROD_REGISTRY}/sales-etl{tag}",
    }
    # Built in the first environment's registry only.
    project = yaml.safe_load((repo / "prefect.yaml").read_text())
    build = build_step(project)
    assert build["image_name"] == f"{default}/sales-etl"
    workflow = (repo / ".github" / "workflows" / "deploy.yml").read_text()
    for name in ("SOURCE_REGISTRY_USERNAME", "SOURCE_REGISTRY_PASSWORD"):
        assert f"{name}: ${{{{ secrets.{name} }}}}" in workflow
    assert "#### Registries per environment" in (repo / "README.md").read_text()


def test_one_registry_maps_no_source_login(template: Path, tmp_path: Path) -> None:
    repo = render(template, tmp_path / "repo", {"runtime": "docker"})
    assert "SOURCE_REGISTRY" not in (repo / ".github" / "workflows" / "deploy.yml").read_text()
    assert "environment_registries" in (repo / "README.md").read_text()  # how to answer it


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("[prod]", "environment_registries: '['prod']' is not a mapping."),
        ("{qa: ghcr.io/acme}", "environment_registries: 'qa' is not one of the environments"),
        (
            "{prod: Acme}",
            "environment_registries: prod's registry 'Acme' is not a registry reference.",
        ),
        (
            "{prod: 'ghcr.io/acme:latest'}",
            "environment_registries: prod's registry 'ghcr.io/acme:latest' is not a registry",
        ),
    ],
)
def test_invalid_environment_registries_are_refused(
    template: Path, tmp_path: Path, value: str, error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        copier.run_copy(
            str(template),
            tmp_path / "repo",
            data={"runtime": "docker", "environment_registries": yaml.safe_load(value)},
            defaults=True,
            vcs_ref="HEAD",
            quiet=True,
            unsafe=True,
        )


# --- Slow: every runtime x task runner, installed and checked ------------------------------

SECRET_BACKENDS = choices("secret_backend")
CI_PLATFORMS = choices("ci_platform")


def check_matrix() -> list[dict[str, str]]:
    """Every runtime x task runner, each with a secret backend and a CI platform in rotation, so
    every backend and platform is installed and checked too, with different runners (their
    tests meet Dask's and Ray's worker processes). The first entry is the default answers; one
    entry of the whole suite has ODD_ORCHESTRATION's answers too."""
    combinations = itertools.product(RUNTIMES, TASK_RUNNERS)
    return [
        {
            "runtime": runtime,
            "task_runner": runner,
            "secret_backend": SECRET_BACKENDS[i % len(SECRET_BACKENDS)],
            "ci_platform": CI_PLATFORMS[i % len(CI_PLATFORMS)],
            **(ODD_ORCHESTRATION if (runtime, runner) == ODD_ORCHESTRATION_ENTRY else {}),
        }
        for i, (runtime, runner) in enumerate(combinations)
    ]


# Environments whose promotion order is not their order by name, and no tag limits: the
# generated suite once took the first environment by name for the one its secret fixtures
# write (so the Prefect backend's preflight test failed on [qa, prod]) and assumed a declared
# tag limit (StopIteration with {}). Given to the whole-suite entry that has the Prefect backend.
ODD_ORCHESTRATION = {"environments": "[qa, prod]", "concurrency_limits": "{}"}
ODD_ORCHESTRATION_ENTRY = ("kubernetes", "dask")


# The generated suite (its Prefect test server, real flow runs on the task runner with the
# secret backend) runs on these six entries: every runtime, secret backend and CI platform, and
# every task runner twice. The other six runtime x task runner pairs are installed and linted
# (on threads also pre-committed and validated): what a pair changes beyond its parts' own code,
# its dependency set and its flow runs' CPUs and memory, is checked by the install and offline
# above. Running the same flow tests on them again took a fifth of the whole suite's time.
WHOLE_SUITE = {
    ("process", "threads"),
    ("process", "ray"),
    ("docker", "dask"),
    ("docker", "ray"),
    ("kubernetes", "dask"),
    ("ecs", "threads"),
}

# Where the whole suite runs in two sessions, as a pull request's check (`-m "not slow"`) and
# then the default branch's rest: the push check must never start the local cluster (the flow
# tests start it on their first run), the slow flow tests must. One entry per cluster runner.
SPLIT_PUSH_CHECK = {("process", "ray"): "local_ray", ("kubernetes", "dask"): "local_dask_cluster"}

# Flows `make new-flow` adds to the default answers' render before its checks: one scheduled,
# one started by the other's runs.
ADDED_FLOWS = {
    "orders_cleanup": ["--schedule", "0 3 * * *"],
    "daily_report": ["--after", "sales-etl-orders-cleanup"],
}

# pre-commit and `ops validate` once per runtime and per CI platform (the entries on threads):
# they read only what those answers change, and every combination's prefect.yaml and CI files
# are also validated offline above.
PRECOMMIT_RUNNER = "threads"

# `ops validate`, then the work pools reconcile would create in dev, in one interpreter.
VALIDATE_AND_READ_POOLS = """
import json, sys
from pathlib import Path
from sales_etl.ops.state import read_state
from sales_etl.ops.validate import validate

problems = validate(Path.cwd())
if problems:
    sys.exit("\\n".join(problems))
print(json.dumps(read_state("dev", Path.cwd()).work_pools))
"""


def test_the_check_matrix_covers_every_choice() -> None:
    assert choices("runtime") == RUNTIMES
    assert choices("task_runner") == TASK_RUNNERS
    matrix = check_matrix()
    assert {(a["runtime"], a["task_runner"]) for a in matrix} == set(
        itertools.product(RUNTIMES, TASK_RUNNERS)
    )
    assert {a["secret_backend"] for a in matrix} == set(SECRET_BACKENDS)
    assert {a["ci_platform"] for a in matrix} == set(CI_PLATFORMS)
    defaults = {name: QUESTIONS[name]["default"] for name in matrix[0]}
    assert matrix[0] == defaults
    with_precommit = [a for a in matrix if a["task_runner"] == PRECOMMIT_RUNNER]
    assert {a["runtime"] for a in with_precommit} == set(RUNTIMES)
    assert {a["ci_platform"] for a in with_precommit} == set(CI_PLATFORMS)


def test_the_whole_generated_suite_runs_on_every_choice() -> None:
    matrix = check_matrix()
    whole = [a for a in matrix if (a["runtime"], a["task_runner"]) in WHOLE_SUITE]
    assert len(whole) == len(WHOLE_SUITE)
    assert whole[0] == matrix[0], "the default answers run the whole suite"
    assert set(SPLIT_PUSH_CHECK) <= WHOLE_SUITE
    assert {runner for _, runner in SPLIT_PUSH_CHECK} == set(TASK_RUNNERS) - {"threads"}
    for question in ("runtime", "secret_backend", "ci_platform"):
        assert {a[question] for a in whole} == set(choices(question)), question
    runners = Counter(a["task_runner"] for a in whole)
    assert set(runners) == set(TASK_RUNNERS) and min(runners.values()) >= 2, runners
    # GitLab's check job runs the generated suite itself (the push check, then the slow tests):
    # it must be one of these entries.
    gitlab_check_job = [a for a in matrix if is_gitlab_check_job(a)]
    assert all(a in whole for a in gitlab_check_job)
    # The odd orchestration answers meet the backend whose secrets are per environment.
    odd = [a for a in matrix if a.items() >= ODD_ORCHESTRATION.items()]
    assert len(odd) == 1 and odd[0] in whole and odd[0]["secret_backend"] == "prefect", odd


def is_gitlab_check_job(answers: dict[str, str]) -> bool:
    return answers["task_runner"] == PRECOMMIT_RUNNER and answers["ci_platform"] == "gitlab-ci"


@pytest.mark.slow
@pytest.mark.parametrize("answers", check_matrix(), ids=lambda a: "-".join(a.values()))
def test_generated_repository_passes_its_own_checks(
    template: Path, tmp_path: Path, answers: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """What the repository's CI runs: install, its hooks on the lock file it commits, and ruff;
    on WHOLE_SUITE its pytest (the flow on its runner, with its secret backend); on threads
    also pre-commit, `ops validate` and the work pool reconcile creates. On GitLab CI and
    threads, the generated `check` job runs them itself (gitlab-ci-local)."""
    repo = render(template, tmp_path / "sales-etl", answers)
    uv = str(BIN / "uv")
    env = sync(repo)
    if answers == check_matrix()[0]:
        # A team's second month: flows added in one step pass all the checks below at once.
        for name, options in ADDED_FLOWS.items():
            run([uv, "run", "python", "-m", "sales_etl.ops.new_flow", name, *options], repo, env)
        git("add", "-A", cwd=repo)
    # What `make setup` asks next: commit uv.lock, through the repository's own hooks.
    git("add", "uv.lock", cwd=repo)
    run([uv, "run", "pre-commit", "run", "--files", "uv.lock"], cwd=repo, env=env)
    whole_suite = (answers["runtime"], answers["task_runner"]) in WHOLE_SUITE
    cluster_fixture = SPLIT_PUSH_CHECK.get((answers["runtime"], answers["task_runner"]))
    if cluster_fixture:
        env = run_checks(repo, pytest=False)
        push = run(
            [uv, "run", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "--setup-show"],
            repo,
            env,
        )
        assert re.search(r"\d+ passed, [1-9]\d* deselected", push), push
        started = re.compile(rf"SETUP +S {cluster_fixture}\b")
        assert not started.search(push), f"the push check started {cluster_fixture}:\n{push}"
        rest = run(
            [uv, "run", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow", "--setup-show"],
            repo,
            env,
            timeout=1200,
        )
        assert started.search(rest), rest
        return
    if answers["task_runner"] != PRECOMMIT_RUNNER:
        run_checks(repo, pytest=whole_suite)
        return
    if is_gitlab_check_job(answers):
        # As a merge request's branch runs it: the push check, whose rule leaves the slow
        # tests to the default branch.
        git("switch", "-q", "-c", "change", cwd=repo)
        output = run_check_job(repo, env, request.getfixturevalue("node_tools"), tmp_path)
        assert re.search(r"\d+ passed, [1-9]\d* deselected", output), output
        # The rest of the whole suite, as the default branch's job runs it.
        run([uv, "run", "pytest", "-q", "-m", "slow"], cwd=repo, env=env)
    else:
        env = run_checks(repo, pytest=whole_suite)
        run([uv, "run", "pre-commit", "run", "--all-files"], cwd=repo, env=env)
    state = run([uv, "run", "python", "-c", VALIDATE_AND_READ_POOLS], cwd=repo, env=env)
    pools = json.loads(state.strip().splitlines()[-1])
    assert set(pools) == {"sales-etl-dev"}
    runtime = answers["runtime"]
    # ECS and Kubernetes ship their pools' template, for every secret backend.
    shipped = repo / "deploy" / f"{runtime}-base-job-template.json"
    if shipped.exists():
        assert pools["sales-etl-dev"] == json.loads(shipped.read_text())
    else:
        worker = WORKERS.get(runtime, ProcessWorker)
        assert pools["sales-etl-dev"] == worker.get_default_base_job_template()
