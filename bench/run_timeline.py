"""Where a deployed flow run's time went, read back from the server after it finished.

Each line is seconds since the run was created: its state changes, its task runs' states and
its logs (the pull steps' and the flow's own), so a bench can say which part of "worker and
run" is the worker picking the run up, the process starting, the environment, or the flow.
"""

from __future__ import annotations

from datetime import datetime

from tests.e2e.demo import api

# Enough for the example flow's logs and task runs; the server's page limit is 200.
PAGE = 200
LINE = 110  # a log's first line, cut: a traceback's place is the server's log view


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def timeline(api_url: str, flow_run_id: str) -> list[tuple[float, str]]:
    """(seconds since the run's creation, what happened), in order."""
    flow_run = api(f"{api_url}/flow_runs/{flow_run_id}")
    start = seconds(flow_run["created"])
    events = [(start, "flow run created")]
    states = api(f"{api_url}/flow_run_states/?flow_run_id={flow_run_id}")
    events += [(seconds(s["timestamp"]), f"flow run {s['name']}") for s in states]
    runs_of_flow = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": PAGE}
    for task_run in api(f"{api_url}/task_runs/filter", "POST", runs_of_flow):
        for state in api(f"{api_url}/task_run_states/?task_run_id={task_run['id']}"):
            events.append((seconds(state["timestamp"]), f"{task_run['name']} {state['name']}"))
    logs_of_flow = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": PAGE}
    for log in api(f"{api_url}/logs/filter", "POST", logs_of_flow):
        events.append((seconds(log["timestamp"]), f"log: {log['message']}"))
    return sorted((at - start, what) for at, what in events)


def print_timeline(api_url: str, flow_run_id: str, title: str) -> None:
    print(f"{title}, seconds since the flow run was created:")
    for at, what in timeline(api_url, flow_run_id):
        print(f"  {at:6.2f}  {what.splitlines()[0][:LINE]}")
