"""A Prefect API per environment for the topology end-to-end runs (tests/test_topology_e2e.py,
the process runtime; tests/test_registries_e2e.py, the docker runtime): three `prefect
server`s on 127.0.0.1, dev without auth, staging and prod each with its own
PREFECT_SERVER_API_AUTH_STRING, and the calls a test makes to them with each one's auth.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.e2e.server import Server, running_server
from tests.rendering import BIN

ENVIRONMENTS = ["dev", "staging", "prod"]
# Made up and built by parts: no credential-looking literal in the repository.
AUTH = {env: f"ops-{env}" + ":" + "not-a-real-" + env for env in ("staging", "prod")}
WRONG = "ops" + ":" + "wrong-" + "guess"


def previous_of(env: str) -> str:
    return ENVIRONMENTS[ENVIRONMENTS.index(env) - 1]


def request(
    server: Server, path: str, auth: str | None, body: Any = None, *, method: str | None = None
) -> Any:
    """The server's JSON API, with its basic auth when it has one (what Prefect's client sends):
    a POST with a body, else a GET, unless method says otherwise."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    method = method or ("POST" if body is not None else "GET")
    # The local server under test: http on 127.0.0.1 only.
    req = urllib.request.Request(f"{server.api_url}{path}", data, headers, method=method)
    for attempt in range(1, 6):
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            # A 503 while the server's own services hold SQLite's write lock: try again.
            if error.code != 503 or attempt == 5:
                raise
            time.sleep(attempt)
    raise AssertionError("unreachable")


def read_deployment(servers: dict[str, Server], env: str, name: str) -> dict[str, Any] | None:
    """env's server's deployment `flow/deployment`, None when it has none."""
    try:
        return request(servers[env], f"/deployments/name/{name}", AUTH.get(env))
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def complete_a_run(
    servers: dict[str, Server], env: str, deployment_id: str, name: str, commit: str = ""
) -> None:
    """A Completed run of the deployment at its version, recorded through env's API; with a
    commit, labelled with it as the run's own code labels it (_internal/provenance.py)."""
    server, auth = servers[env], AUTH.get(env)
    run = request(server, f"/deployments/{deployment_id}/create_flow_run", auth, {"name": name})
    for state in ("RUNNING", "COMPLETED"):
        body = {"state": {"type": state}, "force": True}
        request(server, f"/flow_runs/{run['id']}/set_state", auth, body)
    if commit:
        labels = {"pipeline.commit": commit}
        request(server, f"/flow_runs/{run['id']}/labels", auth, labels, method="PATCH")


@contextlib.contextmanager
def three_servers(work: Path) -> Iterator[dict[str, Server]]:
    """dev, staging and prod started side by side (each takes ~10 s to be healthy on 2 cores),
    every one stopped on the way out, even when another failed to start."""
    managers = {
        env: running_server(
            BIN / "prefect",
            work / env / "home",
            work / f"server-{env}.log",
            os.environ,
            auth_string=AUTH.get(env),
        )
        for env in ENVIRONMENTS
    }
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(managers)) as pool:
        futures = {env: pool.submit(manager.__enter__) for env, manager in managers.items()}
        servers, errors = {}, []
        for env, future in futures.items():
            try:
                servers[env] = future.result(timeout=180)
            except Exception as error:  # reported below, once every started one will stop
                errors.append(f"{env}: {error!r}")
            else:
                stack.push(managers[env].__exit__)
        assert not errors, f"servers that did not start: {errors}"
        yield servers
