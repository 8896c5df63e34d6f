"""Azure Pipelines' deploy task, run for real: its rendered inline script in bash, as AzureCLI@2
runs it on the agent, then the generated `ops/registry_login.py` where `make deploy` would.

What stands in: `make` (its `registry-login` prerequisite only, run with this venv's Python
against the generated package), `az` (a script that prints a token) and, for ECR, moto's STS and
ECR on 127.0.0.1. The AWS credential chain, the token file, the Docker client config and the
script's own checks are the real ones. Azure DevOps itself cannot run here.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.docker import running_moto
from tests.rendering import BIN, answers_of, render

ECR = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
ACR = "acme.azurecr.io"
# What Azure DevOps hands the task: its service connection's OIDC token ($idToken).
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.azure-devops-service-connection.signature"
ACR_TOKEN = "acr-refresh-token-for-the-connection"
ROLE = "arn:aws:iam::123456789012:role/sales-etl-dev-deployer"

FAKE_MAKE = """#!/bin/bash
# make deploy's first prerequisite, `make registry-login`, with the generated package.
set -eu
printf '%s\\n' "$*" > "$WORKDIR/make-args"
printf '%s\\n' "${AWS_DEFAULT_REGION-unset}" > "$WORKDIR/make-region"
exec "$PYTHON" -m "$PACKAGE.ops.registry_login" "$IMAGE"
"""
FAKE_AZ = """#!/bin/bash
printf '%s\\n' "$@" > "$WORKDIR/az-args"
[ -z "${AZ_FAILS:-}" ] || { echo "ERROR: AADSTS700024: the token has expired" >&2; exit 1; }
printf '%s\\n' "$ACR_TOKEN"
"""


@pytest.fixture(scope="module")
def repo_for(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """An Azure Pipelines repository pushing to a registry, rendered once per module."""

    @functools.cache
    def _render(registry: str, secret_backend: str = "env") -> Path:
        destination = tmp_path_factory.mktemp("azure") / "repo"
        answers = {"ci_platform": "azure-pipelines", "runtime": "docker"}
        answers |= {"image_registry": registry, "secret_backend": secret_backend}
        return render(template, destination, answers)

    return _render


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with running_moto(BIN / "moto_server", log) as url:
        yield url


def deploy_task(repo: Path, env: str) -> dict[str, Any]:
    """The AzureCLI@2 task of env's deploy stage."""
    pipeline = yaml.safe_load((repo / "azure-pipelines.yml").read_text(encoding="utf-8"))
    (stage,) = [stage for stage in pipeline["stages"] if stage["stage"] == f"deploy_{env}"]
    steps = stage["jobs"][0]["strategy"]["runOnce"]["deploy"]["steps"]
    (task,) = [step for step in steps if step.get("task") == "AzureCLI@2"]
    return task


def run_task(
    repo: Path, task: dict[str, Any], work: Path, group: dict[str, str], **extra: str
) -> subprocess.CompletedProcess[str]:
    """The task's script in bash, in the checkout, with what the agent gives it: the step's `env`
    with its $(NAME) macros expanded from the variable group (a missing one stays literal),
    the group's plain variables, Agent.TempDirectory, and with addSpnToEnvironment the
    connection's $idToken."""
    fake_bin = work / "bin"
    fake_bin.mkdir(parents=True)
    for name, text in (("make", FAKE_MAKE), ("az", FAKE_AZ)):
        (fake_bin / name).write_text(text, encoding="utf-8")
        (fake_bin / name).chmod(0o755)
    answers = answers_of(repo)
    temp = work / "agent-temp"
    temp.mkdir()
    env = {
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(work / "home"),
        "WORKDIR": str(work),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(repo / "src"),
        "PACKAGE": answers["package_name"],
        "IMAGE": f"{answers['image_registry']}/{answers['image_name']}",
        "DOCKER_CONFIG": str(work / "docker"),
        "AGENT_TEMPDIRECTORY": str(temp),
        "ACR_TOKEN": ACR_TOKEN,
        # Nothing of this machine's AWS setup: only what the script provides may sign in.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        **{name: value for name, value in group.items() if not name.startswith("PREFECT_")},
        **extra,
    }
    for name, value in task["env"].items():
        env[name] = re.sub(r"\$\((\w+)\)", lambda m: group.get(m[1], m[0]), value)
    if task["inputs"].get("addSpnToEnvironment"):
        env |= {"idToken": ID_TOKEN, "servicePrincipalId": "app-1", "tenantId": "tenant-1"}
    script = work / "azureclitaskscript.sh"
    script.write_text(task["inputs"]["inlineScript"], encoding="utf-8")
    return subprocess.run(
        ["bash", str(script)], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )


