"""Alerts on a real local Prefect server with the default render: `make reconcile`'s path saves
the environment's alerts target from its secret (the env backend's ALERTS_TARGET, here a webhook
receiver on 127.0.0.1) and applies the automations; then a failed run, a late run, a stopped
worker (its pool not ready), a flow-run process killed with SIGKILL (no heartbeat, marked
Crashed) and a window with no Completed run (the proactive no-completed-run) each deliver
exactly one notification naming the project, the environment and the run or pool.

One server, one install and one reconcile for the module (about a minute on 2 cores), then
10-60 s per test.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench.concurrency_bench import api
from tests.e2e.server import running_server, running_worker
from tests.rendering import BIN, answers_of, sync
from tests.test_orchestration_e2e import Pipeline

pytestmark = [pytest.mark.xdist_group("alerts"), pytest.mark.slow]

# Time for a wrongly matched second notification to arrive after the first.
QUIET_SECONDS = 5
# The server marks a worker offline after 2 missed heartbeats, checked every 2 s, and the
# worker beats every 2 s: a stopped worker's pool is not ready within seconds, not minutes.
FAST_FOREMAN = {
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_FOREMAN_INACTIVITY_HEARTBEAT_MULTIPLE": "2",
}
WORKER_HEARTBEAT = {"PREFECT_WORKER_HEARTBEAT_SECONDS": "2"}


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps every JSON body POSTed to it."""

    url: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if predicate(m)]

    def wait_for_one(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 60,
        seen: int = 0,
    ) -> dict[str, Any]:
        """The one notification matching predicate after the `seen` ones already received:
        fails if none comes within timeout, or a second one follows within QUIET_SECONDS."""
        deadline = time.monotonic() + timeout
        while len(self.received(predicate)) <= seen:
            assert time.monotonic() < deadline, (
                f"no notification for {what} after {timeout:.0f} s; received: {self.messages}"
            )
            time.sleep(0.5)
        time.sleep(QUIET_SECONDS)
        matching = self.received(predicate)[seen:]
        assert len(matching) == 1, f"{len(matching)} notifications for {what}: {matching}"
        return matching[0]


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    messages: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with lock:
                messages.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest shows the messages on failure

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # Built from parts: a made-up local endpoint, not a real target.
        url = "http://127.0.0.1:" + str(server.server_address[1]) + "/hook"
        yield Receiver(url, messages, lock)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Alerted(Pipeline):
    """The orchestration tests' pipeline, with the receiver its alerts go to."""

    receiver: Receiver


@pytest.fixture(scope="module")
def alerted(default_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alerted]:
    workdir = tmp_path_factory.mktemp("alerts")
    repo = shutil.copytree(default_repo, workdir / "pipeline")
    env = sync(repo)
    prefect = repo / ".venv" / "bin" / "prefect"
    with (
        running_receiver() as receiver,
        running_server(
            prefect, workdir / "home", workdir / "server.log", {**env, **FAST_FOREMAN}
        ) as server,
    ):
        # The env backend reads the secret alerts-target from ALERTS_TARGET.
        alerted = Alerted(
            repo,
            {**env, **server.env(), "ALERTS_TARGET": receiver.url},
            server,
            answers_of(repo),
            [],
            receiver,
        )
        alerted.reconcile_output += [alerted.reconcile(), alerted.reconcile()]
        yield alerted


def names_the_run(message: dict[str, Any], alerted: Alerted, run_name: str) -> bool:
    text = message.get("text", "")
    return run_name in text and alerted.slug in text and f"({alerted.environment})" in text


def test_reconcile_saves_the_target_and_applies_the_automations(alerted: Alerted) -> None:
    first, second = alerted.reconcile_output
    block = f"custom-webhook/{alerted.slug}-{alerted.environment}-alerts"
    assert f"create  block        {block}" in first, first
    keys = ("failed-runs", "late-runs", "stuck-pending", "stuck-running", "lost-heartbeat")
    for key in (*keys, "pool-not-ready"):
        assert f"create  automation   {alerted.slug}/{alerted.environment}/{key}" in first, first
    # Only where the schedule is active: the last environment.
    assert "no-completed-run" not in first
    assert "No changes" in second, second
    assert "warning" not in first + second
    # The target never shows: not in reconcile's output, nor in the block's API fields.
    assert alerted.receiver.url not in first + second
    saved = api(f"{alerted.server.api_url}/block_documents/filter", {})
    (document,) = [d for d in saved if d["name"] == f"{alerted.slug}-{alerted.environment}-alerts"]
    assert alerted.receiver.url not in json.dumps(document)


