"""Fan a task out over many inputs with at most N of its runs in flight.

A task tag limit is enforced by the Prefect server: a task that finds no free slot is told to
ask again later (a back-off of seconds), and a slot freed meanwhile stays idle. When one flow
run submits more tag-limited tasks than the limit, most of them wait that way, and the fan-out
takes several times ceil(M / L) task lengths. Submitting at most L at a time, the next one as
soon as one finishes, keeps the slots busy; the server-side limit still caps what runs at once
across flow runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture, as_completed


def map_bounded(
    task: Task[..., Any], items: Iterable[Any], limit: int, **constants: Any
) -> list[Any]:
    """task.map(items, **constants).result(), with at most `limit` runs submitted at once."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    futures: list[PrefectFuture[Any]] = []
    in_flight: set[PrefectFuture[Any]] = set()
    for item in items:
        if len(in_flight) >= limit:
            in_flight.remove(next(as_completed(list(in_flight))))
        future = task.submit(item, **constants)
        futures.append(future)
        in_flight.add(future)
    return [future.result() for future in futures]
