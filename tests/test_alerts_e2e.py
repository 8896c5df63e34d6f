"""Alerts reach a person: the default render's automations on a real local server, notifying a
webhook receiver on 127.0.0.1 through the environment's notification block.

One server for the module, its events, triggers and actions services on. The target is a
custom-webhook block made by `ops reconcile` from the secret alerts-target (the env backend's
ALERTS_TARGET, as CI would pass it); the late-runs, heartbeat-missed and pool-not-ready windows
are shortened in the repository's own config/orchestration.yaml, as a team would tune them. Each
test then causes one thing to go wrong and expects exactly one notification that names the
project, the environment and the run or pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.concurrency_bench import api
from tests.e2e.server import Server, free_port, running_server, running_worker, stop
from tests.rendering import BIN, answers_of, run, sync

pytestmark = [pytest.mark.xdist_group("alerts"), pytest.mark.slow]

# Windows (seconds) for the test, set through the automations' own `within`.
WINDOWS = {"late-runs": 10, "heartbeat-missed": 12, "pool-not-ready": 10}
# Proactive triggers are evaluated every 5 s (PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY):
# a second notification, if one were coming, shows up within this.
SETTLE_SECONDS = 8
SERVER_SETTINGS = {
    # The services alerts depend on (on by default; stated so a change in defaults shows).
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "true",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "true",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "true",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "true",
    # The foreman marks silent workers offline and pools not ready; every 2 s instead of 15.
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "2",
}


@dataclass
class Receiver:
    """What the webhook on 127.0.0.1 received: one JSON body per notification."""

    url: str
    # (time.monotonic() when it arrived, the body)
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def naming(self, *words: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t, b) for t, b in self.received if all(w in json.dumps(b) for w in words)]


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with receiver.lock:
                receiver.received.append((time.monotonic(), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{port}/alerts"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class Alerting:
    repo: Path
    env: dict[str, str]
    server: Server
    receiver: Receiver
    slug: str
    environment: str
    reconcile_output: str

    @property
    def api_url(self) -> str:
        return self.server.api_url

    @property
    def label(self) -> str:
        """What every notification's subject starts with."""
        return f"[{self.slug}/{self.environment}]"


