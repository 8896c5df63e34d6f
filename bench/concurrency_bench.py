"""Tag concurrency limits on a real local Prefect server (`python -m bench.concurrency_bench`).

M tasks that each sleep D seconds, all tagged with a tag limited to L, fan out on a thread
pool wide enough to run them all at once. The limit alone decides how many run together, so
the ideal wall time is ceil(M/L) x D; the ratio of the measured time (first task start to last
task end, from the task runs' timestamps on the server) to that ideal is the limit's overhead.
The observed maximum of tasks running at once must never exceed L.

Side by side, the same tasks fanned out as the example flow fans out its loads: the template's
map_under_limit (src/<package>/_internal/fanout.py), which takes L slots of the tag's limit once
for the flow run and keeps at most L tasks in flight in them, so none waits on the server for a
slot; that ratio must stay within 1.25 (exit 1 otherwise).

`python -m bench.concurrency_bench flow TAG M D [L]` runs the bulk flow alone against
PREFECT_API_URL (with L: through map_under_limit) and prints its flow run id
(tests/test_orchestration_e2e.py uses it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FANOUT = ROOT / "template" / "src" / "{{package_name}}" / "_internal" / "fanout.py"
BOUNDED_CEILING = 1.25


def template_map_under_limit() -> Any:  # noqa: ANN401 - a function loaded from a file
    """The generated package's map_under_limit, loaded from the template's plain Python file."""
    spec = importlib.util.spec_from_file_location("template_fanout", FANOUT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.map_under_limit


def run_bulk_flow(tag: str, tasks: int, seconds: float, bound: int | None = None) -> str:
    """The bulk flow, run in this process; returns its flow run id.

    With `bound`, the tasks go through the template's map_under_limit with that many slots,
    untagged: the flow run holds the slots for them.
    """
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(tags=[tag])
    def hold(index: int) -> int:
        time.sleep(seconds)
        return index

    # One thread per task: only the tag limit may hold a task back.
    @flow(name="concurrency-bench", task_runner=ThreadPoolTaskRunner(max_workers=tasks))
    def bulk() -> int:
        if bound:
            untagged = hold.with_options(tags=set())
            return len(template_map_under_limit()(untagged, range(tasks), tag, bound))
        return len(hold.map(range(tasks)).result())

    state = bulk(return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"bulk flow ended {state.type.value}: {state.message}")
    return str(state.state_details.flow_run_id)


def api(url: str, body: dict[str, Any] | None = None, attempts: int = 5) -> Any:  # noqa: ANN401
    """GET (or POST `body` to) the local server's JSON API.

    A 503 is retried: a server that has just started answers one while its background services
    hold SQLite's write lock.
    """
    # The server under test, on 127.0.0.1: http only.
    request = urllib.request.Request(  # noqa: S310
        url,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == attempts:
                raise
            time.sleep(attempt)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Span:
    start: datetime
    end: datetime


def task_spans(api_url: str, flow_run_id: str) -> list[Span]:
    """When each task run of the flow run was Running: its start_time to its end_time."""
    runs = api(
        f"{api_url}/task_runs/filter",
        {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200},
    )
    return [
        Span(datetime.fromisoformat(run["start_time"]), datetime.fromisoformat(run["end_time"]))
        for run in runs
        if run["start_time"] and run["end_time"]
    ]


def max_running(spans: list[Span]) -> int:
    """The most spans open at one instant (an end and a start at the same instant don't overlap)."""
    events = sorted([(s.start, 1) for s in spans] + [(s.end, -1) for s in spans])
    running = peak = 0
    for _, step in events:  # -1 sorts before +1 at equal times
        running += step
        peak = max(peak, running)
    return peak


def wall_seconds(spans: list[Span]) -> float:
    return (max(s.end for s in spans) - min(s.start for s in spans)).total_seconds()


def start_bulk_flow(
    api_url: str,
    env: dict[str, str],
    tag: str,
    tasks: int,
    seconds: float,
    bound: int | None = None,
) -> str:
    """Run the bulk flow in a fresh interpreter against `api_url`; returns its flow run id."""
    command = ["-m", "bench.concurrency_bench", "flow", tag, str(tasks), str(seconds)]
    result = subprocess.run(
        [sys.executable, *command, *([str(bound)] if bound else [])],
        cwd=ROOT,
        env={**env, "PREFECT_API_URL": api_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"bulk flow failed:\n{result.stdout}{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Measurement:
    tasks: int
    limit: int
    seconds: float
    wall: float
    peak: int

    @property
    def ideal(self) -> float:
        return math.ceil(self.tasks / self.limit) * self.seconds

    @property
    def ratio(self) -> float:
        return self.wall / self.ideal

    def __str__(self) -> str:
        return (
            f"M={self.tasks} tasks x {self.seconds:g} s under limit L={self.limit}: "
            f"wall {self.wall:.1f} s, ideal ceil(M/L) x D = {self.ideal:.1f} s, "
            f"ratio {self.ratio:.2f}, max running at once {self.peak}"
        )


def measure(
    api_url: str,
    env: dict[str, str],
    tag: str,
    limit: int,
    tasks: int,
    seconds: float,
    bound: int | None = None,
) -> Measurement:
    flow_run_id = start_bulk_flow(api_url, env, tag, tasks, seconds, bound)
    spans = task_spans(api_url, flow_run_id)
    if len(spans) != tasks:
        raise RuntimeError(f"expected {tasks} finished task runs, the server has {len(spans)}")
    return Measurement(tasks, limit, seconds, wall_seconds(spans), max_running(spans))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency_bench", description=__doc__)
    parser.add_argument("--tasks", type=int, default=20, help="M, tasks in the flow (default 20)")
    parser.add_argument("--limit", type=int, default=5, help="L, the tag's limit (default 5)")
    parser.add_argument("--seconds", type=float, default=2.0, help="D, per task (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="flow runs to measure (default 3)")
    parser.add_argument(
        "--slot-wait",
        type=float,
        help="the server's cap on a blocked task's retry wait, in seconds (Prefect's default: 10)",
    )
    args, rest = parser.parse_known_args(argv)
    if rest[:1] == ["flow"]:
        tag, tasks, seconds = rest[1], int(rest[2]), float(rest[3])
        bound = int(rest[4]) if len(rest) > 4 else None
        print(run_bulk_flow(tag, tasks, seconds, bound))
        return 0

    from tests.e2e.server import running_server

    tag = "bench-limited"
    with tempfile.TemporaryDirectory(prefix="concurrency-bench-") as workdir:
        home = Path(workdir)
        env = {**os.environ}
        env.pop("PREFECT_API_URL", None)
        if args.slot_wait is not None:
            # The server tells a blocked task when to retry: about the limit's average slot
            # occupancy times the waiting tasks per slot, capped by this setting.
            env["PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS"] = str(args.slot_wait)
        print("Starting a local Prefect server ...", flush=True)
        with running_server(
            Path(sys.executable).parent / "prefect", home / "home", home / "server.log", env
        ) as server:
            env = {**env, **server.env()}
            api(
                f"{server.api_url}/concurrency_limits/",
                {"tag": tag, "concurrency_limit": args.limit},
            )
            # The same flow with a tag no limit names: what task runs cost without waiting.
            baseline = measure(
                server.api_url, env, "bench-unlimited", args.tasks, args.tasks, args.seconds
            )
            print(f"baseline, no limit: {baseline}", flush=True)
            results = []
            for number in range(1, args.runs + 1):
                result = measure(server.api_url, env, tag, args.limit, args.tasks, args.seconds)
                print(f"run {number}: {result}", flush=True)
                results.append(result)
            bounded = []
            for number in range(1, args.runs + 1):
                result = measure(
                    server.api_url, env, tag, args.limit, args.tasks, args.seconds, args.limit
                )
                print(f"map_under_limit run {number}: {result}", flush=True)
                bounded.append(result)
    print(f"tag limit alone: {summary(results, args.limit)}")
    print(f"map_under_limit (the example flow's fan-out): {summary(bounded, args.limit)}")
    within = median_ratio(bounded) <= BOUNDED_CEILING
    print(f"map_under_limit median ratio within {BOUNDED_CEILING}: {'yes' if within else 'NO'}")
    return 0 if within and all(r.peak <= args.limit for r in results + bounded) else 1


def median_ratio(results: list[Measurement]) -> float:
    ratios = sorted(r.ratio for r in results)
    return ratios[len(ratios) // 2]


def summary(results: list[Measurement], limit: int) -> str:
    ratios = sorted(r.ratio for r in results)
    return (
        f"median ratio {median_ratio(results):.2f} (min {ratios[0]:.2f}, max {ratios[-1]:.2f}); "
        f"max running at once {max(r.peak for r in results)} (limit {limit})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
