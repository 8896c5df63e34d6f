"""Fan a task out over many inputs with at most N of its runs in flight, and never wait forever.

A task tag limit is enforced by the Prefect server, one slot per task run: each run asks for a
slot (0.1 to 2 s on a busy server), and one that finds none is told to ask again later, while a
slot freed meanwhile stays idle. A flow run that maps M tagged tasks under a limit L then takes
3 to 5 times ceil(M / L) task lengths. map_under_limit instead takes L slots of the tag's limit
once, for the whole fan-out, and runs at most L tasks at a time in them: the next starts as soon
as one finishes, and the server's limit still caps what runs at once across flow runs.

Why the waits poll instead of using prefect.futures.as_completed: as_completed registers a done
callback on every future and then blocks on a threading.Event with no timeout, so the flow run
waits exactly as long as it takes one callback to arrive. On Ray (prefect-ray's
PrefectRayFuture.add_done_callback) that callback is ObjectRef._on_completed, a private Ray API:
Ray's core worker runs it on its own IO thread, only after it has fetched and deserialised the
task's return value (a pickled Prefect State), and an error on the way is only written to Ray's
log. A delivery that never comes (a deserialisation error, a worker that exits idle, a stalled
IO thread) leaves the Event unset: the flow run waits forever with every task finished, holding
its concurrency slots. On Dask, Future.add_done_callback runs callbacks from the client's event
loop, which a lost scheduler connection stops the same way. Each wait here instead asks the
runner itself (Ray: ray.get with a short timeout; Dask and threads: the future's done()), so
no callback is needed, and gives up after PIPELINE_TASK_TIMEOUT seconds without any task run
of the fan-out finishing, naming the task and the runs it waited for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from prefect import Task
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture

TIMEOUT_VAR = "PIPELINE_TASK_TIMEOUT"
# Long enough for any task of this example on a busy machine; set it per environment to the
# longest a task of yours may run.
DEFAULT_TIMEOUT = 1800.0
# How long one look at one future blocks: the latency a finished task may wait to be noticed.
POLL_SECONDS = 0.05


class FanOutTimeoutError(TimeoutError):
    """No task run of a fan-out finished within the bound."""


def task_timeout() -> float:
    """Seconds a fan-out waits for a task run to finish: PIPELINE_TASK_TIMEOUT, else 1800."""
    raw = os.environ.get(TIMEOUT_VAR) or str(DEFAULT_TIMEOUT)
    try:
        timeout = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_VAR} must be a number of seconds, got '{raw}'") from None
    if timeout <= 0:
        raise ValueError(f"{TIMEOUT_VAR} must be more than 0 seconds, got '{raw}'")
    return timeout


def finished(future: PrefectFuture[Any]) -> bool:
    """Whether a future's task run is over, after at most one short look and no callback."""
    if getattr(future, "_final_state", None) is not None:
        return True
    done = getattr(getattr(future, "wrapped_future", None), "done", None)
    if done is not None:
        # Dask and thread futures say so themselves. Polling Dask with result(timeout=...) is
        # not safe: on a busy client a timed-out wait can be cancelled mid-way and raise
        # UnboundLocalError from distributed.utils.sync.
        return bool(done())
    # Ray's ObjectRef has no done(): wait() is ray.get with a timeout, and sets the final state
    # (as_completed reads the same field) once the task's result is there.
    future.wait(timeout=POLL_SECONDS)
    return getattr(future, "_final_state", None) is not None


def first_finished(
    futures: list[PrefectFuture[Any]], timeout: float, task_name: str
) -> PrefectFuture[Any]:
    """The first of `futures` to finish; FanOutTimeoutError if none does within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for future in futures:
            if finished(future):
                return future
        time.sleep(POLL_SECONDS)
        if time.monotonic() >= deadline:
            runs = ", ".join(str(future.task_run_id) for future in futures)
            raise FanOutTimeoutError(
                f"no run of task '{task_name}' finished within {timeout:g} s ({TIMEOUT_VAR}): "
                f"waited for {len(futures)} task run(s) in flight: {runs}"
            )


def map_bounded(
    task: Task[..., Any], items: Iterable[Any], limit: int, **constants: Any
) -> list[Any]:
    """task.map(items, **constants).result(), with at most `limit` runs submitted at once.

    Fails with FanOutTimeoutError when no run finishes within PIPELINE_TASK_TIMEOUT seconds.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    timeout = task_timeout()
    futures: list[PrefectFuture[Any]] = []
    in_flight: list[PrefectFuture[Any]] = []
    for item in items:
        if len(in_flight) >= limit:
            in_flight.remove(first_finished(in_flight, timeout, task.name))
        future = task.submit(item, **constants)
        futures.append(future)
        in_flight.append(future)
    results = []
    for future in futures:
        if not finished(future):
            first_finished([future], timeout, task.name)
        # Finished: result() only reads the final state or the runner's finished future.
        results.append(future.result())
    return results


def map_under_limit(
    task: Task[..., Any], items: Iterable[Any], tag: str, limit: int, **constants: Any
) -> list[Any]:
    """map_bounded inside min(limit, len(items)) slots of the task tag limit on `tag`.

    The task itself must not carry the tag: its runs would each take a slot of their own.
    """
    items = list(items)
    slots = max(1, min(limit, len(items)))
    timeout = task_timeout()
    acquired = False
    try:
        with concurrency(f"tag:{tag}", occupy=slots, timeout_seconds=timeout):
            acquired = True
            return map_bounded(task, items, slots, **constants)
    except TimeoutError as error:
        if acquired:
            raise
        # Prefect's own message names neither the limit nor the setting.
        raise FanOutTimeoutError(
            f"{slots} slot(s) of the task tag limit on '{tag}' were not free within "
            f"{timeout:g} s ({TIMEOUT_VAR}): other flow runs hold them"
        ) from error
