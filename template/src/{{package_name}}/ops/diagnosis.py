"""Why a flow run did not run: what its infrastructure reported, in words a deployer can act on.

The Kubernetes worker's observer (prefect-kubernetes) logs its pod diagnoses on the flow run
itself, e.g. "Image pull failed for container 'prefect-job': Kubernetes cannot pull the container
image. Reason: ErrImagePull. ..."; the ECS observer (prefect-aws) puts a stopped task's reason,
such as CannotPullContainerError, in the Crashed state's message. smoke.py reads both, so a run
stuck in Pending because the node cannot pull the image is not blamed on the worker.
"""

from __future__ import annotations

import re

from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import LogSort

# A problem, and the infrastructure's own words for it.
PROBLEMS = {
    "image pull failed": re.compile(
        r"Image pull failed|ErrImagePull|ImagePullBackOff|CannotPullContainerError"
    ),
}
# The run's first logs hold the infrastructure's; a long run's later ones are its own.
LOGS_READ = 200
SHOWN_CHARACTERS = 300


def run_texts(flow_run: FlowRun) -> list[str]:
    """The run's state message, then its log messages, oldest first."""
    texts = [flow_run.state.message] if flow_run.state and flow_run.state.message else []
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])),
            limit=LOGS_READ,
            sort=LogSort.TIMESTAMP_ASC,
        )
    return texts + [log.message for log in logs]


def infrastructure_problem(flow_run: FlowRun) -> str | None:
    """'image pull failed: <what the infrastructure said>', or None when it reported nothing."""
    texts = run_texts(flow_run)
    for problem, pattern in PROBLEMS.items():
        for text in texts:
            if pattern.search(text):
                return f"{problem}: {text[:SHOWN_CHARACTERS]}"
    return None