def tune_windows(repo: Path) -> None:
    """The team's side: a custom webhook as the target, and shorter windows."""
    path = repo / "config" / "orchestration.yaml"
    orchestration = yaml.safe_load(path.read_text(encoding="utf-8"))
    orchestration["notifications"]["block_type"] = "custom-webhook"
    for key, seconds in WINDOWS.items():
        orchestration["automations"][key]["trigger"]["within"] = seconds
    path.write_text(yaml.safe_dump(orchestration, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module")
def alerting(default_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alerting]:
    workdir = tmp_path_factory.mktemp("alerts")
    repo = shutil.copytree(default_repo, workdir / "pipeline")
    tune_windows(repo)
    answers = answers_of(repo)
    slug, environment = answers["project_slug"], answers["environments"][0]
    # The server (this suite's Prefect, the version the template pins) starts while the
    # repository installs: the two waits overlap.
    server_env = {**os.environ, **SERVER_SETTINGS}
    with (
        ThreadPoolExecutor(max_workers=1) as installing,
        webhook_receiver() as receiver,
    ):
        synced = installing.submit(sync, repo)
        server = running_server(
            BIN / "prefect", workdir / "home", workdir / "server.log", server_env
        )
        with server as server:
            env = synced.result(timeout=900)
            # The CI secret of the env backend; nothing else holds the target.
            deploy_env = {**env, **server.env(), "ALERTS_TARGET": receiver.url}
            python = str(repo / ".venv" / "bin" / "python")
            command = [python, "-m", f"{answers['package_name']}.ops", "reconcile"]
            output = run([*command, "--env", environment, "--skip-deploy"], repo, deploy_env)
            env = {**env, **server.env()}
            yield Alerting(repo, env, server, receiver, slug, environment, output)


def wait_until(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(1)
    return result


def exactly_one(alerting: Alerting, what: str, *words: str) -> dict[str, Any]:
    """The one notification naming all of `words`, once a duplicate has had time to arrive."""
    ((first, _), *_) = wait_until(
        f"notification of {what}", lambda: alerting.receiver.naming(*words)
    )
    time.sleep(max(0.0, first + SETTLE_SECONDS - time.monotonic()))
    found = [body for _, body in alerting.receiver.naming(*words)]
    assert len(found) == 1, f"{len(found)} notifications of {what}: {found}"
    (body,) = found
    assert body["subject"].startswith(alerting.label), body
    return body


def run_flow_script(alerting: Alerting, script: str, **env: str) -> subprocess.Popen[str]:
    """A flow run of this project and environment, outside any deployment."""
    header = (
        "from prefect import flow, tags\n"
        f"TAGS = ('project:{alerting.slug}', 'env:{alerting.environment}')\n"
    )
    return subprocess.Popen(
        [str(alerting.repo / ".venv" / "bin" / "python"), "-c", header + script],
        cwd=alerting.repo,
        env={**alerting.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def flow_runs_named(alerting: Alerting, name: str) -> list[dict[str, Any]]:
    return api(f"{alerting.api_url}/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})


def test_reconcile_makes_the_target_without_showing_it(alerting: Alerting) -> None:
    block = f"custom-webhook/{alerting.slug}-{alerting.environment}-alerts"
    assert f"create  notification {block}  from secret 'alerts-target'" in alerting.reconcile_output
    assert alerting.receiver.url not in alerting.reconcile_output


FAILING = """
@flow(name="alerts-failing", flow_run_name="alerts-failed-run")
def failing() -> None:
    raise RuntimeError("planned failure")


with tags(*TAGS):
    print(failing(return_state=True).type.value)
"""

SLEEPING = """
import time


@flow(name="alerts-sleeping", flow_run_name="alerts-killed-run")
def sleeping() -> None:
    time.sleep(600)


with tags(*TAGS):
    sleeping()
"""


def fail_a_run(alerting: Alerting) -> str:
    process = run_flow_script(alerting, FAILING)
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        stop(process)  # type: ignore[arg-type]
    return output


def make_a_late_run(alerting: Alerting) -> str:
    """A run due a minute ago that no worker takes: Prefect marks it Late, and it stays so."""
    flow = api(f"{alerting.api_url}/flows/", {"name": "alerts-late"})
    due = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    flow_run = api(
        f"{alerting.api_url}/flow_runs/",
        {
            "flow_id": flow["id"],
            "name": "alerts-late-run",
            "tags": [f"project:{alerting.slug}", f"env:{alerting.environment}"],
            "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": due}},
        },
    )
    return flow_run["id"]


def heartbeats_of(alerting: Alerting, flow_run_id: str) -> list[dict[str, Any]]:
    events = api(
        f"{alerting.api_url}/events/filter",
        {
            "filter": {
                "event": {"name": ["prefect.flow-run.heartbeat"]},
                "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            },
            "limit": 5,
        },
    )
    return events["events"]


def kill_a_run(alerting: Alerting) -> str:
    """A flow run that sends heartbeats every 30 s, SIGKILLed once it has sent one."""
    process = run_flow_script(alerting, SLEEPING, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
    try:
        (flow_run,) = wait_until(
            "running alerts-killed-run",
            lambda: [
                r
                for r in flow_runs_named(alerting, "alerts-killed-run")
                if r["state"]["type"] == "RUNNING"
            ],
        )
        wait_until("heartbeat", lambda: heartbeats_of(alerting, flow_run["id"]))
        os.killpg(process.pid, signal.SIGKILL)  # no code of the run gets to report anything
        process.wait(30)
    finally:
        stop(process)  # type: ignore[arg-type]
    return flow_run["id"]


def stop_a_worker(alerting: Alerting) -> str:
    """A real process worker on the environment's pool, until the pool is READY; then stopped."""
    pool = f"{alerting.slug}-{alerting.environment}"
    prefect = alerting.repo / ".venv" / "bin" / "prefect"
    # A worker that heartbeats every 2 s is offline after 3 missed beats (the foreman's rule).
    worker_env = {**alerting.env, "PREFECT_WORKER_HEARTBEAT_SECONDS": "2"}
    log = alerting.repo.parent / "worker.log"
    with running_worker(
        [str(prefect), "worker", "start", "--pool", pool], alerting.repo, worker_env, log
    ):
        wait_until("READY pool", lambda: pool_status(alerting, pool) == "READY")
    return pool


def pool_status(alerting: Alerting, pool: str) -> str:
    return api(f"{alerting.api_url}/work_pools/{pool}")["status"]


@pytest.fixture(scope="module")
def incidents(alerting: Alerting) -> Iterator[dict[str, Future[str]]]:
    """The four things that go wrong, all at once: their windows overlap, not add up."""
    causes = {
        "failed": fail_a_run,
        "late": make_a_late_run,
        "killed": kill_a_run,
        "worker": stop_a_worker,
    }
    with ThreadPoolExecutor(max_workers=len(causes)) as pool:
        yield {name: pool.submit(cause, alerting) for name, cause in causes.items()}


def test_a_failed_run_is_notified_once(
    incidents: dict[str, Future[str]], alerting: Alerting
) -> None:
    output = incidents["failed"].result(timeout=300)
    assert "FAILED" in output.split(), output
    body = exactly_one(alerting, "the failed run", "alerts-failed-run", "failed")
    assert "planned failure" in body["body"]


def test_a_late_run_is_notified_once(incidents: dict[str, Future[str]], alerting: Alerting) -> None:
    incidents["late"].result(timeout=300)
    body = exactly_one(alerting, "the late run", "alerts-late-run", "late")
    assert "has not started" in body["body"]


def test_a_killed_run_is_marked_crashed_by_its_missing_heartbeats_and_notified_once(
    incidents: dict[str, Future[str]], alerting: Alerting
) -> None:
    flow_run_id = incidents["killed"].result(timeout=300)
    body = exactly_one(alerting, "the killed run", "alerts-killed-run", "crashed")
    crashed = api(f"{alerting.api_url}/flow_runs/{flow_run_id}")
    assert crashed["state"]["type"] == "CRASHED"
    assert "heartbeat" in crashed["state"]["message"]
    assert "heartbeat" in body["body"]


def test_a_stopped_worker_leaves_its_pool_not_ready_and_that_is_notified_once(
    incidents: dict[str, Future[str]], alerting: Alerting
) -> None:
    pool = incidents["worker"].result(timeout=300)
    wait_until("NOT_READY pool", lambda: pool_status(alerting, pool) == "NOT_READY")
    body = exactly_one(alerting, "the pool", pool, "not ready")
    assert "no online worker" in body["body"]
