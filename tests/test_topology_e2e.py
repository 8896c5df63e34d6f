"""An API per environment, authenticated: three real `prefect server` processes on 127.0.0.1
(dev without auth; staging and prod started with PREFECT_SERVER_API_AUTH_STRING) and one
process-runtime render with `api_topology: per-environment`.

- The preflight makes an authenticated read: a wrong or missing auth string is refused by
  `make plan`, `make reconcile` and `make deploy` with a message naming the setting, never its
  value, and no traceback.
- A promotion dev -> staging -> prod reads the previous environment's evidence from that
  environment's own server, with PREFECT_API_URL_<ENV> and PREFECT_API_AUTH_STRING_<ENV>;
  it is refused, with nothing deployed, while the previous environment has not completed a
  run of the commit, when that read credential is wrong or missing, and off the default branch.

Runs are marked Completed through the API, as a smoke run leaves them (tests/
test_promotion_e2e.py runs a real worker for that already).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import Server, running_server
from tests.rendering import BIN, git
from tests.test_promotion_e2e import Repo, prepared, refused

pytestmark = pytest.mark.xdist_group("topology")

# Test-only credentials of throwaway servers on 127.0.0.1.
AUTH = {"staging": "ops:staging-pass-3141", "prod": "ops:prod-pass-2718"}
WRONG = "ops:not-the-password-1618"


@dataclass
class Topology:
    servers: dict[str, Server]
    repo: Repo

    def env_for(self, environment: str, **overrides: str | None) -> dict[str, str]:
        """The deploy job's environment for `environment`, with the previous one's read access."""
        env = {**self.repo.env, "PREFECT_API_URL": self.servers[environment].api_url}
        if environment in AUTH:
            env["PREFECT_API_AUTH_STRING"] = AUTH[environment]
        for name, server in self.servers.items():
            if name != environment:
                env[f"PREFECT_API_URL_{name.upper()}"] = server.api_url
                if name in AUTH:
                    env[f"PREFECT_API_AUTH_STRING_{name.upper()}"] = AUTH[name]
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def job(self, environment: str, **overrides: str | None) -> Repo:
        """The repository as environment's deploy job sees it."""
        env = self.env_for(environment, **overrides)
        return Repo(self.repo.path, env, self.repo.slug, self.repo.package)

    def call(self, environment: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The environment's API, with its auth string: None for a 404."""
        headers = {"Content-Type": "application/json"}
        if environment in AUTH:
            token = base64.b64encode(AUTH[environment].encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(
            f"{self.servers[environment].api_url}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method="POST" if body is not None else "GET",
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def deployment(self, environment: str) -> Any:
        return self.call(environment, f"/deployments/name/{self.repo.slug}/{environment}")

    def complete_a_run(self, environment: str) -> None:
        deployment = self.deployment(environment)
        flow_run = self.call(environment, f"/deployments/{deployment['id']}/create_flow_run", {})
        for state in ("RUNNING", "COMPLETED"):
            self.call(
                environment,
                f"/flow_runs/{flow_run['id']}/set_state",
                {"state": {"type": state}, "force": True},
            )


@pytest.fixture(scope="module")
def topology(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    work = tmp_path_factory.mktemp("topology")
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in ("dev", "staging", "prod"):
            base = dict(os.environ)
            if name in AUTH:
                base["PREFECT_SERVER_API_AUTH_STRING"] = AUTH[name]
            servers[name] = stack.enter_context(
                running_server(BIN / "prefect", work / name, work / f"{name}.log", base)
            )
        repo = prepared(
            template,
            work / "repo",
            servers["dev"],
            project_slug="topo-etl",
            environments=["dev", "staging", "prod"],
            api_topology="per-environment",
        )
        yield Topology(servers, repo)


def assert_named_not_echoed(output: str, setting: str, *values: str) -> None:
    assert setting in output, output
    assert "Traceback" not in output, output
    for value in values:
        assert value.split(":")[1] not in output, output


@pytest.mark.slow
def test_a_wrong_or_missing_credential_is_named_before_anything_changes(
    topology: Topology,
) -> None:
    wrong = topology.job("staging", PREFECT_API_AUTH_STRING=WRONG)
    for command in (["plan", "ENV=staging"], ["reconcile", "ENV=staging"]):
        output = refused(wrong, *command)
        assert "refused the credential in PREFECT_API_AUTH_STRING (401" in output
        assert_named_not_echoed(output, "PREFECT_API_AUTH_STRING", WRONG, AUTH["staging"])
    missing = topology.job("staging", PREFECT_API_AUTH_STRING=None)
    output = refused(missing, "deploy", "ENV=staging")
    assert "requires a credential (401 Unauthorized) and none is set" in output
    assert_named_not_echoed(output, "PREFECT_API_AUTH_STRING", AUTH["staging"])
    # The right one passes the same check: the plan reads the server.
    assert "Plan for 'staging'" in topology.job("staging").make("plan", "ENV=staging").stdout
    assert topology.deployment("staging") is None


@pytest.mark.slow
def test_promotion_reads_each_previous_environment_on_its_own_server(
    topology: Topology,
) -> None:
    repo = topology.repo
    head = git("rev-parse", "HEAD", cwd=repo.path).strip()
    topology.job("dev").make("deploy", "ENV=dev")
    assert topology.deployment("dev")["version"] == head

    staging = topology.job("staging")
    assert f"no run of {repo.slug}/dev at version {head} has Completed" in refused(
        staging, "deploy", "ENV=staging"
    )
    assert topology.deployment("staging") is None
    topology.complete_a_run("dev")
    staging.make("deploy", "ENV=staging")
    assert topology.deployment("staging")["version"] == head

    # prod reads staging's server: its read credential wrong, then missing.
    wrong = topology.job("prod", PREFECT_API_AUTH_STRING_STAGING=WRONG)
    output = refused(wrong, "deploy", "ENV=prod")
    assert "'staging''s Prefect API" in output
    assert_named_not_echoed(output, "PREFECT_API_AUTH_STRING_STAGING", WRONG, AUTH["prod"])
    output = refused(
        topology.job("prod", PREFECT_API_AUTH_STRING_STAGING=None), "deploy", "ENV=prod"
    )
    assert "none is set: set PREFECT_API_AUTH_STRING_STAGING" in output
    output = refused(topology.job("prod", PREFECT_API_URL_STAGING=None), "deploy", "ENV=prod")
    assert "PREFECT_API_URL_STAGING is empty" in output
    assert f"no run of {repo.slug}/staging at version {head} has Completed" in refused(
        topology.job("prod"), "deploy", "ENV=prod"
    )
    assert topology.deployment("prod") is None

    topology.complete_a_run("staging")
    topology.job("prod").make("deploy", "ENV=prod")
    assert topology.deployment("prod")["version"] == head

    git("switch", "-q", "-c", "feature", cwd=repo.path)
    try:
        feature = repo.commit("feature")
        assert f"commit {feature[:12]} is not on the default branch" in refused(
            topology.job("staging"), "deploy", "ENV=staging"
        )
    finally:
        git("switch", "-q", "main", cwd=repo.path)
    assert topology.deployment("staging")["version"] == head
