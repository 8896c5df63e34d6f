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
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e import docker
from tests.e2e.demo import api, wait_for_final_state
from tests.e2e.server import running_server, running_worker
from tests.rendering import QUESTIONS, commit_lock, git, render, run, snapshot_template, sync

PREFECT_VERSION = QUESTIONS["prefect_version"]["default"]
BUDGET = 1.3

BARE_FLOW = """from prefect import flow


@flow(name="bare")
def bare() -> int:
    return 1
"""
# The generated Dockerfile's recipe without the project: uv in a build stage, bytecode compiled
# (as pip does by default), only the environment copied into the final image.
BARE_DOCKERFILE = """FROM python:3.11-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
RUN uv venv /opt/venv \\
    && uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python prefect=={prefect}

FROM python:3.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
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


def tag_of(reference: str) -> str:
    """registry/name:tag of a deployment's registry/name:tag@sha256:... image."""
    return reference.partition("@")[0]


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


def wait_for_worker(api_url: str, pool: str, timeout: float = 120) -> None:
    """Until a worker of the pool has sent its first heartbeat: its start-up is neither flow's."""
    deadline = time.monotonic() + timeout
    while not api(f"{api_url}/work_pools/{pool}/workers/filter", "POST", {}):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no worker of {pool} after {timeout:.0f} s")
        time.sleep(0.5)


def seed_base_image(registry: str) -> None:
    """Push the shared base image to the fresh registry before either deploy: whichever pushed
    first would otherwise also push the 169 MB of layers both images share."""
    seed = f"{registry}/seed/python:base"
    docker.docker("tag", docker.STAND_INS[0], seed)
    docker.docker("push", "--quiet", seed)
    docker.docker("rmi", "--no-prune", seed)


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


@dataclass
class Round:
    pipeline: dict[str, float] = field(default_factory=dict)
    bare: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return sum(self.pipeline.values()) / sum(self.bare.values())


def side_by_side(workdir: Path, template: Path, pipeline_first: bool, timeout: float) -> Round:
    """One round on a fresh registry and server: the pipeline and the bare flow, each from
    nothing on either to a Completed run in a container. Returns the figures and leaves the
    rendered repository in workdir/pipeline."""
    figures = Round()
    with contextlib.ExitStack() as services:
        registry = services.enter_context(docker.running_registry(workdir / "registry"))
        seed_base_image(registry)
        answers = {
            "runtime": "docker",
            "python_version": docker.PYTHON_VERSION,
            "image_registry": f"{registry}/pipelines",
        }
        start = time.perf_counter()
        repo = render(template, workdir / "pipeline", answers)
        env = sync(repo)
        commit_lock(repo)
        figures.pipeline["render + uv sync"] = time.perf_counter() - start
        settings = {**answers, "secret_backend": "env", "project_slug": "sales-etl"}
        prefect = repo / ".venv" / "bin" / "prefect"
        server = services.enter_context(
            running_server(prefect, workdir / "home", workdir / "server.log", env)
        )
        deploy_env = {**env, **server.env(), **docker.provide_secret(repo, settings, "")}

        start = time.perf_counter()
        run(["make", "reconcile", "ENV=dev"], cwd=repo, env=deploy_env, timeout=900)
        figures.pipeline["make reconcile (build, push, deploy)"] = time.perf_counter() - start
        etl = api(f"{server.api_url}/deployments/name/sales-etl/dev")
        pool = api(f"{server.api_url}/work_pools/sales-etl-dev")

        start = time.perf_counter()
        bare_image = deploy_bare(workdir, registry, pool["name"], deploy_env, prefect)
        figures.bare["prefect deploy (build, push, deploy)"] = time.perf_counter() - start
        floor = api(f"{server.api_url}/deployments/name/bare/bare")
        docker.remove_image(tag_of(etl["job_variables"]["image"]))
        docker.remove_image(bare_image)

        pools = services.enter_context(docker.cleaned_up(["sales-etl-dev"]))
        pools.append(pool["id"])
        worker = [str(prefect), "worker", "start", "--pool", pool["name"]]
        services.enter_context(running_worker(worker, repo, deploy_env, workdir / "worker.log"))
        wait_for_worker(server.api_url, pool["name"])
        # One after the other on the same worker, in the order the round was given.
        runs = [(figures.pipeline, etl), (figures.bare, floor)]
        for figure, deployment in runs if pipeline_first else reversed(runs):
            figure["pull + run to Completed"] = run_to_completed(
                server.api_url, deployment, timeout
            )
    return figures


