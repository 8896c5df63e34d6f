"""Promotion rules on a real local Prefect server: what `make deploy`, `make smoke` and
`make rollback` of a generated repository do.

One server for the module and two renders on it: a process runtime with [dev, prod], whose
smoke run a real process worker executes, for the gate; and a docker runtime, for rollback by
digest. No Docker daemon or registry is used: the docker render deploys as the first
environment does after `ops/image.py` pushed the image, its digest given in DEPLOY_VERSION,
and its runs are marked Completed through the API (no Docker worker can run them here).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.concurrency_bench import api
from tests.e2e.server import Server, running_server, running_worker
from tests.rendering import BIN, git, render, run, sync

# One pytest worker takes the whole module: its fixture (a server and two installed renders,
# about a minute on 2 cores) is set up once, not once per worker with one of its tests.
pytestmark = pytest.mark.xdist_group("promotion")

DIGEST_OLD = "sha256:" + "a" * 64
DIGEST_NEW = "sha256:" + "b" * 64


@dataclass
class Repo:
    path: Path
    env: dict[str, str]
    slug: str
    package: str

    def make(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["make", *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if check:
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"make {' '.join(args)}: {output}"
        return result

    def commit(self, message: str) -> str:
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.path)
        return git("rev-parse", "HEAD", cwd=self.path).strip()

    def deployment(self, server: Server, env: str) -> dict[str, Any]:
        return api(f"{server.api_url}/deployments/name/{self.slug}/{env}")


@dataclass
class Setup:
    server: Server
    process: Repo
    docker: Repo


def prepared(template: Path, destination: Path, server: Server, **answers: Any) -> Repo:
    repo = render(template, destination, answers)
    env = sync(repo)
    # uv.lock is written by the sync: commit it, as `make setup` asks, so the tree is clean.
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "lock", cwd=repo)
    env = {**env, **server.env(), "PATH": f"{BIN}:{env['PATH']}"}
    return Repo(repo, env, answers["project_slug"], answers["project_slug"].replace("-", "_"))


@pytest.fixture(scope="module")
def setup(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("promotion")
    with running_server(BIN / "prefect", work / "home", work / "server.log", os.environ) as server:
        process = prepared(
            template,
            work / "process",
            server,
            project_slug="promo-etl",
            environments=["dev", "prod"],
        )
        docker = prepared(
            template,
            work / "docker",
            server,
            project_slug="rollback-etl",
            runtime="docker",
            environments=["dev", "prod"],
        )
        # The env backend's secrets reach a container as files from this host directory: the
        # deploy refuses to leave the mount's source empty.
        docker.env["PIPELINE_SECRETS_DIR"] = str(work / "secrets")
        yield Setup(server, process, docker)


def refused(repo: Repo, *args: str) -> str:
    result = repo.make(*args, check=False)
    assert result.returncode != 0, f"make {' '.join(args)} was accepted:\n{result.stdout}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_prod_takes_only_what_dev_deployed_and_smoke_ran(setup: Setup, tmp_path: Path) -> None:
    server, repo = setup.server, setup.process
    head = git("rev-parse", "HEAD", cwd=repo.path).strip()
    assert "deploy 'dev' first" in refused(repo, "deploy", "ENV=prod")

    repo.make("deploy", "ENV=dev")
    assert repo.deployment(server, "dev")["version"] == head
    assert f"no run of {repo.slug}/dev at version {head} has Completed" in refused(
        repo, "deploy", "ENV=prod"
    )

    worker = [str(repo.path / ".venv" / "bin" / "prefect"), "worker", "start"]
    worker_env = {**repo.env, "WAREHOUSE_DSN": f"sqlite:///{tmp_path / 'warehouse.db'}"}
    with running_worker(
        [*worker, "--pool", f"{repo.slug}-dev"], repo.path, worker_env, tmp_path / "worker.log"
    ):
        smoke = repo.make("smoke", "ENV=dev", "SMOKE_PARAMETERS={}")
    assert f"(version {head}): Completed." in smoke.stdout

    repo.make("deploy", "ENV=prod")
    assert repo.deployment(server, "prod")["version"] == head

    # A newer commit dev has not deployed is refused, and so is one off the default branch.
    newer = repo.commit("newer")
    assert f"'dev' runs {head}, not {newer[:12]}" in refused(repo, "deploy", "ENV=prod")
    git("switch", "-q", "-c", "feature", cwd=repo.path)
    feature = repo.commit("feature")
    assert f"commit {feature[:12]} is not on the default branch" in refused(
        repo, "deploy", "ENV=prod"
    )
    git("switch", "-q", "main", cwd=repo.path)
    assert repo.deployment(server, "prod")["version"] == head


def complete_a_run(server: Server, deployment_id: str) -> None:
    """What a smoke run of the deployment leaves on the server, without a Docker worker."""
    flow_run = api(f"{server.api_url}/deployments/{deployment_id}/create_flow_run", {})
    for state in ("RUNNING", "COMPLETED"):
        api(
            f"{server.api_url}/flow_runs/{flow_run['id']}/set_state",
            {"state": {"type": state}, "force": True},
        )


@pytest.mark.slow
def test_rollback_redeploys_the_earlier_digest(setup: Setup) -> None:
    server, repo = setup.server, setup.docker
    image = f"registry.example.com/pipelines/{repo.slug}"
    versions = []
    for digest in (DIGEST_OLD, DIGEST_NEW):
        commit = repo.commit(f"release {digest[7]}")
        version = f"{commit}@{digest}"
        # As `make deploy ENV=dev` deploys once ops/image.py has pushed the commit's image.
        command = ["ops", "reconcile", "--env", "dev", "--prebuilt-image"]
        run(
            [str(BIN / "uv"), "run", "python", "-m", f"{repo.package}.{command[0]}", *command[1:]],
            cwd=repo.path,
            env={**repo.env, "DEPLOY_VERSION": version, "IMAGE_TAG": f"{commit[:12]}@{digest}"},
        )
        deployment = repo.deployment(server, "dev")
        assert deployment["version"] == version
        complete_a_run(server, deployment["id"])
        versions.append((commit, digest))

    (old_commit, old_digest), _ = versions
    started = time.monotonic()
    output = repo.make("rollback", "ENV=dev", f"TO={old_commit[:12]}").stdout
    print(f"\nrollback took {time.monotonic() - started:.1f} s")
    assert f"version {old_commit}@{old_digest}" in output
    deployment = repo.deployment(server, "dev")
    assert deployment["version"] == f"{old_commit}@{old_digest}"
    assert deployment["job_variables"]["image"] == f"{image}:{old_commit[:12]}@{old_digest}"

    unknown = repo.commit("never deployed")
    assert "no Completed run" in refused(repo, "rollback", "ENV=dev", f"TO={unknown}")


def preview_names(server: Server, slug: str) -> set[str]:
    found = api(
        f"{server.api_url}/deployments/filter",
        {"deployments": {"tags": {"all_": [f"project:{slug}", "preview"]}}},
    )
    return {deployment["name"] for deployment in found}


@pytest.mark.slow
def test_a_request_preview_opens_unscheduled_and_closes(setup: Setup) -> None:
    server, repo = setup.server, setup.process
    repo.make("deploy", "ENV=dev")  # the pool previews use; nothing to do when it exists
    repo.make("preview", "REQUEST=7")
    preview = repo.deployment(server, "pr-7")
    assert preview["work_pool_name"] == f"{repo.slug}-dev"
    assert preview["schedules"] == []
    assert {"preview", "env:pr-7", f"project:{repo.slug}"} <= set(preview["tags"])
    assert "env:dev" not in preview["tags"]  # dev's reconcile --prune never sees it
    assert preview_names(server, repo.slug) == {"pr-7"}

    # Where a platform has no event for a closed request, the merge commit names it.
    git(
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "Merge pull request #7 from acme/topic",
        cwd=repo.path,
    )
    repo.make("preview-prune")
    assert preview_names(server, repo.slug) == set()
    assert repo.deployment(server, "dev")["name"] == "dev"


def runs_of(server: Server, deployment_id: str) -> list[dict[str, Any]]:
    return api(
        f"{server.api_url}/flow_runs/filter",
        {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "START_TIME_DESC"},
    )


@pytest.mark.slow
def test_a_smoke_run_is_small_and_starts_nothing_downstream_unless_its_environment_says_so(
    setup: Setup, tmp_path: Path
) -> None:
    server, repo = setup.server, setup.process
    repo.make("deploy", "ENV=dev")
    publish = api(f"{server.api_url}/deployments/name/{repo.slug}-publish/dev")
    published_before = len(runs_of(server, publish["id"]))
    config = repo.path / "config" / "orchestration.yaml"
    original = config.read_text(encoding="utf-8")
    worker = [str(repo.path / ".venv" / "bin" / "prefect"), "worker", "start"]
    worker_env = {**repo.env, "WAREHOUSE_DSN": f"sqlite:///{tmp_path / 'warehouse.db'}"}
    with running_worker(
        [*worker, "--pool", f"{repo.slug}-dev"], repo.path, worker_env, tmp_path / "worker.log"
    ):
        repo.make("smoke", "ENV=dev")  # the parameters of config/orchestration.yaml
        (smoke, *_) = runs_of(server, repo.deployment(server, "dev")["id"])
        assert (smoke["name"], smoke["parameters"]) == ("smoke-dev", {"max_rows": 20})
        summary = api(f"{server.api_url}/artifacts/{repo.slug}-run-summary/latest")
        assert summary["flow_run_id"] == smoke["id"]
        data = summary["data"]
        batches = json.loads(data) if isinstance(data, str) else data
        assert sum(batch["rows"] for batch in batches) == 20  # max_rows, of the 200 rows
        # The trigger fires within seconds of a Completed event when it matches at all.
        time.sleep(15)
        assert len(runs_of(server, publish["id"])) == published_before, "a smoke run published"

        config.write_text(
            original.replace("trigger_downstream: false", "trigger_downstream: true", 1),
            encoding="utf-8",
        )
        try:
            repo.make("smoke", "ENV=dev")
        finally:
            config.write_text(original, encoding="utf-8")
        deadline = time.monotonic() + 120
        while len(triggered := runs_of(server, publish["id"])) == published_before:
            assert time.monotonic() < deadline, "trigger_downstream: true started no publish run"
            time.sleep(1)
        while triggered[0]["state"]["type"] not in {"COMPLETED", "FAILED", "CRASHED"}:
            assert time.monotonic() < deadline, f"publish run still {triggered[0]['state']}"
            time.sleep(1)
            triggered = runs_of(server, publish["id"])
    assert triggered[0]["state"]["type"] == "COMPLETED"


@pytest.mark.slow
def test_a_smoke_run_queued_behind_another_run_is_reported_as_queued(setup: Setup) -> None:
    server, repo = setup.server, setup.process
    repo.make("deploy", "ENV=dev")
    deployment = repo.deployment(server, "dev")
    # A run that holds the deployment's one slot, as a scheduled run a worker started does.
    ahead = api(f"{server.api_url}/deployments/{deployment['id']}/create_flow_run", {})
    taken = api(
        f"{server.api_url}/flow_runs/{ahead['id']}/set_state", {"state": {"type": "PENDING"}}
    )
    assert taken["status"] == "ACCEPT", taken
    try:
        command = [str(BIN / "uv"), "run", "python", "-m", f"{repo.package}.ops.smoke"]
        result = subprocess.run(
            [*command, "--env", "dev", "--timeout", "10"],
            cwd=repo.path,
            env=repo.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for run_ in runs_of(server, deployment["id"]):
            if run_["state"]["type"] in {"SCHEDULED", "PENDING"}:
                api(
                    f"{server.api_url}/flow_runs/{run_['id']}/set_state",
                    {"state": {"type": "CANCELLED"}, "force": True},
                )
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"is queued (Scheduled) behind {ahead['name']} ({ahead['id']}, Pending)" in (
        result.stderr
    )
    assert "the deploy is applied" in result.stderr
