"""A real local Prefect server and workers for end-to-end runs: SQLite, 127.0.0.1, a free port,
an isolated PREFECT_HOME, and a clean shutdown on success, failure or Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """Settings that keep a run local, quiet and isolated from the user's own Prefect."""
    env = {
        "PREFECT_HOME": str(home),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        # Polling once a second halves request-to-Completed (11-16 s -> 7.5-9 s on 2 cores).
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@dataclass
class Server:
    url: str
    home: Path
    process: subprocess.Popen[bytes]

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def env(self) -> dict[str, str]:
        return prefect_env(self.home, self.api_url)


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/api/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} was not healthy after {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_server(
    prefect: Path,
    home: Path,
    log: Path,
    base_env: Mapping[str, str],
    timeout: float = 120,
    *,
    auth_string: str | None = None,
) -> Iterator[Server]:
    """`prefect server start` from the given prefect executable, stopped on the way out.

    With auth_string the server requires it as basic auth (PREFECT_SERVER_API_AUTH_STRING) on
    every request but /health; Server.env() does not carry it, a test gives clients their own.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home.mkdir(parents=True, exist_ok=True)
    env = {**base_env, **prefect_env(home)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(prefect),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--analytics-off",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(url, process, timeout)
        yield Server(url=url, home=home, process=process)
    finally:
        stop(process)


@contextlib.contextmanager
def running_worker(
    command: list[str], cwd: Path, env: Mapping[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker in its own session, stopped on the way out.

    `env --default-signal=INT`: a worker started from a script inherits an ignored SIGINT and
    then ignores the first SIGTERM too; restoring the default makes it stop in ~3 s.
    """
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["env", "--default-signal=INT", *command],
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop(process)
