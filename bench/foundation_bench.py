"""Foundation benchmarks, measured side by side in one run (`python -m bench.foundation_bench`).

1. copier copy with the default answers against copier rendering a one-file template (the
   floor copier itself sets), median of --copies runs each.
2. Render to a Completed run of the default pipeline against the floor a careful engineer sets
   by hand: a bare Prefect project (a pyproject.toml pinning the same Prefect, one flow file),
   `uv sync` from the same uv cache, a process work pool, `prefect deploy`, the same server and
   the same kind of worker. Each side installs its own environment and deploys from it; the
   server runs from the pipeline's environment, outside both timings; each clock stops when
   its run is seen Completed. --timeline prints where each run's time went. --rounds of it
   (3) give a median ratio, as they do for --demo; --database runs it on a server on SQLite
   (what `make demo` starts), on PostgreSQL (what a platform team runs, Prefect's production
   advice: tests/e2e/postgres.py starts one on loopback), or both, the default where PostgreSQL
   is installed. On SQLite the example flow's slot acquisitions (its rate limit, its tag limit)
   mostly meet Prefect's 503 "database is locked" (the server's increment reads, then writes, in
   one deferred SQLite transaction) and its client waits 2 s before retrying; PostgreSQL has no
   such lock.
3. With --demo, `make demo` as a whole against the same floor run by hand as a whole (its own
   server started from its own environment, stopped at the end, as make demo stops its own).

Exits 1 when a ratio is over --budget (1.2): every database's median, and make demo's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import copier

from bench.run_timeline import print_timeline
from tests.e2e import postgres
from tests.e2e.demo import api, demo, wait_for_final_state
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


def run_to_completion(server_api: str, name: str, timeout: float = 600) -> str:
    """Run the deployment to Completed; returns the flow run's id."""
    deployment = api(f"{server_api}/deployments/name/{name}")
    flow_run = api(f"{server_api}/deployments/{deployment['id']}/create_flow_run", "POST", {})
    state = wait_for_final_state(server_api, flow_run["id"], timeout)
    if state != "COMPLETED":
        raise RuntimeError(f"{name} ended {state}")
    return str(flow_run["id"])


@dataclass
class WorkerRun:
    flow_run_id: str
    completed: float  # perf_counter when Completed was seen
    stopped: float  # perf_counter when the worker had stopped


def run_on_worker(
    prefect: Path, pool: str, deployment: str, cwd: Path, env: dict[str, str], api_url: str
) -> WorkerRun:
    """Start a worker on the pool, run the deployment to Completed, stop the worker."""
    with running_worker(
        [str(prefect), "worker", "start", "--pool", pool],
        cwd=cwd,
        env=env,
        log=cwd.parent / f"{pool}-worker.log",
    ):
        flow_run_id = run_to_completion(api_url, deployment)
        completed = time.perf_counter()
    return WorkerRun(flow_run_id, completed, time.perf_counter())


def write_floor_project(directory: Path, rendered: dict[str, Any]) -> None:
    """The bare Prefect project: pyproject pinning the pipeline's Prefect, one flow file."""
    directory.mkdir()
    (directory / "pyproject.toml").write_text(
        BARE_PYPROJECT.format(
            python=rendered["python_version"], prefect=rendered["prefect_version"]
        )
    )
    (directory / "flow.py").write_text(ONE_FILE_FLOW)
    (directory / "prefect.yaml").write_text(ONE_FILE_PREFECT_YAML.format(directory=directory))


def deploy_floor(directory: Path, env: dict[str, str]) -> Path:
    """A process work pool and `prefect deploy` from the floor's own environment."""
    prefect = directory / ".venv" / "bin" / "prefect"
    run([str(prefect), "work-pool", "create", "floor", "--type", "process"], cwd=directory, env=env)
    run([str(prefect), "--no-prompt", "deploy", "--name", "floor"], cwd=directory, env=env)
    return prefect


