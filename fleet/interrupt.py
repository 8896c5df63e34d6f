"""Stopping a fleet run on SIGINT/SIGTERM: nothing new starts, running process groups die.

The signal handler only sets an event; a watcher thread does the killing, so no lock is ever
taken inside a handler. Every process the fleet starts (copier workers, checks) runs in its own
session and is registered here, so the whole group goes, grandchildren included: a check left
running after the fleet exits would keep writing into a repository.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

# How long a process group gets between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 5.0


class Interrupted(Exception):
    """Raised inside a repository's pipeline when the run is stopping."""


class Stopper:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._watcher = threading.Thread(target=self._kill_when_stopped, daemon=True)
        self._watcher.start()

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise Interrupted

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.signum is None:
            self.signum = signum
        self.event.set()

    def register(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
        if self.event.is_set():  # started in the instant the run began stopping
            _kill_group(pgid, signal.SIGTERM)

    def unregister(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)

    def _kill_when_stopped(self) -> None:
        self.event.wait()
        with self._lock:
            groups = set(self._groups)
        for pgid in groups:
            _kill_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                alive = [g for g in self._groups if _group_alive(g)]
            if not alive:
                return
            time.sleep(0.05)
        with self._lock:
            groups = set(self._groups)
        for pgid in groups:
            _kill_group(pgid, signal.SIGKILL)

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Route SIGINT and SIGTERM to stop() while the block runs (main thread only)."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.stop(signum)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _kill_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
