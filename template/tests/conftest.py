"""Shared fixtures: a temporary Prefect API for the whole session (tests/prefect_api.py), and
secrets for the tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect_api import temporary_api
from secret_fixtures import provide_secret

__all__ = ["provide_secret"]

# Two busy cores can take a minute or more to start the temporary server; the default 20 s is
# too tight.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[None]:
    # No flow-run heartbeats on the temporary API: they tell a real server a run's process is
    # alive (config/orchestration.yaml's lost-heartbeat automation), and nothing watches for
    # them here. Each flow run's end otherwise waits out the heartbeat thread's one-second
    # sleep: about 1 s per flow run, 20 s or more of this suite.
    with (
        temporary_api(startup_timeout=180),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(autouse=True)
def in_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flow runs start in the repository root; so do the tests."""
    monkeypatch.chdir(ROOT)