def docker_login(work: Path, host: str) -> str:
    """`user:password` of host in the Docker client config the login wrote."""
    config = json.loads((work / "docker" / "config.json").read_text(encoding="utf-8"))
    return base64.b64decode(config["auths"][host]["auth"]).decode()


GROUP = {"PREFECT_API_URL": "https://prefect.example/api", "PREFECT_API_KEY": "pnu_test"}


@pytest.mark.slow
def test_ecr_login_assumes_the_role_with_the_connection_s_token(
    repo_for: Callable[..., Path], moto: str, tmp_path: Path
) -> None:
    # With AWS Secrets Manager, whose region (the group's) the deploy passes to flow runs.
    repo = repo_for(ECR, "aws-secrets-manager")
    task = deploy_task(repo, "dev")
    group = {**GROUP, "AWS_ROLE_ARN": ROLE, "AWS_DEFAULT_REGION": "us-east-1"}
    result = run_task(repo, task, tmp_path, group, AWS_ENDPOINT_URL=moto)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "make-args").read_text() == "deploy ENV=dev\n"
    assert (tmp_path / "make-region").read_text() == "us-east-1\n"
    # The only credentials this run had were the role and the token file: moto's ECR answered.
    user, _, password = docker_login(tmp_path, ECR).partition(":")
    assert user == "AWS" and password
    token_file = tmp_path / "agent-temp" / "aws-web-identity-token"
    assert token_file.read_text() == ID_TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert not token_file.resolve().is_relative_to(repo.resolve())  # never in the build context
    assert ID_TOKEN not in result.stdout + result.stderr


@pytest.mark.slow
def test_ecr_login_without_a_role_stops_and_names_it(
    repo_for: Callable[..., Path], moto: str, tmp_path: Path
) -> None:
    repo = repo_for(ECR, "aws-secrets-manager")
    result = run_task(repo, deploy_task(repo, "dev"), tmp_path, GROUP, AWS_ENDPOINT_URL=moto)
    assert result.returncode != 0
    assert "set AWS_ROLE_ARN in the variable group" in result.stderr
    assert not (tmp_path / "make-args").exists()
    assert not (tmp_path / "agent-temp" / "aws-web-identity-token").exists()


def test_acr_login_hands_the_connection_s_token_to_registry_login(
    repo_for: Callable[..., Path], tmp_path: Path
) -> None:
    repo = repo_for(f"{ACR}/pipelines")
    task = deploy_task(repo, "prod")
    assert "addSpnToEnvironment" not in task["inputs"]  # the task's own Azure login suffices
    result = run_task(repo, task, tmp_path, GROUP)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "az-args").read_text().split() == [
        "acr", "login", "--name", "acme", "--expose-token", "--output", "tsv",
        "--query", "accessToken",
    ]  # fmt: skip
    assert (tmp_path / "make-args").read_text() == "deploy ENV=prod\n"
    login = f"00000000-0000-0000-0000-000000000000:{ACR_TOKEN}"
    assert docker_login(tmp_path, ACR) == login
    assert ACR_TOKEN not in result.stdout + result.stderr
    # The token lives in the step's environment and the Docker config, in no other file.
    forms = (ACR_TOKEN, base64.b64encode(login.encode()).decode())
    files = [p for p in [*tmp_path.rglob("*"), *repo.rglob("*")] if p.is_file()]
    written = [p for p in files if any(form in p.read_text(errors="replace") for form in forms)]
    assert written == [tmp_path / "docker" / "config.json"]


def test_acr_login_that_fails_stops_the_deploy(
    repo_for: Callable[..., Path], tmp_path: Path
) -> None:
    repo = repo_for(f"{ACR}/pipelines")
    result = run_task(repo, deploy_task(repo, "prod"), tmp_path, GROUP, AZ_FAILS="1")
    assert result.returncode != 0
    assert "AADSTS700024" in result.stderr
    assert not (tmp_path / "make-args").exists()
    assert not (tmp_path / "docker").exists()


def test_preview_logs_in_before_it_pushes(repo_for: Callable[..., Path]) -> None:
    """A preview builds and pushes its image as the first deploy does, so it logs in first."""
    repo = repo_for(f"{ACR}/pipelines")
    dry_run = ["make", "-n", "preview", "REQUEST=7"]
    commands = subprocess.run(dry_run, cwd=repo, capture_output=True, text=True, check=True)
    assert re.findall(r" -m \S+\.ops\.(\w+)", commands.stdout) == ["registry_login", "preview"]