def code_only_change(workdir: Path, timeout: float) -> tuple[float, int, int, str]:
    """Redeploy a one-line change to a flow with make reconcile: its time, the layers the new
    image shares with the previous one, its layer count, and the new image."""
    with contextlib.ExitStack() as services:
        registry = services.enter_context(docker.running_registry(workdir / "registry"))
        answers = {
            "runtime": "docker",
            "python_version": docker.PYTHON_VERSION,
            "image_registry": f"{registry}/pipelines",
        }
        repo = render(snapshot_template(workdir / "template"), workdir / "pipeline", answers)
        env = sync(repo)
        commit_lock(repo)
        settings = {**answers, "secret_backend": "env", "project_slug": "sales-etl"}
        prefect = repo / ".venv" / "bin" / "prefect"
        server = services.enter_context(
            running_server(prefect, workdir / "home", workdir / "server.log", env)
        )
        deploy_env = {**env, **server.env(), **docker.provide_secret(repo, settings, "")}
        run(["make", "reconcile", "ENV=dev"], cwd=repo, env=deploy_env, timeout=900)
        image = tag_of(
            api(f"{server.api_url}/deployments/name/sales-etl/dev")["job_variables"]["image"]
        )
        # A code-only change: one line in a flow, a new commit, so a new image tag.
        flow = repo / "src" / "sales_etl" / "flows" / "etl.py"
        flow.write_text(flow.read_text() + "# a code-only change\n")
        git("commit", "-qam", "A code-only change", cwd=repo)
        start = time.perf_counter()
        run(["make", "reconcile", "ENV=dev"], cwd=repo, env=deploy_env, timeout=timeout)
        redeploy = time.perf_counter() - start
        new_image = tag_of(
            api(f"{server.api_url}/deployments/name/sales-etl/dev")["job_variables"]["image"]
        )
        docker.docker("pull", "--quiet", image)
        old_layers, new_layers = layers(image), layers(new_image)
        return redeploy, len(common_prefix(old_layers, new_layers)), len(new_layers), new_image


def bench(workdir: Path, rounds: int, timeout: float) -> bool:
    """Print every round, the median ratio and the code-only redeploy; True within budget."""
    template = snapshot_template(workdir / "template")
    figures = []
    for index in range(rounds):
        pipeline_first = index % 2 == 0
        figures.append(side_by_side(workdir / f"round-{index}", template, pipeline_first, timeout))
        print(f"Round {index + 1} ({'pipeline' if pipeline_first else 'bare flow'} ran first):")
        report(figures[-1])
    ratio = statistics.median(round_.ratio for round_ in figures)
    within = ratio <= BUDGET
    print(
        f"Median ratio over {rounds} round(s): {ratio:.2f}x (budget {BUDGET}x): "
        f"{'met' if within else 'NOT MET'}"
    )

    redeploy, shared, total, new_image = code_only_change(workdir / "code-only", timeout)
    print()
    print(f"Code-only change: make reconcile took {redeploy:.1f} s")
    print(f"  {shared} of {total} layers reused from the previous image; rebuilt:")
    rebuilt = rebuilt_steps(new_image, total - shared)
    for step in rebuilt:
        print(f"    {step}")
    code_only = all(
        " in src/" in step or " in config/" in step or " in data/" in step for step in rebuilt
    )
    if not code_only:
        print("  NOT only the code layers: the dependency layer was rebuilt")
    return within and code_only


def common_prefix(old: list[str], new: list[str]) -> list[str]:
    """The common prefix of two layer lists: the layers a rebuild reused."""
    common = []
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        common.append(a)
    return common


def report(figures: Round) -> None:
    for name, phases in (("pipeline", figures.pipeline), ("bare one-file flow", figures.bare)):
        parts = ", ".join(f"{step} {seconds:.1f}" for step, seconds in phases.items())
        print(f"  {name}: {sum(phases.values()):.1f} s  ({parts})")
    print(f"  ratio: {figures.ratio:.2f}x", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.docker_bench", description=__doc__)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds (median)")
    args = parser.parse_args(argv)
    reason = docker.unavailable()
    if reason:
        print(f"Docker is not available: {reason}")
        return 1
    load = " ".join(f"{figure:.2f}" for figure in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load}", flush=True)
    with tempfile.TemporaryDirectory(prefix="docker-bench-") as workdir:
        within = bench(Path(workdir), args.rounds, args.timeout)
    print(f"load average at the end {' '.join(f'{f:.2f}' for f in os.getloadavg())}")
    return 0 if within else 1


if __name__ == "__main__":
    raise SystemExit(main())
