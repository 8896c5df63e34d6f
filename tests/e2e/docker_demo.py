"""`make demo DEMO_ARGS="--data runtime=docker"`: the Docker runtime end to end, for a person.

Prepares the Docker host (tests/e2e/docker_host.sh), starts a local registry on 127.0.0.1,
renders `runtime: docker` with that registry, starts a Prefect server, runs `make reconcile`
(which builds and pushes the image once, then deploys it pinned by digest), removes the local
image so the Docker worker pulls it, runs the deployment in a container, waits for the
triggered publish run, and reads back the rows. Each step says where it ran. Containers,
volume, worker, server, registry (and moto, for secret_backend=aws-secrets-manager) are removed
on the way out, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e import docker
from tests.e2e.demo import DemoResult, Steps, api, read_artifact, wait_for_final_state
from tests.e2e.server import running_server, running_worker
from tests.rendering import (
    BIN,
    answers_of,
    commit_lock,
    git,
    render,
    run,
    snapshot_template,
    sync,
)


def container_of(flow_run: dict[str, Any]) -> str:
    """The container id prefect-docker recorded for a flow run ("<host>:<container id>")."""
    return (flow_run.get("infrastructure_pid") or "?").rpartition(":")[2][:12]


def docker_demo(workdir: Path, answers: dict[str, Any], timeout: float = 300) -> DemoResult:
    repo = workdir / "pipeline"
    result = DemoResult(repo=repo)
    steps = Steps(10, result)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with steps.step("Prepare the Docker host (packages, dockerd, stand-in base images)"):
        subprocess.run([str(docker.HOST_SCRIPT)], check=True)
        reason = docker.unavailable()
        if reason:
            raise SystemExit(f"Docker is not available: {reason}")
        print(f"      where: {docker.host_note()}", flush=True)
    with contextlib.ExitStack() as services:
        with steps.step("Start a local image registry (docker-registry, 127.0.0.1)"):
            registry = services.enter_context(docker.running_registry(workdir / "registry"))
            moto = services.enter_context(
                docker.running_moto(BIN / "moto_server", logs / "moto.log")
            )
            print(f"      where: registry {registry}, moto (AWS emulation) {moto}", flush=True)
        with steps.step("Render the template with copier (runtime docker)"):
            answers = {
                **answers,
                "python_version": docker.PYTHON_VERSION,
                "image_registry": f"{registry}/pipelines",
            }
            render(snapshot_template(workdir / "template"), repo, answers)
            settings = answers_of(repo)
            environment, slug = settings["environments"][0], settings["project_slug"]
            print(f"      where: {repo}", flush=True)
        with steps.step("Install the generated repository (uv sync)"):
            env = sync(repo)
            commit_lock(repo)
        with steps.step("Start a local Prefect server (SQLite, 127.0.0.1)"):
            prefect = repo / ".venv" / "bin" / "prefect"
            server = services.enter_context(
                running_server(prefect, workdir / "prefect-home", logs / "server.log", env)
            )
            print(f"      where: {server.url}", flush=True)
        deploy_env = {**env, **server.env(), **docker.provide_secret(repo, settings, moto)}
        with steps.step(f"make reconcile ENV={environment}: build, push, pool, deployments"):
            print(run(["make", "reconcile", f"ENV={environment}"], repo, deploy_env, 900), end="")
            tag = git("rev-parse", "--short=12", "HEAD", cwd=repo).strip()
            image = f"{registry}/pipelines/{slug}:{tag}"
            print(f"      where: built by the local dockerd, pushed to {registry}", flush=True)
            docker.remove_image(image)
            print(f"      removed the local {image}: the worker must pull it", flush=True)
        pool = api(f"{server.api_url}/work_pools/{slug}-{environment}")
        volume = f"{slug}-{environment}"
        pools = services.enter_context(docker.cleaned_up([volume]))
        pools.append(pool["id"])
        with steps.step("Start a Docker worker"):
            worker = services.enter_context(
                running_worker(
                    [str(prefect), "worker", "start", "--pool", pool["name"]],
                    cwd=repo,
                    env=deploy_env,
                    log=logs / "worker.log",
                )
            )
            print(f"      where: host process {worker.pid}, pool {pool['name']}", flush=True)
        with steps.step("Run the deployment in a container and wait for a final state"):
            deployment = api(f"{server.api_url}/deployments/name/{slug}/{environment}")
            flow_run = api(
                f"{server.api_url}/deployments/{deployment['id']}/create_flow_run",
                "POST",
                docker.run_overrides(deployment, moto),
            )
            result.run_url = f"{server.url}/runs/flow-run/{flow_run['id']}"
            print(f"      {result.run_url}", flush=True)
            result.state = wait_for_final_state(server.api_url, flow_run["id"], timeout)
            etl = api(f"{server.api_url}/flow_runs/{flow_run['id']}")
            pinned = deployment["job_variables"]["image"]
            pulled = "pulled back" if docker.pulled_image_id(pinned) else "NOT pulled"
            print(f"      where: container {container_of(etl)} of {pinned} ({pulled})", flush=True)
        with steps.step("Wait for the triggered publish run"):
            downstream = api(f"{server.api_url}/deployments/name/{slug}-publish/{environment}")
            publish_id = docker.triggered_run(server.api_url, downstream["id"], timeout)
            state = wait_for_final_state(server.api_url, publish_id, timeout)
            publish = api(f"{server.api_url}/flow_runs/{publish_id}")
            print(f"      where: container {container_of(publish)}: {state.lower()}", flush=True)
        with steps.step("Read back what the run did"):
            result.rows_loaded = docker.count_rows(volume, "orders")
            result.artifact = read_artifact(server.api_url, f"{slug}-run-summary")
            result.warehouse = f"{docker.DATA_DIR}/warehouse.db in volume {volume}"
            print(f"      where: {result.warehouse}", flush=True)
        print("Stopping the worker, removing containers and the volume, stopping the server,")
        print("moto and the registry ...", flush=True)
    return result