def render_to_completed(
    template: Path, work: Path, timeline: bool, database_url: str | None = None
) -> float:
    """Render to Completed, the pipeline and the floor on one server; prints, returns the ratio.

    The server starts from the pipeline's environment once it exists, outside both timings,
    on its SQLite database or, with DATABASE_URL, on that PostgreSQL database. Each side's
    clock stops when its run is seen Completed; stopping its worker is printed apart, as what
    follows the first Completed run.
    """
    work.mkdir(parents=True)
    uv = str(BIN / "uv")
    start = time.perf_counter()
    repo = render(template, work / "pipeline")
    env = sync(repo)
    commit_lock(repo)  # the worker runs the deployed commit's uv.lock
    setup = time.perf_counter() - start  # render + install, before the server
    prefect = repo / ".venv" / "bin" / "prefect"
    rendered = answers_of(repo)
    server_env = {**env, **({postgres.DATABASE_URL_SETTING: database_url} if database_url else {})}
    with running_server(prefect, work / "home", work / "server.log", server_env) as server:
        run_env = {**env, **server.env(), "WAREHOUSE_DSN": f"sqlite:///{work}/w.db"}
        start = time.perf_counter()
        run(
            [uv, "run", "python", "-m", "sales_etl.ops", "reconcile", "--env", "dev"],
            cwd=repo,
            env=run_env,
        )
        reconcile = time.perf_counter() - start  # work pool, limits, automation, deploys
        piped = run_on_worker(
            prefect, "sales-etl-dev", "sales-etl/dev", repo, run_env, server.api_url
        )
        pipeline = setup + piped.completed - start

        start = time.perf_counter()
        floor_dir = work / "floor-flow"
        write_floor_project(floor_dir, rendered)
        floor_env = {**repo_env(str(rendered["python_version"])), **server.env()}
        run([uv, "sync", "--quiet"], cwd=floor_dir, env=floor_env)
        floor_setup = time.perf_counter() - start
        floor_prefect = deploy_floor(floor_dir, floor_env)
        floor_deploy = time.perf_counter() - start - floor_setup  # work pool and deploy
        floored = run_on_worker(
            floor_prefect, "floor", "floor/floor", floor_dir, floor_env, server.api_url
        )
        one_file = floored.completed - start
        if timeline:
            print_timeline(server.api_url, piped.flow_run_id, "default pipeline's run")
            print_timeline(server.api_url, floored.flow_run_id, "bare Prefect project's run")
    ratio = pipeline / one_file
    print(
        f"render to Completed: default pipeline {pipeline:.1f} s "
        f"(render + uv sync {setup:.1f} s, reconcile {reconcile:.1f} s, worker and run "
        f"{pipeline - setup - reconcile:.1f} s; its worker then stopped in "
        f"{piped.stopped - piped.completed:.1f} s), bare Prefect project {one_file:.1f} s "
        f"(uv sync {floor_setup:.1f} s, work pool and deploy {floor_deploy:.1f} s, worker "
        f"and run {one_file - floor_setup - floor_deploy:.1f} s; its worker then stopped in "
        f"{floored.stopped - floored.completed:.1f} s), ratio {ratio:.2f}x"
    )
    return ratio


def demo_against_floor(work: Path) -> float:
    """`make demo` as a whole against the floor run by hand as a whole; prints, returns the
    ratio. The floor by hand: write the bare project, `uv sync`, start `prefect server` from
    its environment, a process work pool, `prefect deploy`, a worker, the run to Completed,
    stop the worker and the server: what `make demo` does, with nothing of the template's."""
    work.mkdir(parents=True)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as said:  # the demo's own step lines
        result = demo(work / "demo", {})
    made = time.perf_counter() - start
    if result.state != "COMPLETED":
        print(said.getvalue())
        raise RuntimeError(f"make demo's run ended {result.state}")
    rendered = answers_of(result.repo)

    start = time.perf_counter()
    floor_dir = work / "floor-by-hand"
    write_floor_project(floor_dir, rendered)
    env = repo_env(str(rendered["python_version"]))
    run([str(BIN / "uv"), "sync", "--quiet"], cwd=floor_dir, env=env)
    prefect = floor_dir / ".venv" / "bin" / "prefect"
    with running_server(prefect, work / "floor-home", work / "floor-server.log", env) as server:
        env = {**env, **server.env()}
        deploy_floor(floor_dir, env)
        run_on_worker(prefect, "floor", "floor/floor", floor_dir, env, server.api_url)
    by_hand = time.perf_counter() - start
    print(
        f"make demo as a whole: {made:.1f} s (its steps: "
        + ", ".join(f"{title} {seconds:.1f}" for title, seconds in result.timings.items())
        + f"), the bare Prefect project by hand {by_hand:.1f} s, ratio {made / by_hand:.2f}x"
    )
    return made / by_hand


def median_of(name: str, ratios: list[float]) -> float:
    """Print the rounds' ratios and their median; return the median."""
    median = statistics.median(ratios)
    each = " / ".join(f"{ratio:.2f}x" for ratio in ratios)
    print(f"{name}, median of {len(ratios)}: {median:.2f}x ({each})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--budget", type=float, default=1.2)
    parser.add_argument(
        "--timeline", action="store_true", help="print each run's states, task runs and logs"
    )
    parser.add_argument(
        "--demo", action="store_true", help="also make demo against the floor run by hand"
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres", "both"),
        default="both" if postgres.available() else "sqlite",
        help="the shared server's database for render to Completed (both, where PostgreSQL "
        "is installed)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of render to Completed per database, of make demo",
    )
    args = parser.parse_args()
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
        ratios = {}
        databases = ("sqlite", "postgres") if args.database == "both" else (args.database,)
        for database in databases:
            rounds = []
            for number in range(1, args.rounds + 1):
                print(f"{database}, round {number}; load average before: {load()}")
                with (
                    postgres.running_postgres()
                    if database == "postgres"
                    else contextlib.nullcontext()
                ) as url:
                    directory = work / f"{database}-{number}"
                    rounds.append(render_to_completed(template, directory, args.timeline, url))
            name = f"render to Completed, {database} server"
            ratios[name] = median_of(name, rounds)
        if args.demo:
            demos = []
            for number in range(1, args.rounds + 1):
                print(f"make demo, round {number}; load average before: {load()}")
                demos.append(demo_against_floor(work / f"demo-{number}"))
            ratios["make demo"] = median_of("make demo", demos)
        over = [name for name, ratio in ratios.items() if ratio > args.budget]
        print(
            f"budget {args.budget}x: "
            + ("over for " + ", ".join(over) if over else "met")
            + f"; load average at the end {load()}"
        )
        if over:
            raise SystemExit(1)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
