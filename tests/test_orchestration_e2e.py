"""Orchestrator state as code, on a real local Prefect server with the default render.

One server for the module: reconcile the first environment (twice: the second finds nothing to
do), then check what the declared state does at run time: the tag limit of
config/orchestration.yaml holds a bulk flow to L task runs at once, a worker runs the ETL
deployment, its completion triggers the downstream publish deployment, and the run-summary
artifact reads back through the API. Limits are per environment: a dev run holding all of dev's
slots does not delay a prod run, and a smoke run starts no downstream deployment.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.concurrency_bench import (
    BOUNDED_CEILING,
    Span,
    api,
    max_running,
    start_bulk_flow,
    task_spans,
    wall_seconds,
)
from tests.e2e.server import Server, running_server, running_worker
from tests.rendering import BIN, UNHEARD_ALERTS, answers_of, commit_lock, run, sync

# One pytest worker takes the whole module: its fixture (a server, an install and two
# reconciles, about a minute on 2 cores) is set up once, not once per worker with one of its tests.
pytestmark = pytest.mark.xdist_group("orchestration")

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Pipeline:
    repo: Path
    env: dict[str, str]
    server: Server
    answers: dict[str, Any]
    reconcile_output: list[str]

    @property
    def environment(self) -> str:
        return self.answers["environments"][0]

    @property
    def slug(self) -> str:
        return self.answers["project_slug"]

    @property
    def last_environment(self) -> str:
        return self.answers["environments"][-1]

    @property
    def package(self) -> str:
        return self.answers["package_name"]

    def limit(self, environment: str | None = None) -> tuple[str, int]:
        """The first tag limit's name on the server in an environment, and its value."""
        (tag, limit), *_ = self.answers["concurrency_limits"].items()
        return f"{tag}-{environment or self.environment}", limit

    def reconcile(
        self, *args: str, environment: str | None = None, env: dict[str, str] | None = None
    ) -> str:
        environment = environment or self.environment
        command = ["python", "-m", f"{self.package}.ops", "reconcile", "--env", environment]
        environ = {**self.env, **(env or {})}
        return run([str(BIN / "uv"), "run", *command, *args], cwd=self.repo, env=environ)


