"""The Docker runtime, side by side in one run (`python -m bench.docker_bench`).

1. Render to a Completed run in a container: the generated pipeline (`runtime: docker`: render,
   `uv sync`, `make reconcile` building and pushing the image, the worker pulling and running
   it) against a bare one-file flow built into the same base image (with uv and prefect),
   pushed to the same registry, deployed with `prefect deploy` to the same work pool and run by
   the same Docker worker. Both images are removed locally before their run, so both pulls
   happen. Budget: at most 1.3x.
2. A code-only change (one line in a flow, a new commit) redeployed with `make reconcile`: the
   image layers it shares with the previous image, and the ones it rebuilt.

Needs the Docker host of tests/e2e/docker_host.sh (run it first as root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.e2e import docker
from tests.e2e.demo import api, wait_for_final_state
from tests.e2e.server import running_server, running_worker
from tests.rendering import git, render, run, snapshot_template, sync

PREFECT_VERSION = "3.9.1"

BARE_FLOW = """from prefect import flow


@flow(name="bare")
def bare() -> int:
    return 1
"""
BARE_DOCKERFILE = """FROM python:3.11-slim-bookworm
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
RUN uv venv /opt/venv && uv pip install --no-cache --python /opt/venv/bin/python prefect=={prefect}
ENV PATH="/opt/venv/bin:$PATH"
WORKDIR /app
COPY flow.py ./
"""
BARE_PREFECT_YAML = """name: bare
build:
  - prefect_docker.deployments.steps.build_docker_image:
      id: build-image
      image_name: {registry}/pipelines/bare
      tag: "{tag}"
      dockerfile: Dockerfile
      pull: false
      rm: true
push:
  - prefect_docker.deployments.steps.push_docker_image:
      image_name: "{{{{ build-image.image_name }}}}"
      tag: "{{{{ build-image.tag }}}}"
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: /app
deployments:
  - name: bare
    entrypoint: flow.py:bare
    work_pool:
      name: {pool}
      job_variables:
        image: "{registry}/pipelines/bare:{tag}"
        image_pull_policy: IfNotPresent
"""


def layers(image: str) -> list[str]:
    inspected = docker.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", image)
    return json.loads(inspected)


def rebuilt_steps(image: str, count: int) -> list[str]:
    """The Dockerfile steps of an image's top `count` layers, newest first, with sizes."""
    history = docker.docker(
        "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image
    ).splitlines()
    sized = [line for line in history if not line.startswith("0B\t")]
    return [line.replace("/bin/sh -c ", "").strip()[:110] for line in sized[:count]]


def run_to_completed(api_url: str, deployment: dict[str, Any], timeout: float) -> float:
    start = time.perf_counter()
    flow_run = api(f"{api_url}/deployments/{deployment['id']}/create_flow_run", "POST", {})
    state = wait_for_final_state(api_url, flow_run["id"], timeout)
    if state != "COMPLETED":
        raise SystemExit(f"{deployment['name']} ended {state}")
    return time.perf_counter() - start


def deploy_bare(workdir: Path, registry: str, pool: str, env: dict[str, str], prefect: Path) -> str:
    bare = workdir / "bare"
    bare.mkdir()
    (bare / "flow.py").write_text(BARE_FLOW)
    (bare / "Dockerfile").write_text(BARE_DOCKERFILE.format(prefect=PREFECT_VERSION))
    tag = f"run-{int(time.time())}"
    config = BARE_PREFECT_YAML.format(registry=registry, tag=tag, pool=pool)
    (bare / "prefect.yaml").write_text(config)
    run([str(prefect), "--no-prompt", "deploy", "--name", "bare"], cwd=bare, env=env, timeout=900)
    return f"{registry}/pipelines/bare:{tag}"