FAILING_RUN = """
from prefect import flow, tags


@flow(name="failing-example", flow_run_name="{run_name}")
def failing() -> None:
    raise RuntimeError("planned failure")


with tags("project:{slug}", "env:{environment}"):
    print(failing(return_state=True).type.value)
"""


def test_a_failed_run_delivers_one_notification(alerted: Alerted) -> None:
    run_name = "failing-alert-probe"
    script = FAILING_RUN.format(
        run_name=run_name, slug=alerted.slug, environment=alerted.environment
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=alerted.repo,
        env=alerted.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.split() == ["FAILED"], result.stdout + result.stderr
    message = alerted.receiver.wait_for_one(
        lambda m: names_the_run(m, alerted, run_name), f"the failed run {run_name}"
    )
    assert "Failed" in message["subject"], message


def test_a_late_run_delivers_one_notification(alerted: Alerted) -> None:
    """A run of the environment's deployment due a minute ago, with no worker on its pool: the
    server's late-runs service marks it Late after 15 s."""
    api_url = alerted.server.api_url
    deployment = api(f"{api_url}/deployments/name/{alerted.slug}/{alerted.environment}")
    due = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    flow_run = api(
        f"{api_url}/deployments/{deployment['id']}/create_flow_run",
        {
            "name": "late-alert-probe",
            "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": due}},
        },
    )
    try:
        message = alerted.receiver.wait_for_one(
            lambda m: names_the_run(m, alerted, "late-alert-probe") and "Late" in m["subject"],
            "the late run late-alert-probe",
        )
        assert "worker" in message["body"], message
    finally:
        # No later worker of this module may pick it up.
        api(
            f"{api_url}/flow_runs/{flow_run['id']}/set_state",
            {"state": {"type": "CANCELLED"}, "force": True},
        )


def test_a_stopped_worker_delivers_one_pool_notification(alerted: Alerted) -> None:
    api_url, pool = alerted.server.api_url, f"{alerted.slug}-{alerted.environment}"

    def about_the_pool(message: dict[str, Any]) -> bool:
        text = message.get("text", "")
        return f"Work pool {pool} is not ready" in text and f"({alerted.environment})" in text

    seen = len(alerted.receiver.received(about_the_pool))
    prefect = alerted.repo / ".venv" / "bin" / "prefect"
    log = alerted.repo.parent / "worker.log"
    worker = [str(prefect), "worker", "start", "--pool", pool]
    with running_worker(worker, cwd=alerted.repo, env={**alerted.env, **WORKER_HEARTBEAT}, log=log):
        deadline = time.monotonic() + 60
        while api(f"{api_url}/work_pools/{pool}")["status"] != "READY":
            assert time.monotonic() < deadline, (
                "the pool was not ready 60 s after its worker started"
            )
            time.sleep(1)
    alerted.receiver.wait_for_one(about_the_pool, f"the pool {pool} losing its worker", seen=seen)


SLEEPING_RUN = """
import time

from prefect import flow, tags


@flow(name="sleeping-example", flow_run_name="{run_name}")
def sleeping() -> None:
    time.sleep(300)


with tags("project:{slug}", "env:{environment}"):
    sleeping()
"""