@pytest.fixture(scope="module")
def pipeline(default_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    workdir = tmp_path_factory.mktemp("orchestration")
    repo = shutil.copytree(default_repo, workdir / "pipeline")
    env = sync(repo)
    # A process worker clones the commit and runs its uv.lock: commit the lock the sync wrote.
    commit_lock(repo)
    prefect = repo / ".venv" / "bin" / "prefect"
    with running_server(prefect, workdir / "home", workdir / "server.log", env) as server:
        pipeline = Pipeline(repo, {**env, **server.env()}, server, answers_of(repo), [])
        pipeline.reconcile_output += [pipeline.reconcile(), pipeline.reconcile()]
        yield pipeline


def wait_for(api_url: str, flow_run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow_run = api(f"{api_url}/flow_runs/{flow_run_id}")
        if flow_run["state"]["type"] in FINAL:
            return flow_run
        time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout:.0f} s")


def runs_of(api_url: str, deployment_id: str) -> list[dict[str, Any]]:
    return api(
        f"{api_url}/flow_runs/filter",
        {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "START_TIME_DESC"},
    )


@pytest.mark.slow
def test_reconcile_applies_then_finds_nothing_to_do(pipeline: Pipeline) -> None:
    first, second = pipeline.reconcile_output
    assert f"create  deployment   {pipeline.slug}/{pipeline.environment}" in first
    assert f"create  deployment   {pipeline.slug}-publish/{pipeline.environment}" in first
    assert f"create  automation   {pipeline.slug}/{pipeline.environment}/failed-runs" in first
    assert "No changes" in second
    assert "create" not in second and "update" not in second


@pytest.mark.slow
def test_tag_limit_caps_concurrent_task_runs(pipeline: Pipeline) -> None:
    tag, limit = pipeline.limit()
    tasks = 2 * limit  # one thread each: two waves if the limit holds, one if it does not
    flow_run_id = start_bulk_flow(pipeline.server.api_url, pipeline.env, tag, tasks, 2.0)
    spans = task_spans(pipeline.server.api_url, flow_run_id)
    assert len(spans) == tasks
    peak = max_running(spans)
    print(f"\ntag '{tag}' limit {limit}: at most {peak} of {tasks} task runs ran at once")
    assert 2 <= peak <= limit


@pytest.mark.slow
def test_bounded_fan_out_keeps_the_limit_and_comes_near_the_ideal(pipeline: Pipeline) -> None:
    """The example flow's map_under_limit: no task waits on the server's back-off for a slot."""
    tag, limit = pipeline.limit()
    tasks, seconds = 3 * limit, 2.0
    flow_run_id = start_bulk_flow(
        pipeline.server.api_url, pipeline.env, tag, tasks, seconds, bound=limit
    )
    spans = task_spans(pipeline.server.api_url, flow_run_id)
    assert len(spans) == tasks
    ratio = wall_seconds(spans) / (math.ceil(tasks / limit) * seconds)
    print(f"\nmap_under_limit, {tasks} x {seconds:g} s under limit {limit}: ratio {ratio:.2f}")
    assert max_running(spans) <= limit
    assert ratio <= BOUNDED_CEILING


@pytest.mark.slow
def test_completion_triggers_the_downstream_deployment_and_artifacts_read_back(
    pipeline: Pipeline,
) -> None:
    api_url, slug, environment = pipeline.server.api_url, pipeline.slug, pipeline.environment
    upstream = api(f"{api_url}/deployments/name/{slug}/{environment}")
    downstream = api(f"{api_url}/deployments/name/{slug}-publish/{environment}")
    assert runs_of(api_url, downstream["id"]) == []
    worker_env = {**pipeline.env, "WAREHOUSE_DSN": f"sqlite:///{pipeline.repo / 'warehouse.db'}"}
    prefect = pipeline.repo / ".venv" / "bin" / "prefect"
    worker = [str(prefect), "worker", "start", "--pool", f"{slug}-{environment}"]
    log = pipeline.repo.parent / "worker.log"
    with running_worker(worker, cwd=pipeline.repo, env=worker_env, log=log):
        run_id = api(f"{api_url}/deployments/{upstream['id']}/create_flow_run", {})["id"]
        etl = wait_for(api_url, run_id)
        assert etl["state"]["type"] == "COMPLETED", log.read_text()[-3000:]
        deadline = time.monotonic() + 120
        while not (triggered := runs_of(api_url, downstream["id"])):
            assert time.monotonic() < deadline, "the trigger started no publish run"
            time.sleep(1)
        publish = wait_for(api_url, triggered[0]["id"])
    assert publish["state"]["type"] == "COMPLETED", log.read_text()[-3000:]
    assert publish["parameters"] == {"upstream_flow_run": f"prefect.flow-run.{run_id}"}
    started, upstream_ended = (
        datetime.fromisoformat(publish["start_time"]),
        datetime.fromisoformat(etl["end_time"]),
    )
    assert started >= upstream_ended

    summary = api(f"{api_url}/artifacts/{slug}-run-summary/latest")
    assert summary["flow_run_id"] == run_id
    data = json.loads(summary["data"]) if isinstance(summary["data"], str) else summary["data"]
    rows = sum(batch["rows"] for batch in data)
    assert rows > 0
    report = api(f"{api_url}/artifacts/{slug}-report/latest")
    assert report["flow_run_id"] == publish["id"]
    assert f"**{rows} rows**" in report["data"]


# While it holds every slot of dev's copy of the warehouse limit, as a dev run would, this
# process runs the generated ETL flow as prod (PIPELINE_ENV), then as dev with a 3 s bound.
HOLD_DEV_LIMIT = """
import json, os, time
from prefect.concurrency.sync import concurrency
from {package}._internal.config import limit_name, tag_limit
from {package}.flows.etl import WAREHOUSE_TAG, etl

dev, prod, out = "{dev}", "{prod}", {{}}
held = tag_limit(WAREHOUSE_TAG, dev)
with concurrency("tag:" + limit_name(WAREHOUSE_TAG, dev), occupy=held, timeout_seconds=30):
    start = time.monotonic()
    with concurrency("tag:" + limit_name(WAREHOUSE_TAG, prod), occupy=held, timeout_seconds=5):
        out["prod_acquire_seconds"] = time.monotonic() - start
    os.environ["PIPELINE_ENV"] = prod
    os.environ["PIPELINE_TASK_TIMEOUT"] = "30"  # a blocked acquire fails instead of waiting
    start = time.monotonic()
    out["prod_state"] = etl(return_state=True).type.value
    out["prod_seconds"] = time.monotonic() - start
    os.environ["PIPELINE_ENV"] = dev
    os.environ["PIPELINE_TASK_TIMEOUT"] = "3"
    start = time.monotonic()
    state = etl(return_state=True)
    out["dev_seconds"] = time.monotonic() - start
    out["dev_state"] = state.type.value
    try:
        state.result()
    except Exception as error:
        out["dev_error"] = str(error)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_dev_run_holding_its_whole_limit_does_not_delay_a_prod_run(pipeline: Pipeline) -> None:
    dev, prod = pipeline.environment, pipeline.last_environment
    assert dev != prod
    # prod, the last environment, requires an alerts target (ops/preflight.py).
    output = pipeline.reconcile("--skip-deploy", environment=prod, env=UNHEARD_ALERTS)
    assert f"create  tag limit    {pipeline.limit(prod)[0]}" in output
    assert f"create  global limit {pipeline.slug}-source-reads-{prod}" in output
    api_url = pipeline.server.api_url
    names = {limit["name"] for limit in api(f"{api_url}/v2/concurrency_limits/filter", {})}
    for environment in (dev, prod):
        assert f"tag:{pipeline.limit(environment)[0]}" in names
        assert f"{pipeline.slug}-source-reads-{environment}" in names
    tag = next(iter(pipeline.answers["concurrency_limits"]))
    assert f"tag:{tag}" not in names  # no limit every environment shares

    script = HOLD_DEV_LIMIT.format(package=pipeline.package, dev=dev, prod=prod)
    env = {**pipeline.env, "WAREHOUSE_DSN": f"sqlite:///{pipeline.repo / 'limits.db'}"}
    python = str(pipeline.repo / ".venv" / "bin" / "python")
    result = subprocess.run(
        [python, "-c", script],
        cwd=pipeline.repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\nwith dev's slots held: {out}")
    assert out["prod_acquire_seconds"] < 5
    assert out["prod_state"] == "COMPLETED"
    assert out["dev_state"] == "FAILED"
    dev_limit = pipeline.limit(dev)[0]
    assert f"of the task tag limit on '{dev_limit}' were not free within 3 s" in out["dev_error"]


@pytest.mark.slow
def test_a_smoke_run_does_not_trigger_the_downstream_deployment(pipeline: Pipeline) -> None:
    api_url, slug, environment = pipeline.server.api_url, pipeline.slug, pipeline.environment
    downstream = api(f"{api_url}/deployments/name/{slug}-publish/{environment}")
    before = {r["id"] for r in runs_of(api_url, downstream["id"])}
    worker_env = {**pipeline.env, "WAREHOUSE_DSN": f"sqlite:///{pipeline.repo / 'smoke.db'}"}
    prefect = pipeline.repo / ".venv" / "bin" / "prefect"
    worker = [str(prefect), "worker", "start", "--pool", f"{slug}-{environment}"]
    log = pipeline.repo.parent / "smoke-worker.log"
    smoke = [str(pipeline.repo / ".venv" / "bin" / "python"), "-m", f"{pipeline.package}.ops.smoke"]
    with running_worker(worker, cwd=pipeline.repo, env=worker_env, log=log):
        output = run([*smoke, "--env", environment, "--timeout", "120"], pipeline.repo, worker_env)
    assert f"of {slug}/{environment} (version " in output and "Completed." in output, output
    upstream = api(f"{api_url}/deployments/name/{slug}/{environment}")
    (smoke_run, *_) = runs_of(api_url, upstream["id"])
    assert smoke_run["name"] == f"smoke-{environment}"
    # The declared smoke parameters (config/orchestration.yaml), not the deployment's {}.
    assert smoke_run["parameters"] == {"batch_size": 50}
    # The Completed event reaches the trigger within a second on this server: give it six.
    time.sleep(6)
    assert {r["id"] for r in runs_of(api_url, downstream["id"])} == before


@pytest.mark.slow
def test_a_smoke_run_behind_a_running_run_is_reported_queued(pipeline: Pipeline) -> None:
    """Without a worker, behind a run of its deployment that holds the environment's one slot:
    exit 3, "queued behind" that run, not a failed smoke test."""
    api_url, slug, environment = pipeline.server.api_url, pipeline.slug, pipeline.environment
    upstream = api(f"{api_url}/deployments/name/{slug}/{environment}")
    ahead = api(f"{api_url}/deployments/{upstream['id']}/create_flow_run", {"name": "ahead"})
    set_state(api_url, ahead["id"], "RUNNING")
    smoke = [str(pipeline.repo / ".venv" / "bin" / "python"), "-m", f"{pipeline.package}.ops.smoke"]
    try:
        result = subprocess.run(
            [*smoke, "--env", environment, "--timeout", "3"],
            cwd=pipeline.repo,
            env=pipeline.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        # Cancelled, not Completed: a Completed run would start the publish deployment.
        for run_ in runs_of(api_url, upstream["id"]):
            if run_["state"]["type"] not in FINAL:
                set_state(api_url, run_["id"], "CANCELLED")
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert f"is queued behind ahead ({ahead['id']}, Running)" in output
    assert "failed its smoke test" not in output


# The Kubernetes worker's part for a pod whose image cannot be pulled, played by its own code
# (prefect-kubernetes 0.8.0's observer, this repository's environment) on the real server: it
# gets the pod's status as Kubernetes sends it, sets the run InfrastructurePending, logs the
# diagnosis to the run and emits the prefect.kubernetes.pod.pending event. The worker itself
# has set the run Pending before creating the Job.
POD_IMAGE_PULL_FAILS = """
import asyncio, logging, sys, uuid
from prefect.client.orchestration import get_client
from prefect.events.clients import get_events_client
from prefect.logging.handlers import APILogHandler
from prefect.states import Pending
from prefect_kubernetes import observer

async def main(flow_run_id: str) -> None:
    async with get_client() as client, get_events_client() as events:
        await client.set_flow_run_state(flow_run_id, Pending(), force=True)
        observer.orchestration_client, observer.events_client = client, events
        if sys.argv[4] == "event-only":
            # An observer that already logged this diagnosis (or whose log is lost) only emits.
            observer._pod_lifecycle_states.diagnosis_changed = lambda uid, key: False
        waiting = {"reason": "ErrImagePull", "message": sys.argv[2]}
        status = {
            "phase": "Pending",
            "containerStatuses": [{"name": "prefect-job", "state": {"waiting": waiting}}],
        }
        await observer._replicate_pod_event(
            event={"type": "MODIFIED", "object": {"metadata": {}}},
            uid=str(uuid.uuid4()),
            name="smoke-pod",
            namespace="sales-etl-dev",
            # As the worker labels a flow run's Job and pod.
            labels={"prefect.io/flow-run-id": flow_run_id, "prefect.io/flow-run-name": sys.argv[3]},
            status=status,
            logger=logging.getLogger("kopf"),
        )
        await APILogHandler.aflush()

asyncio.run(main(sys.argv[1]))
"""
REGISTRY_ANSWER = "failed to authorize: 401 Unauthorized"


@pytest.mark.slow
@pytest.mark.parametrize("reported", ["event-and-log", "event-only"])
def test_smoke_names_an_image_pull_failure_as_the_kubernetes_worker_reports_it(
    pipeline: Pipeline, reported: str
) -> None:
    api_url, slug, environment = pipeline.server.api_url, pipeline.slug, pipeline.environment
    upstream = api(f"{api_url}/deployments/name/{slug}/{environment}")
    before = {r["id"] for r in runs_of(api_url, upstream["id"])}
    smoke = [str(pipeline.repo / ".venv" / "bin" / "python"), "-m", f"{pipeline.package}.ops.smoke"]
    started = time.monotonic()
    process = subprocess.Popen(
        [*smoke, "--env", environment, "--timeout", "90"],
        cwd=pipeline.repo,
        env=pipeline.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (new := [r for r in runs_of(api_url, upstream["id"]) if r["id"] not in before]):
            assert time.monotonic() < deadline, "smoke started no run in 60 s"
            time.sleep(0.5)
        (smoke_run,) = new
        pod = [smoke_run["id"], REGISTRY_ANSWER, smoke_run["name"], reported]
        run(
            [sys.executable, "-c", POD_IMAGE_PULL_FAILS, *pod],
            pipeline.repo,
            pipeline.env,
            timeout=120,
        )
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
        for run_ in runs_of(api_url, upstream["id"]):
            if run_["state"]["type"] not in FINAL:
                set_state(api_url, run_["id"], "CANCELLED")
    assert process.returncode == 1, output
    assert f"smoke run {smoke_run['id']} of {slug}/{environment}" in output
    assert "image pull failed" in output, output
    if reported == "event-only":
        # From the pod event's diagnosis alone (before it, smoke waited for the deadline).
        event = "prefect.kubernetes.pod.pending of pod smoke-pod in sales-etl-dev"
        assert f"{event}, diagnosis ImagePullError" in output, output
        assert REGISTRY_ANSWER not in output, output
    else:
        # The registry's answer is only in the worker's log, whichever signal came first (the
        # server files events asynchronously).
        assert REGISTRY_ANSWER in output, output
    assert "is a worker polling" not in output
    # At once, not at the 90 s deadline.
    assert time.monotonic() - started < 80, output


def set_state(api_url: str, flow_run_id: str, state: str) -> None:
    body = {"state": {"type": state}, "force": True}
    api(f"{api_url}/flow_runs/{flow_run_id}/set_state", body)


# Two failing flow runs outside any deployment, tagged as another environment's run and as this
# environment's: only the second may fire this environment's failure automation.
FAILING_RUNS = """
from prefect import flow, tags


@flow(name="failing-example")
def failing() -> None:
    raise RuntimeError("planned failure")


for environment in ("elsewhere", "{environment}"):
    with tags("project:{slug}", "env:" + environment):
        print(failing(return_state=True).type.value)
"""


@pytest.mark.slow
def test_failure_automation_fires_for_this_environment_only(pipeline: Pipeline) -> None:
    api_url, name = pipeline.server.api_url, f"{pipeline.slug}/{pipeline.environment}/failed-runs"
    (automation,) = [a for a in api(f"{api_url}/automations/filter", {}) if a["name"] == name]
    script = FAILING_RUNS.format(environment=pipeline.environment, slug=pipeline.slug)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=pipeline.repo,
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.stdout.split() == ["FAILED", "FAILED"], result.stdout + result.stderr

    def fired() -> list[dict[str, Any]]:
        events = api(
            f"{api_url}/events/filter",
            {
                "filter": {
                    "event": {"name": ["prefect.automation.triggered"]},
                    "resource": {"id": [f"prefect.automation.{automation['id']}"]},
                },
                "limit": 10,
            },
        )
        return events["events"]

    deadline = time.monotonic() + 60
    while not fired():
        assert time.monotonic() < deadline, "the failure automation never fired"
        time.sleep(1)
    time.sleep(3)  # time for a wrongly matched second firing to show up
    assert len(fired()) == 1


def test_max_running_counts_touching_spans_apart() -> None:
    t0 = datetime(2026, 1, 1)
    spans = [
        Span(t0 + timedelta(seconds=start), t0 + timedelta(seconds=end))
        for start, end in [(0, 2), (1, 3), (2, 4), (2, 5)]
    ]
    # (0, 2) ends as (2, 4) and (2, 5) start: three at once, never four.
    assert max_running(spans) == 3
