"""A Prefect API per environment, for real: three `prefect server` processes on 127.0.0.1
(dev without auth, staging and prod each with its own PREFECT_SERVER_API_AUTH_STRING) and the
process runtime promoted dev -> staging -> prod across them by `make deploy`, a real process
worker per environment running the smoke runs the gate reads.

Promotion reads the previous environment's evidence from the previous server with the
PREVIOUS_PREFECT_API_* settings (ops/topology.py). It is refused, with nothing deployed, when
they are missing or wrong, when the previous environment has not run the commit, and for a
commit off the default branch. Rollback deploys an older commit with its own prefect.yaml.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import Server, running_worker
from tests.e2e.three_apis import (
    AUTH,
    ENVIRONMENTS,
    WRONG,
    complete_a_run,
    previous_of,
    read_deployment,
    request,
    three_servers,
)
from tests.rendering import BIN, UNHEARD_ALERTS, commit_lock, git, render, sync

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("topology")]

SLUG = "topo-etl"
OLD_DESCRIPTION = "Topology test pipeline."
NEW_DESCRIPTION = "Topology test pipeline, changed later."


class Repo:
    def __init__(self, path: Path, env: dict[str, str], servers: dict[str, Server]) -> None:
        self.path, self.servers = path, servers
        self.base = {k: v for k, v in env.items() if not k.startswith(("PREFECT_", "PREVIOUS_"))}
        self.base["PATH"] = f"{BIN}:{env['PATH']}"

    def env_of(self, env: str, **previous: str | None) -> dict[str, str]:
        """What env's CI job holds: its own API and credential, and the previous settings."""
        # prod, the last environment, requires an alerts target (ops/preflight.py).
        result = {**self.base, **self.servers[env].env(), **UNHEARD_ALERTS}
        if env in AUTH:
            result["PREFECT_API_AUTH_STRING"] = AUTH[env]
        for name, value in previous.items():
            if value is not None:
                result[f"PREVIOUS_PREFECT_API_{name.upper()}"] = value
        return result

    def previous_of(self, env: str) -> dict[str, str | None]:
        before = previous_of(env)
        return {"url": self.servers[before].api_url, "auth_string": AUTH.get(before)}

    def make(
        self, env: str, *args: str, **previous: str | None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", *args],
            cwd=self.path,
            env=self.env_of(env, **previous),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def ok(self, env: str, *args: str, **previous: str | None) -> str:
        result = self.make(env, *args, **previous)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"make {' '.join(args)} in {env}:\n{output}"
        return output

    def refused(self, env: str, *args: str, **previous: str | None) -> str:
        result = self.make(env, *args, **previous)
        output = result.stdout + result.stderr
        assert result.returncode == 2, (
            f"make {' '.join(args)} in {env} exited {result.returncode}:\n{output}"
        )
        assert "Traceback" not in output, output
        for secret in (*AUTH.values(), WRONG):
            assert secret not in output, "a credential was echoed"
        return output

    def deployment(self, env: str, flow: str = SLUG) -> dict[str, Any] | None:
        return read_deployment(self.servers, env, f"{flow}/{env}")

    def deployments(self, env: str) -> list[dict[str, Any]]:
        return request(self.servers[env], "/deployments/filter", AUTH.get(env), {})

    @contextlib.contextmanager
    def worker(self, env: str, tmp_path: Path) -> Iterator[None]:
        prefect = str(self.path / ".venv" / "bin" / "prefect")
        command = [prefect, "worker", "start", "--pool", f"{SLUG}-{env}"]
        worker_env = {
            **self.env_of(env),
            "WAREHOUSE_DSN": f"sqlite:///{tmp_path / f'warehouse-{env}.db'}",
        }
        with running_worker(command, self.path, worker_env, tmp_path / f"worker-{env}.log"):
            yield

    def smoke(self, env: str, tmp_path: Path) -> None:
        with self.worker(env, tmp_path):
            output = self.ok(env, "smoke", f"ENV={env}", "SMOKE_PARAMETERS={}")
        assert f"of {SLUG}/{env} (version " in output and "Completed." in output, output


def timed(label: str, started: float) -> None:
    print(f"\n{label}: {time.monotonic() - started:.1f} s")


def test_promotion_reads_each_previous_environment_from_its_own_api(
    template: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    path = render(
        template,
        tmp_path / SLUG,
        {
            "project_slug": SLUG,
            "description": OLD_DESCRIPTION,
            "environments": ENVIRONMENTS,
            "api_topology": "per-environment",
        },
    )
    env = sync(path)
    commit_lock(path)
    head = git("rev-parse", "HEAD", cwd=path).strip()
    with three_servers(tmp_path) as servers:
        timed("render, sync and three servers", started)
        repo = Repo(path, env, servers)

        # Staging without the previous settings (an API that does not answer is the generated
        # tests' case: each make here costs seconds of imports).
        output = repo.refused("staging", "deploy", "ENV=staging")
        assert "PREVIOUS_PREFECT_API_URL is unset" in output, output

        repo.ok("dev", "deploy", "ENV=dev")
        assert repo.deployment("dev")["version"] == head
        # dev deployed the commit but has not run it.
        output = repo.refused("staging", "deploy", "ENV=staging", **repo.previous_of("staging"))
        assert f"no run of {SLUG}/dev at version {head} has Completed" in output, output
        assert repo.deployments("staging") == []

        repo.smoke("dev", tmp_path)
        started = time.monotonic()
        repo.ok("staging", "deploy", "ENV=staging", **repo.previous_of("staging"))
        timed("staging deploy from dev's evidence", started)
        assert repo.deployment("staging")["version"] == head

        # prod reads staging, whose server wants its auth string: missing, then wrong.
        staging_url = servers["staging"].api_url
        output = repo.refused("prod", "deploy", "ENV=prod", url=staging_url)
        assert (
            "401 Unauthorized" in output and "PREVIOUS_PREFECT_API_AUTH_STRING is unset" in output
        )
        output = repo.refused("prod", "deploy", "ENV=prod", url=staging_url, auth_string=WRONG)
        assert "PREVIOUS_PREFECT_API_AUTH_STRING was not accepted" in output, output
        assert repo.deployments("prod") == []

        repo.smoke("staging", tmp_path)
        repo.ok("prod", "deploy", "ENV=prod", **repo.previous_of("prod"))
        for name in ENVIRONMENTS:
            assert repo.deployment(name)["version"] == head, name
            assert repo.deployment(name, f"{SLUG}-publish")["version"] == head, name

        # A commit off the default branch is never promoted, whatever the previous API says.
        git("switch", "-q", "-c", "feature", cwd=path)
        git("commit", "-q", "--allow-empty", "-m", "feature", cwd=path)
        feature = git("rev-parse", "HEAD", cwd=path).strip()
        output = repo.refused("prod", "deploy", "ENV=prod", **repo.previous_of("prod"))
        assert f"commit {feature[:12]} is not on the default branch" in output, output
        git("switch", "-q", "main", cwd=path)
        assert repo.deployment("prod")["version"] == head

        # Rollback deploys the older commit with its own prefect.yaml: a newer commit changes a
        # deployment's description, dev deploys it, and rolling back brings the old one back.
        prefect_yaml = path / "prefect.yaml"
        text = prefect_yaml.read_text(encoding="utf-8")
        assert f'description: "{OLD_DESCRIPTION}"' in text
        prefect_yaml.write_text(text.replace(OLD_DESCRIPTION, NEW_DESCRIPTION), encoding="utf-8")
        git("commit", "-q", "-am", "A new description", cwd=path)
        newer = git("rev-parse", "HEAD", cwd=path).strip()
        repo.ok("dev", "deploy", "ENV=dev")
        deployment = repo.deployment("dev")
        assert (deployment["version"], deployment["description"]) == (newer, NEW_DESCRIPTION)
        # A run of the newer commit recorded after the older one's: the rollback looks past it.
        # (Paging past 200 runs is the generated tests/test_topology.py's, with a page of two:
        # 201 runs through the API took 222 s here.) Named smoke-*: it triggers no publish run.
        complete_a_run(servers, "dev", deployment["id"], "smoke-newer")

        started = time.monotonic()
        output = repo.ok("dev", "rollback", "ENV=dev", f"TO={head[:12]}")
        timed("rollback", started)
        assert f"From {head[:12]}'s own prefect.yaml" in output, output
        deployment = repo.deployment("dev")
        assert (deployment["version"], deployment["description"]) == (head, OLD_DESCRIPTION)
        clone = deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]
        assert clone["commit_sha"] == head
        assert clone["repository"] == str(path)  # this repository, not the rollback's checkout
        # The checkout it deployed from is gone, and git forgot it.
        assert git("worktree", "list", "--porcelain", cwd=path).count("worktree ") == 1
        # prod's API holds no run of the newer commit: nothing to roll back to there.
        output = repo.refused("prod", "rollback", "ENV=prod", f"TO={newer}")
        assert "no Completed run of" in output and f"at commit {newer[:12]}" in output, output