def test_a_killed_run_is_marked_crashed_and_delivers_one_notification(alerted: Alerted) -> None:
    """A flow run's process killed with SIGKILL sends no final state: with no heartbeat within
    lost-heartbeat's bound (40 s here, heartbeats every 30 s) the run is marked Crashed, and
    failed-runs notifies it."""
    api_url, run_name = alerted.server.api_url, "killed-alert-probe"
    config = alerted.repo / "config" / "orchestration.yaml"
    text = config.read_text(encoding="utf-8")
    assert text.count("within: 600") == 1, "lost-heartbeat's bound moved"
    config.write_text(text.replace("within: 600", "within: 40"), encoding="utf-8")
    assert f"update  automation   {alerted.slug}/{alerted.environment}/lost-heartbeat" in (
        alerted.reconcile()
    )
    script = SLEEPING_RUN.format(
        run_name=run_name, slug=alerted.slug, environment=alerted.environment
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=alerted.repo,
        env={**alerted.env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            runs = api(f"{api_url}/flow_runs/filter", {"flow_runs": {"name": {"any_": [run_name]}}})
            beats = api(
                f"{api_url}/events/filter",
                {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]}}, "limit": 50},
            )["events"]
            if runs and any(e["resource"].get("prefect.resource.name") == run_name for e in beats):
                break
            assert time.monotonic() < deadline, "no heartbeat from the sleeping run after 60 s"
            time.sleep(1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    (flow_run,) = runs
    assert api(f"{api_url}/flow_runs/{flow_run['id']}")["state"]["type"] == "RUNNING"
    message = alerted.receiver.wait_for_one(
        lambda m: names_the_run(m, alerted, run_name), f"the killed run {run_name}", timeout=90
    )
    assert "Crashed" in message["subject"], message
    assert api(f"{api_url}/flow_runs/{flow_run['id']}")["state"]["type"] == "CRASHED"


def test_no_completed_run_in_its_window_delivers_one_notification(alerted: Alerted) -> None:
    """The proactive no-completed-run, moved into the test's environment with a 20 s window:
    no run of the project completes there, so one notification names the environment."""
    config = alerted.repo / "config" / "orchestration.yaml"
    text = config.read_text(encoding="utf-8")
    head, marker, entry = text.partition("  no-completed-run:\n")
    last = alerted.last_environment
    assert marker and entry.count("within: 90000") == 1, "no-completed-run's window moved"
    entry = entry.replace(f"environments: [{last}]", f"environments: [{alerted.environment}]", 1)
    config.write_text(head + marker + entry.replace("within: 90000", "within: 20"), "utf-8")
    about = f"automation   {alerted.slug}/{alerted.environment}/no-completed-run"
    assert f"create  {about}" in alerted.reconcile()

    def no_completed_run(message: dict[str, Any]) -> bool:
        return "No flow run completed in its window" in message.get("subject", "") and (
            f"({alerted.environment})" in message.get("subject", "")
        )

    message = alerted.receiver.wait_for_one(
        no_completed_run, f"no completed run in '{alerted.environment}' for 20 s", timeout=90
    )
    assert f"environment {alerted.environment}" in message.get("text", "") + message.get(
        "body", ""
    ), message


def test_the_last_environment_without_a_target_is_refused_and_nothing_changes(
    alerted: Alerted,
) -> None:
    """Production requires an alerts target (config/<last>.yaml's alerts_required): without
    its secret, its plan says a deploy would be refused, and a deploy is refused naming what to
    create, before any pool or automation."""
    last, api_url = alerted.last_environment, alerted.server.api_url
    assert last != alerted.environment
    env = {k: v for k, v in alerted.env.items() if k != "ALERTS_TARGET"}
    command = ["python", "-m", f"{alerted.package}.ops", "reconcile", "--env", last]

    def reconcile(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "uv"), "run", *command, *args],
            cwd=alerted.repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    plan = reconcile("--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"config/{last}.yaml requires one: a deploy is refused." in plan.stderr, plan.stderr
    refused = reconcile()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"refusing to deploy '{last}'; nothing was changed" in refused.stderr
    assert f"create the secret 'alerts-target' for '{last}'" in refused.stderr
    assert "Set ALERTS_TARGET" in refused.stderr, refused.stderr
    pools = {pool["name"] for pool in api(f"{api_url}/work_pools/filter", {})}
    assert f"{alerted.slug}-{alerted.environment}" in pools
    assert f"{alerted.slug}-{last}" not in pools
    automations = {a["name"] for a in api(f"{api_url}/automations/filter", {})}
    assert not {name for name in automations if name.startswith(f"{alerted.slug}/{last}/")}
