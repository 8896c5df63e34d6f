"""The Docker runtime for real: render `runtime: docker`, `make reconcile ENV=<first>` builds the
generated Dockerfile and pushes the image to a local registry once, deploys it by digest, the
local image is removed so the worker must pull it, and a Docker worker runs the deployment in a
container: Completed, rows in the warehouse, the publish flow triggered (in a container too).

Once with the env backend (the secret is a file on the worker's host, mounted read-only) and
once with AWS Secrets Manager, read inside the container from moto's HTTP endpoint on
127.0.0.1. One Prefect server and one registry for the module. Docker comes from
tests/e2e/docker_host.sh, which `make test` runs first: without it the tests skip, except under
CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.concurrency_bench import api
from tests.e2e import docker
from tests.e2e.server import Server, running_server, running_worker
from tests.rendering import BIN, answers_of, git, render, run, sync
from tests.test_orchestration_e2e import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]


@dataclass
class DockerStack:
    workdir: Path
    server: Server
    registry: str
    moto: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerStack]:
    reason = docker.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the Docker end-to-end tests, but {reason}")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("docker")
    with contextlib.ExitStack() as services:
        registry = services.enter_context(docker.running_registry(workdir / "registry"))
        moto_server = docker.running_moto(BIN / "moto_server", workdir / "moto.log")
        moto = services.enter_context(moto_server)
        server = services.enter_context(
            running_server(BIN / "prefect", workdir / "home", workdir / "server.log", os.environ)
        )
        yield DockerStack(workdir, server, registry, moto)


def manifest_digest(registry: str, name: str, tag: str) -> str:
    """The digest the registry serves for name:tag (its Docker-Content-Digest header)."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


@pytest.mark.parametrize(
    "answers",
    [
        {"secret_backend": "env"},
        {"secret_backend": "aws-secrets-manager", "project_name": "Sales ETL AWS"},
    ],
    ids=["env", "aws-secrets-manager"],
)
def test_docker_worker_runs_the_pushed_image(
    stack: DockerStack, template: Path, answers: dict[str, Any]
) -> None:
    answers = {
        **answers,
        "runtime": "docker",
        "python_version": docker.PYTHON_VERSION,
        "image_registry": f"{stack.registry}/pipelines",
    }
    repo = render(template, stack.workdir / answers["secret_backend"], answers)
    env = sync(repo)
    answers = answers_of(repo)
    slug, environment = answers["project_slug"], answers["environments"][0]
    api_url = stack.server.api_url
    deploy_env = {**env, **stack.server.env(), **docker.provide_secret(repo, answers, stack.moto)}

    started = time.monotonic()
    output = run(["make", "reconcile", f"ENV={environment}"], cwd=repo, env=deploy_env, timeout=900)
    built = time.monotonic()
    tag = git("rev-parse", "--short=12", "HEAD", cwd=repo).strip()
    image = f"{stack.registry}/pipelines/{slug}:{tag}"
    assert docker.image_id(image), f"make reconcile built no {image}:\n{output}"
    pushed = api(f"http://{stack.registry}/v2/pipelines/{slug}/tags/list")
    assert tag in pushed["tags"]
    # Built and pushed once, then both deployments pinned to the digest the registry holds.
    assert output.count(f"Building {image} ") == 1, output
    digest = manifest_digest(stack.registry, f"pipelines/{slug}", tag)
    docker.remove_image(image)
    assert not docker.pulled_image_id(f"{image}@{digest}")
    commit = git("rev-parse", "HEAD", cwd=repo).strip()
    deployment = api(f"{api_url}/deployments/name/{slug}/{environment}")
    downstream = api(f"{api_url}/deployments/name/{slug}-publish/{environment}")
    for pinned in (deployment, downstream):
        assert pinned["job_variables"]["image"] == f"{image}@{digest}"
        assert pinned["version"] == f"{commit}@{digest}"
    job_env = deployment["job_variables"]["env"]
    # The backend's settings arrive resolved from the deploying environment; the value never.
    assert {k: job_env[k] for k in ("AWS_DEFAULT_REGION", "PIPELINE_SECRETS_DIR") if k in job_env}
    assert "{{" not in json.dumps(deployment["job_variables"])
    assert docker.WAREHOUSE_DSN not in json.dumps(deployment)

    pool = api(f"{api_url}/work_pools/{slug}-{environment}")
    volume = f"{slug}-{environment}"
    worker = [str(repo / ".venv/bin/prefect"), "worker", "start", "--pool", pool["name"]]
    log = repo.parent / f"{repo.name}-worker.log"
    with docker.cleaned_up([volume]) as pools, running_worker(worker, repo, deploy_env, log):
        pools.append(pool["id"])
        body = docker.run_overrides(deployment, stack.moto)
        run_id = api(f"{api_url}/deployments/{deployment['id']}/create_flow_run", body)["id"]
        etl = wait_for(api_url, run_id, timeout=300)
        assert etl["state"]["type"] == "COMPLETED", log.read_text()[-4000:]
        publish = wait_for(api_url, docker.triggered_run(api_url, downstream["id"]), timeout=300)
        assert publish["state"]["type"] == "COMPLETED", log.read_text()[-4000:]
        rows = docker.count_rows(volume, "orders")
    print(
        f"\nmake reconcile (build, push) {built - started:.0f} s, then worker and both runs "
        f"{time.monotonic() - built:.0f} s"
    )

    # The worker pulled the image back from the registry and ran each flow in a container.
    assert docker.pulled_image_id(f"{image}@{digest}")
    assert etl["infrastructure_pid"] and publish["infrastructure_pid"]
    summary = api(f"{api_url}/artifacts/{slug}-run-summary/latest")
    data = json.loads(summary["data"]) if isinstance(summary["data"], str) else summary["data"]
    assert rows == sum(batch["rows"] for batch in data) > 0
    assert publish["parameters"] == {"upstream_flow_run": f"prefect.flow-run.{run_id}"}
