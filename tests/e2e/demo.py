"""`make demo`: render the template's defaults and run them end to end on a local Prefect server.

Steps: render with copier, install the generated repository with uv, start `prefect server`
(SQLite, 127.0.0.1, a free port, its own PREFECT_HOME), reconcile the first environment (work
pool, concurrency limits, `prefect deploy`), start a process worker, run the deployment and wait
for a final state. Everything started is stopped on the way out, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.cluster import demo_cluster, print_where_tasks_ran
from tests.e2e.server import running_server, running_worker
from tests.rendering import ROOT, answers_of, commit_lock, render, run, snapshot_template, sync

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# How often the state is read: a final state is seen at most this late (a timing's error).
STATE_POLL_SECONDS = 0.25
RETRIED_STATUSES = {429, 502, 503}


@dataclass
class DemoResult:
    repo: Path
    state: str = "NOT RUN"
    run_url: str = ""
    rows_loaded: int = 0
    artifact: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # Where the rows went, when not the process demo's warehouse.db beside the repository.
    warehouse: str = ""


class Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int, result: DemoResult) -> None:
        self.total, self.done, self.result = total, 0, result

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        print(f"[{self.done}/{self.total}] {title} ...", flush=True)
        start = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            self.result.timings[title] = seconds
            print(f"      {title}: {seconds:.1f} s", flush=True)


def api(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    # Like Prefect's own client: a busy server (SQLite locked on two loaded cores) answers 503
    # for a moment, so retry those few statuses with a growing pause, a bounded number of times.
    for pause in (1, 2, 4, 8, 16):
        try:
            return _send(request)
        except urllib.error.HTTPError as error:
            if error.code not in RETRIED_STATUSES:
                raise
        time.sleep(pause)
    return _send(request)


def _send(request: urllib.request.Request) -> Any:
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def wait_for_final_state(api_url: str, run_id: str, timeout: float) -> str:
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        state = api(f"{api_url}/flow_runs/{run_id}")["state"]["type"]
        if state != last:
            print(f"      flow run {state.lower()}", flush=True)
            last = state
        if state in FINAL_STATES:
            return state
        time.sleep(STATE_POLL_SECONDS)
    raise TimeoutError(f"flow run {run_id} not finished after {timeout:.0f} s (last: {last})")


def demo(workdir: Path, answers: dict[str, Any], timeout: float = 300) -> DemoResult:
    repo = workdir / "pipeline"
    result = DemoResult(repo=repo)
    steps = Steps(8, result)
    uv = str(Path(sys.executable).parent / "uv")
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with steps.step("Render the template with copier"):
        render(snapshot_template(workdir / "template"), repo, answers)
        settings = answers_of(repo)
        environment = settings["environments"][0]
        package, slug = settings["package_name"], settings["project_slug"]
    with steps.step("Install the generated repository (uv sync)"):
        env = sync(repo)
        # The worker clones the deployed commit and runs its uv.lock: commit the lock sync wrote.
        commit_lock(repo)
    prefect = repo / ".venv" / "bin" / "prefect"
    # The warehouse DSN is the pipeline's one secret: it reaches the worker (env backend) or a
    # Secret block (prefect backend) through the environment, never through a file.
    secret_env = {"WAREHOUSE_DSN": f"sqlite:///{repo / 'warehouse.db'}"}
    with contextlib.ExitStack() as services:
        with steps.step("Start a local Prefect server (SQLite, 127.0.0.1)"):
            server = services.enter_context(
                running_server(prefect, workdir / "prefect-home", logs / "server.log", env)
            )
        run_env = {**env, **server.env()}
        # task_runner dask or ray: a cluster of its own beside the server, for the worker's runs.
        cluster = services.enter_context(
            demo_cluster(settings["task_runner"], repo, workdir, run_env)
        )
        with steps.step(f"Reconcile '{environment}': work pool, limits, prefect deploy"):
            if settings["secret_backend"] == "prefect":
                sync_secrets = ["python", "-m", f"{package}.ops.sync_secrets", "--env", environment]
                run([uv, "run", *sync_secrets], cwd=repo, env={**run_env, **secret_env})
            reconcile = ["python", "-m", f"{package}.ops", "reconcile", "--env", environment]
            print(run([uv, "run", *reconcile], cwd=repo, env=run_env), end="")
        with steps.step("Start a process worker"):
            worker_env = {**run_env, **(secret_env if settings["secret_backend"] == "env" else {})}
            services.enter_context(
                running_worker(
                    [str(prefect), "worker", "start", "--pool", f"{slug}-{environment}"],
                    cwd=repo,
                    env=worker_env,
                    log=logs / "worker.log",
                )
            )
        with steps.step("Run the deployment and wait for a final state"):
            deployment = api(f"{server.api_url}/deployments/name/{slug}/{environment}")
            flow_run = api(
                f"{server.api_url}/deployments/{deployment['id']}/create_flow_run", "POST", {}
            )
            result.run_url = f"{server.url}/runs/flow-run/{flow_run['id']}"
            print(f"      {result.run_url}", flush=True)
            result.state = wait_for_final_state(server.api_url, flow_run["id"], timeout)
        with steps.step("Read back what the run did"):
            result.rows_loaded = count_rows(repo / "warehouse.db")
            result.artifact = read_artifact(server.api_url, f"{slug}-run-summary")
            if cluster:
                print_where_tasks_ran(server.api_url, flow_run["id"], slug, cluster)
        with steps.step("Stop the worker and the server"):
            services.close()
    return result


def count_rows(database: Path) -> int:
    if not database.exists():
        return 0
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]


def read_artifact(api_url: str, key: str) -> list[dict[str, Any]]:
    latest = api(f"{api_url}/artifacts/{key}/latest")
    data = latest["data"]
    return json.loads(data) if isinstance(data, str) else data


def report(result: DemoResult) -> None:
    print()
    print(f"Flow run: {result.state}  ({result.run_url})")
    print(
        f"Rows loaded into {result.warehouse or result.repo / 'warehouse.db'}: {result.rows_loaded}"
    )
    print(f"Run summary artifact: {len(result.artifact)} batch(es)")
    print("Time per step:")
    for title, seconds in result.timings.items():
        print(f"  {seconds:6.1f} s  {title}")
    print(f"  {sum(result.timings.values()):6.1f} s  in all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument(
        "--dir",
        type=Path,
        default=ROOT / "demo",
        help="where to render and run (replaced on each run; default ./demo)",
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an answer other than the default, as for copier --data",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    answers = dict(item.split("=", 1) for item in args.data)
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    try:
        if answers.get("runtime") == "docker":
            from tests.e2e.docker_demo import docker_demo  # imports demo: import it late

            result = docker_demo(args.dir.resolve(), answers, args.timeout)
        else:
            result = demo(args.dir.resolve(), answers, args.timeout)
    except KeyboardInterrupt:
        print("\nInterrupted: everything the demo started was stopped and removed.")
        return 130
    report(result)
    return 0 if result.state == "COMPLETED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
