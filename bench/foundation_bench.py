"""Foundation benchmarks, measured side by side in one run (`python -m bench.foundation_bench`).

1. copier copy with the default answers against copier rendering a one-file template (the
   floor copier itself sets), median of --copies runs each.
2. Render to a Completed run of the default pipeline against the floor a careful engineer sets
   by hand: a bare Prefect project (a pyproject.toml pinning the same Prefect, one flow file),
   `uv sync` from the same uv cache, a process work pool, `prefect deploy`, the same server and
   the same kind of worker. Each side installs its own environment and deploys from it; the
   server runs from the pipeline's environment, outside both timings. Exits 1 when the ratio
   is over --budget (1.2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import copier

from tests.e2e.demo import api, wait_for_final_state
from tests.e2e.server import running_server, running_worker
from tests.rendering import (
    BIN,
    answers_of,
    commit_lock,
    git,
    render,
    repo_env,
    run,
    snapshot_template,
    sync,
)

ONE_FILE_FLOW = """from prefect import flow


@flow(name="floor")
def floor() -> int:
    return 1
"""
ONE_FILE_PREFECT_YAML = """name: floor
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{directory}"
deployments:
  - name: floor
    entrypoint: flow.py:floor
    work_pool:
      name: floor
"""


BARE_PYPROJECT = """[project]
name = "floor"
version = "0.1.0"
requires-python = ">={python}"
dependencies = ["prefect=={prefect}"]

[tool.uv]
package = false
"""


def one_file_template(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "copier.yml").write_text("name:\n  type: str\n  default: floor\n")
    (directory / "README.md.jinja").write_text("# {{ name }}\n")
    git("init", "-q", "-b", "main", cwd=directory)
    git("add", "-A", cwd=directory)
    git("commit", "-q", "-m", "one file", cwd=directory)
    return directory


def median_copy_seconds(template: Path, workdir: Path, copies: int) -> float:
    times = []
    for i in range(copies):
        start = time.perf_counter()
        copier.run_copy(
            str(template),
            workdir / f"copy-{i}",
            defaults=True,
            vcs_ref="HEAD",
            quiet=True,
            unsafe=True,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_to_completion(server_api: str, name: str, timeout: float = 600) -> None:
    deployment = api(f"{server_api}/deployments/name/{name}")
    flow_run = api(f"{server_api}/deployments/{deployment['id']}/create_flow_run", "POST", {})
    state = wait_for_final_state(server_api, flow_run["id"], timeout)
    if state != "COMPLETED":
        raise RuntimeError(f"{name} ended {state}")


def run_on_worker(
    prefect: Path, pool: str, deployment: str, cwd: Path, env: dict[str, str], api_url: str
) -> None:
    """Start a worker on the pool, run the deployment to Completed, stop the worker."""
    with running_worker(
        [str(prefect), "worker", "start", "--pool", pool],
        cwd=cwd,
        env=env,
        log=cwd.parent / f"{pool}-worker.log",
    ):
        run_to_completion(api_url, deployment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--budget", type=float, default=1.2)
    args = parser.parse_args()
    uv = str(BIN / "uv")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        template = snapshot_template(work / "template")
        floor_template = one_file_template(work / "floor-template")
        full = median_copy_seconds(template, work / "full", args.copies)
        floor = median_copy_seconds(floor_template, work / "floor", args.copies)
        print(
            f"copier copy, median of {args.copies}: defaults {full:.2f} s, "
            f"one-file template {floor:.2f} s, ratio {full / floor:.1f}x"
        )

        # Both sides run on one server, started from the pipeline's environment once it exists
        # and outside both timings.
        print(f"load average before render to Completed: {load()}")
        start = time.perf_counter()
        repo = render(template, work / "pipeline")
        env = sync(repo)
        commit_lock(repo)  # the worker runs the deployed commit's uv.lock
        setup = time.perf_counter() - start  # render + install, before the server
        prefect = repo / ".venv" / "bin" / "prefect"
        rendered = answers_of(repo)
        with running_server(prefect, work / "home", work / "server.log", env) as server:
            run_env = {**env, **server.env(), "WAREHOUSE_DSN": f"sqlite:///{work}/w.db"}
            start = time.perf_counter()
            run(
                [uv, "run", "python", "-m", "sales_etl.ops", "reconcile", "--env", "dev"],
                cwd=repo,
                env=run_env,
            )
            reconcile = time.perf_counter() - start  # work pool, limits, automation, deploys
            run_on_worker(prefect, "sales-etl-dev", "sales-etl/dev", repo, run_env, server.api_url)
            pipeline = setup + time.perf_counter() - start

            start = time.perf_counter()
            floor_dir = work / "floor-flow"
            floor_dir.mkdir()
            (floor_dir / "pyproject.toml").write_text(
                BARE_PYPROJECT.format(
                    python=rendered["python_version"], prefect=rendered["prefect_version"]
                )
            )
            (floor_dir / "flow.py").write_text(ONE_FILE_FLOW)
            (floor_dir / "prefect.yaml").write_text(
                ONE_FILE_PREFECT_YAML.format(directory=floor_dir)
            )
            floor_env = {**repo_env(str(rendered["python_version"])), **server.env()}
            run([uv, "sync", "--quiet"], cwd=floor_dir, env=floor_env)
            floor_setup = time.perf_counter() - start
            floor_prefect = floor_dir / ".venv" / "bin" / "prefect"
            run(
                [str(floor_prefect), "work-pool", "create", "floor", "--type", "process"],
                cwd=floor_dir,
                env=floor_env,
            )
            run(
                [str(floor_prefect), "--no-prompt", "deploy", "--name", "floor"],
                cwd=floor_dir,
                env=floor_env,
            )
            floor_deploy = time.perf_counter() - start - floor_setup  # work pool and deploy
            run_on_worker(
                floor_prefect, "floor", "floor/floor", floor_dir, floor_env, server.api_url
            )
            one_file = time.perf_counter() - start
        ratio = pipeline / one_file
        print(
            f"render to Completed: default pipeline {pipeline:.1f} s "
            f"(render + uv sync {setup:.1f} s, reconcile {reconcile:.1f} s, worker and run "
            f"{pipeline - setup - reconcile:.1f} s), bare Prefect project {one_file:.1f} s "
            f"(uv sync {floor_setup:.1f} s, work pool and deploy {floor_deploy:.1f} s, worker "
            f"and run {one_file - floor_setup - floor_deploy:.1f} s), "
            f"ratio {ratio:.2f}x (budget {args.budget}x); "
            f"load average at the end {load()}"
        )
        if ratio > args.budget:
            raise SystemExit(1)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
