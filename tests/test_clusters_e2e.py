"""The flow's tasks on a separate, real Dask cluster and a separate, real Ray cluster.

One Prefect server for the module. For each task runner: render, point the first environment at
a cluster started beside the server (`dask scheduler` + two `dask worker`, or `ray start
--head`, from a directory outside the repository), `make reconcile`, a process worker, then a
deployment run that must complete with every load task in a cluster process and every row
loaded, and a run whose cluster address does not answer, which must fail fast naming it.
Then the fan-out under stress: the example flow STRESS_RUNS times in one process, on that
cluster and on a local one, every run with every row (tests/e2e/fanout_stress.py).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from bench.concurrency_bench import api
from tests.e2e.cluster import Cluster, cluster_for, group_members, loads_of_run, where_tasks_ran
from tests.e2e.server import Server, free_port, running_server, running_worker
from tests.rendering import BIN, answers_of, commit_lock, render, run, sync
from tests.test_orchestration_e2e import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("clusters")]

STRESS = Path(__file__).parent / "e2e" / "fanout_stress.py"
# Flow runs per cluster in the stress. Each cycles map_bounded's bounded wait 3 times and waits
# for 8 results, at 3-6 s a run on a quiet 2-core machine (10-30 s while other tests load it),
# on 4 placements (2 runners, external and local): 10 each is 40 runs in the suite, about two
# minutes; STRESS_RUNS=50 runs the figure (25 min here, README.md "Tests").
STRESS_RUNS = int(os.environ.get("STRESS_RUNS") or 10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("clusters")
    env = dict(os.environ)
    with running_server(BIN / "prefect", workdir / "home", workdir / "server.log", env) as server:
        yield server


def point_at(repo: Path, environment: str, cluster: Cluster) -> None:
    """Set the cluster's address in the environment's job_variables.env, as the README says."""
    project = repo / "prefect.yaml"
    text, count = re.subn(
        rf"^(\s+)PIPELINE_ENV: {environment}\n",
        rf"\g<0>\g<1>{cluster.variable}: {cluster.address}\n",
        project.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    assert count == 2, "expected the etl and publish deployments of the environment"
    project.write_text(text, encoding="utf-8")


def source_rows(repo: Path) -> int:
    with (repo / "data" / "orders.csv").open(newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.DictReader(f))


def stress(repo: Path, env: dict[str, str], task_runner: str, database: Path) -> str:
    """STRESS_RUNS flow runs in one process; a lost wait fails within PIPELINE_TASK_TIMEOUT."""
    env = {**env, "WAREHOUSE_DSN": f"sqlite:///{database}", "PIPELINE_TASK_TIMEOUT": "120"}
    python = str(repo / ".venv" / "bin" / "python")
    package = answers_of(repo)["package_name"]
    command = [python, str(STRESS), str(STRESS_RUNS), task_runner, package]
    output = run(command, cwd=repo, env=env, timeout=120 + 60 * STRESS_RUNS)
    runs = re.findall(r"^run \d+: (\d+) rows loaded, (\d+) stored", output, flags=re.MULTILINE)
    assert len(runs) == STRESS_RUNS, output[-3000:]
    rows = source_rows(repo)
    assert all(int(loaded) == int(stored) == rows for loaded, stored in runs), output[-3000:]
    print("\n".join(line for line in output.splitlines() if line.startswith("run ")))
    return output


def loaded_rows(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]


@pytest.mark.parametrize("task_runner", ["dask", "ray"])
def test_tasks_run_on_the_cluster_and_an_unreachable_one_fails_fast(
    template: Path, server: Server, tmp_path: Path, task_runner: str
) -> None:
    repo = render(template, tmp_path / "pipeline", {"task_runner": task_runner})
    answers = answers_of(repo)
    environment, slug = answers["environments"][0], answers["project_slug"]
    env = {**sync(repo), **server.env()}
    # A process worker clones the commit and runs its uv.lock: commit the lock the sync wrote.
    commit_lock(repo)
    bin_dir = repo / ".venv" / "bin"
    with cluster_for(task_runner, bin_dir, tmp_path / "cluster", env) as cluster:
        assert cluster is not None
        point_at(repo, environment, cluster)
        run(["make", "reconcile", f"ENV={environment}"], cwd=repo, env=env)
        database = repo / "warehouse.db"
        worker_env = {**env, **cluster.driver_env, "WAREHOUSE_DSN": f"sqlite:///{database}"}
        worker = [str(bin_dir / "prefect"), "worker", "start", "--pool", f"{slug}-{environment}"]
        log = tmp_path / "worker.log"
        with running_worker(worker, cwd=repo, env=worker_env, log=log):
            deployment = api(f"{server.api_url}/deployments/name/{slug}/{environment}")
            create = f"{server.api_url}/deployments/{deployment['id']}/create_flow_run"
            flow_run = wait_for(server.api_url, api(create, {})["id"], timeout=300)
            assert flow_run["state"]["type"] == "COMPLETED", log.read_text()[-5000:]
            loads = loads_of_run(server.api_url, flow_run["id"], slug)
            print("\n" + "\n".join(where_tasks_ran(loads, cluster)))
            assert loads, "the run summary lists no batch"
            assert all(cluster.ran(load) for load in loads)
            if cluster.worker_pids:
                assert {load.pid for load in loads} <= set(cluster.worker_pids)
            rows = sum(load.rows for load in loads)
            assert rows == source_rows(repo) == loaded_rows(database)

            # The same deployment, pointed at a port nothing listens on for this one run.
            dead = f"127.0.0.1:{free_port()}"
            job_env = {"PIPELINE_ENV": environment, cluster.variable: dead}
            job_env["PIPELINE_CLUSTER_CONNECT_TIMEOUT"] = "3"
            failed = wait_for(
                server.api_url,
                api(create, {"job_variables": {"env": job_env}})["id"],
                timeout=180,
            )

        # The same environment's fan-out, many times over, on the cluster.
        stress_env = {**env, **cluster.env, **cluster.driver_env, "PIPELINE_ENV": environment}
        stress(repo, stress_env, task_runner, tmp_path / "stress-cluster.db")
    assert failed["state"]["type"] == "FAILED", log.read_text()[-5000:]
    message = failed["state"]["message"]
    assert f"{cluster.variable}={dead} of environment '{environment}'" in message, message
    seconds = (
        datetime.fromisoformat(failed["end_time"]) - datetime.fromisoformat(failed["start_time"])
    ).total_seconds()
    assert seconds < 60, f"the unreachable cluster took {seconds:.0f} s to fail the run"
    assert group_members(cluster.group) == [], "cluster processes outlived the test"

    # And on a local cluster of the flow-run process's own.
    local_env = {**env, **cluster.driver_env, "PIPELINE_ENV": environment}
    stress(repo, local_env, task_runner, tmp_path / "stress-local.db")
