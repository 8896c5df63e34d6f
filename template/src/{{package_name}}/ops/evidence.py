"""What counts as evidence that a commit ran: a Completed flow run deployed at its version and,
where the deployment clones its code (a process worker's `git_clone` pull step), that recorded
the same commit from its clone's HEAD (`commit:<sha>`, _internal/provenance.py). The label a
deploy writes is not enough there: it says what was asked for, the tag what was run.
"""

from __future__ import annotations

from prefect.client.schemas.objects import FlowRun

from .._internal.provenance import COMMIT_TAG_PREFIX
from .state import DesiredState
from .versions import Version

GIT_CLONE_STEP = "prefect.deployments.steps.git_clone"


def clones_code(state: DesiredState) -> bool:
    """True when flow runs clone the repository at their deployment's commit."""
    return any(GIT_CLONE_STEP in step for step in state.project_file.get("pull") or [])


def recorded_commit(run: FlowRun) -> str | None:
    """The commit a run recorded it ran, or None."""
    for tag in run.tags:
        if tag.startswith(COMMIT_TAG_PREFIX):
            return tag.removeprefix(COMMIT_TAG_PREFIX)
    return None


def ran(run: FlowRun, version: Version, state: DesiredState) -> bool:
    """True when run is evidence that version ran: its deployment's version and, for code
    cloned at run time, the commit the run itself recorded."""
    if Version.parse(run.deployment_version) != version:
        return False
    return not clones_code(state) or recorded_commit(run) == version.commit
