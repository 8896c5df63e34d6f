"""The commit a flow run actually runs, recorded on the run itself.

A deployment's version says which commit CI deployed; it does not say what a worker ran. Each
flow declares `on_running=[record_commit]`, so its run labels itself `pipeline.commit` with the
commit of the code it imported: the clone's HEAD on a process worker (each run clones the
deployed commit), the commit an image was built from in a container (PIPELINE_COMMIT, set by
ops/image.py at build time). `make smoke` and the promotion gate compare that label with the
deployment's version, not the version alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from prefect import Flow, get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun, State
from prefect.logging import get_logger

COMMIT_LABEL = "pipeline.commit"
# Baked into the flow-run image by ops/image.py: an image holds no .git to ask.
COMMIT_VAR = "PIPELINE_COMMIT"
GIT_TIMEOUT_SECONDS = 10
# At a run's start a SQLite server often refuses the label write with 503 "database is locked":
# Prefect's model reads a run's labels, then updates them, in one deferred transaction, and a
# write another request commits in between fails it at once. The conflict is over in
# milliseconds, yet Prefect's client waits its first back-off, 2 s, before it asks again. So the
# hook asks again itself after these pauses (0.75 s in all), then leaves the write to Prefect's
# client and its retries. PostgreSQL servers lock rows instead and answer at once.
LABEL_RETRY_PAUSES = (0.05, 0.1, 0.2, 0.4)

logger = get_logger(__name__)


def running_commit() -> str | None:
    """The commit of the code this process imported, or None when nothing says."""
    if commit := os.environ.get(COMMIT_VAR, "").strip():
        return commit
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = subprocess.run(  # noqa: S603 - a fixed git command, no input of anyone's
            [git, "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):  # no repository, or git hung
        return None
    return head.stdout.strip() or None


def record_commit(flow: Flow[..., Any], flow_run: FlowRun, state: State) -> None:
    """A flow's on_running hook: label the run with the commit it runs. A run that cannot say
    still runs; the gate and smoke then refuse it as evidence, saying why."""
    commit = running_commit()
    if commit is None:
        logger.warning(
            "Flow run %s records no commit: neither %s nor a git checkout says which it runs.",
            flow_run.id,
            COMMIT_VAR,
        )
        return
    with get_client(sync_client=True) as client:
        write_labels(client, flow_run.id, {COMMIT_LABEL: commit})


def write_labels(client: SyncPrefectClient, flow_run_id: UUID, labels: dict[str, Any]) -> None:
    """Add labels to a flow run, asking again soon when the server was momentarily locked."""
    # Prefect's httpx client, sent through httpx's own send(): Prefect's send() adds the retries
    # and their 2 s back-off. Its base URL, auth and TLS settings are the client's.
    http = getattr(client, "_client", None)
    if isinstance(http, httpx.Client):
        request = http.build_request("PATCH", f"/flow_runs/{flow_run_id}/labels", json=labels)
        for pause in LABEL_RETRY_PAUSES:
            try:
                response = httpx.Client.send(http, request)
            except httpx.TransportError:
                break  # not a lock: Prefect's client retries, or says what is wrong
            if response.is_success:
                return
            if response.status_code != httpx.codes.SERVICE_UNAVAILABLE:
                break  # auth, CSRF, a missing run: Prefect's client handles and reports it
            time.sleep(pause)
    client.update_flow_run_labels(flow_run_id, labels)


def recorded_commit(flow_run: FlowRun) -> str | None:
    """The commit a flow run recorded it ran, or None."""
    commit = (flow_run.labels or {}).get(COMMIT_LABEL)
    return str(commit) if commit else None