def bench(workdir: Path, timeout: float) -> None:
    pipeline: dict[str, float] = {}
    bare: dict[str, float] = {}
    with contextlib.ExitStack() as services:
        registry = services.enter_context(docker.running_registry(workdir / "registry"))
        answers = {
            "runtime": "docker",
            "python_version": docker.PYTHON_VERSION,
            "image_registry": f"{registry}/pipelines",
        }
        start = time.perf_counter()
        repo = render(snapshot_template(workdir / "template"), workdir / "pipeline", answers)
        env = sync(repo)
        pipeline["render + uv sync"] = time.perf_counter() - start
        settings = {**answers, "secret_backend": "env", "project_slug": "sales-etl"}
        prefect = repo / ".venv" / "bin" / "prefect"
        server = services.enter_context(
            running_server(prefect, workdir / "home", workdir / "server.log", env)
        )
        deploy_env = {**env, **server.env(), **docker.provide_secret(repo, settings, "")}

        start = time.perf_counter()
        run(["make", "reconcile", "ENV=dev"], cwd=repo, env=deploy_env, timeout=900)
        pipeline["make reconcile (build, push, deploy)"] = time.perf_counter() - start
        tag = git("rev-parse", "--short=12", "HEAD", cwd=repo).strip()
        image = f"{registry}/pipelines/sales-etl:{tag}"
        pool = api(f"{server.api_url}/work_pools/sales-etl-dev")

        start = time.perf_counter()
        bare_image = deploy_bare(workdir, registry, pool["name"], deploy_env, prefect)
        bare["prefect deploy (build, push, deploy)"] = time.perf_counter() - start
        docker.remove_image(image)
        docker.remove_image(bare_image)

        pools = services.enter_context(docker.cleaned_up(["sales-etl-dev"]))
        pools.append(pool["id"])
        worker = [str(prefect), "worker", "start", "--pool", pool["name"]]
        services.enter_context(running_worker(worker, repo, deploy_env, workdir / "worker.log"))
        etl = api(f"{server.api_url}/deployments/name/sales-etl/dev")
        floor = api(f"{server.api_url}/deployments/name/bare/bare")
        # One after the other on the same worker; the order alternates nothing else.
        pipeline["pull + run to Completed"] = run_to_completed(server.api_url, etl, timeout)
        bare["pull + run to Completed"] = run_to_completed(server.api_url, floor, timeout)

        # A code-only change: one line in a flow, a new commit, so a new image tag.
        flow = repo / "src" / "sales_etl" / "flows" / "etl.py"
        flow.write_text(flow.read_text() + "# a code-only change\n")
        git("commit", "-qam", "A code-only change", cwd=repo)
        start = time.perf_counter()
        run(["make", "reconcile", "ENV=dev"], cwd=repo, env=deploy_env, timeout=900)
        redeploy = time.perf_counter() - start
        new_tag = git("rev-parse", "--short=12", "HEAD", cwd=repo).strip()
        new_image = f"{registry}/pipelines/sales-etl:{new_tag}"
        docker.docker("pull", image)
        old_layers, new_layers = layers(image), layers(new_image)
        shared = len(common_prefix(old_layers, new_layers))

    report(pipeline, bare)
    print()
    print(f"Code-only change: make reconcile took {redeploy:.1f} s")
    print(f"  {shared} of {len(new_layers)} layers reused from the previous image; rebuilt:")
    for step in rebuilt_steps(new_image, len(new_layers) - shared):
        print(f"    {step}")


def common_prefix(old: list[str], new: list[str]) -> list[str]:
    """The common prefix of two layer lists: the layers a rebuild reused."""
    common = []
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        common.append(a)
    return common


def report(pipeline: dict[str, float], bare: dict[str, float]) -> None:
    print("Render to Completed in a container (seconds):")
    for name, figures in (("pipeline", pipeline), ("bare one-file flow", bare)):
        parts = ", ".join(f"{step} {seconds:.1f}" for step, seconds in figures.items())
        print(f"  {name}: {sum(figures.values()):.1f}  ({parts})")
    ratio = sum(pipeline.values()) / sum(bare.values())
    print(f"  ratio: {ratio:.2f}x (budget 1.3x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docker_bench", description=__doc__)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    reason = docker.unavailable()
    if reason:
        print(f"Docker is not available: {reason}")
        return 1
    with tempfile.TemporaryDirectory(prefix="docker-bench-") as workdir:
        bench(Path(workdir), args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
