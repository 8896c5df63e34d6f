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
from pathlib import Path
from typing import Any

from prefect import Flow, get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.logging import get_logger

COMMIT_LABEL = "pipeline.commit"
# Baked into the flow-run image by ops/image.py: an image holds no .git to ask.
COMMIT_VAR = "PIPELINE_COMMIT"
GIT_TIMEOUT_SECONDS = 10

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
        client.update_flow_run_labels(flow_run.id, {COMMIT_LABEL: commit})


def recorded_commit(flow_run: FlowRun) -> str | None:
    """The commit a flow run recorded it ran, or None."""
    commit = (flow_run.labels or {}).get(COMMIT_LABEL)
    return str(commit) if commit else None
