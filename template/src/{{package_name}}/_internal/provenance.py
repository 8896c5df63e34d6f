"""The commit a flow run actually runs, recorded on the run as the tag `commit:<sha>`.

On a process worker the run starts in the clone its pull step made, so `git rev-parse HEAD`
there is the code, config and data the run reads, whatever the deployment's version label
says. The promotion gate and the smoke check compare this tag (ops/promote.py, ops/smoke.py).
In an image there is no .git: nothing is recorded, and the deployment's version (the commit
and the image digest the runtime pulled) is the evidence.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from prefect import get_client, get_run_logger
from prefect.runtime import flow_run

COMMIT_TAG_PREFIX = "commit:"


def checkout_commit(directory: Path | None = None) -> str | None:
    """HEAD of the git checkout the run started in, or None outside one."""
    directory = directory or Path.cwd()
    git = shutil.which("git")
    if git is None or not (directory / ".git").exists():
        return None
    # A fixed git command in the run's own directory.
    result = subprocess.run(  # noqa: S603
        [git, "rev-parse", "--verify", "HEAD"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def record_commit() -> str | None:
    """Tag the current flow run with the commit it runs; returns it (None outside a checkout)."""
    commit = checkout_commit()
    run_id = flow_run.get_id()
    if commit is None or run_id is None:
        return commit
    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(run_id).tags
        client.update_flow_run(run_id, tags=sorted({*tags, COMMIT_TAG_PREFIX + commit}))
    get_run_logger().info("Running commit %s", commit)
    return commit
