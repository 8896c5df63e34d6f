"""Fan a task out over many inputs with at most N of its runs in flight.

A task tag limit is enforced by the Prefect server, one slot per task run: each run asks for a
slot (0.1 to 2 s on a busy server), and one that finds none is told to ask again later, while a
slot freed meanwhile stays idle. A flow run that maps M tagged tasks under a limit L then takes
3 to 5 times ceil(M / L) task lengths. map_under_limit instead takes L slots of the tag's limit
once, for the whole fan-out, and runs at most L tasks at a time in them: the next starts as soon
as one finishes, and the server's limit still caps what runs at once across flow runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect import Task
from prefect.concurrency.sync import concurrency
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


def map_under_limit(
    task: Task[..., Any], items: Iterable[Any], tag: str, limit: int, **constants: Any
) -> list[Any]:
    """map_bounded inside min(limit, len(items)) slots of the task tag limit on `tag`.

    The task itself must not carry the tag: its runs would each take a slot of their own.
    """
    items = list(items)
    slots = max(1, min(limit, len(items)))
    with concurrency(f"tag:{tag}", occupy=slots):
        return map_bounded(task, items, slots, **constants)
