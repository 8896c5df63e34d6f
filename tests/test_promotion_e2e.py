"""Promotion rules on a real local Prefect server: what `make deploy`, `make smoke` and
`make rollback` of a generated repository do.

One server for the module and two renders on it: a process runtime with [dev, prod], whose
smoke run a real process worker executes, for the gate; and a docker runtime, for rollback by
digest. No Docker daemon or registry is used: the docker render deploys as the first
environment does after `ops/image.py` pushed the image, its digest given in DEPLOY_VERSION,
and its runs are marked Completed through the API (no Docker worker can run them here).
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.concurrency_bench import api
from tests.e2e.server import Server, running_server, running_worker
from tests.rendering import BIN, UNHEARD_ALERTS, git, render, run, sync

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

    def deployment(self, server: Server, env: str, flow: str = "") -> dict[str, Any]:
        return api(f"{server.api_url}/deployments/name/{flow or self.slug}/{env}")


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
    # prod requires an alerts target: the env backend reads it from ALERTS_TARGET.
    env = {**env, **server.env(), "PATH": f"{BIN}:{env['PATH']}", **UNHEARD_ALERTS}
    return Repo(repo, env, answers["project_slug"], answers["project_slug"].replace("-", "_"))


# The team's flows `make new-flow` adds to the process render: one on a schedule, one started
# by the first's runs. With the template's own two, every promotion rule covers four.
ADDED_FLOWS = {"cleanup": ["SCHEDULE=0 3 * * *"], "report": ["AFTER=promo-etl-cleanup"]}


def add_flows(repo: Repo) -> None:
    for name, options in ADDED_FLOWS.items():
        repo.make("new-flow", f"NAME={name}", *options)
    git("add", "-A", cwd=repo.path)
    git("commit", "-q", "-m", "Add the cleanup and report flows", cwd=repo.path)


def flows_of(repo: Repo) -> list[str]:
    """Every flow of the render: the template's, then the added ones."""
    return [repo.slug, f"{repo.slug}-publish", *(f"{repo.slug}-{n}" for n in ADDED_FLOWS)]


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
        add_flows(process)
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
    for flow in flows_of(repo):
        assert repo.deployment(server, "dev", flow)["version"] == head, flow
    cleanup = f"{repo.slug}-cleanup"
    refusal = refused(repo, "deploy", "ENV=prod")
    for flow in (repo.slug, cleanup):
        assert f"no run of {flow}/dev at version {head} has Completed" in refusal
    # A Completed run counts only when its own code recorded the deployed commit: one marked
    # Completed through the API, as no worker ran it, recorded nothing.
    complete_a_run(server, repo.deployment(server, "dev")["id"])
    refusal = refused(repo, "deploy", "ENV=prod")
    assert (
        f"no Completed run of {repo.slug}/dev at version {head} recorded running {head[:12]} "
        "(recorded: none)"
    ) in refusal
    # The gate wants a smoke run of every deployment no trigger starts, not just the first.
    assert f"no run of {cleanup}/dev at version {head} has Completed" in refusal

    worker = [str(repo.path / ".venv" / "bin" / "prefect"), "worker", "start"]
    worker_env = {**repo.env, "WAREHOUSE_DSN": f"sqlite:///{tmp_path / 'warehouse.db'}"}
    with running_worker(
        [*worker, "--pool", f"{repo.slug}-dev"], repo.path, worker_env, tmp_path / "worker.log"
    ):
        smoke = repo.make("smoke", "ENV=dev", "SMOKE_PARAMETERS={}")
    for flow in (repo.slug, cleanup):
        assert f"of {flow}/dev (version {head}): Completed." in smoke.stdout
        (run,) = smoke_runs(server, repo.deployment(server, "dev", flow)["id"])
        assert run["labels"].get("pipeline.commit") == head, (flow, run["labels"])
    # Triggered ones are checked on the server: deployed, and pointing at their upstream.
    assert f"{repo.slug}-report/dev: deployed, started by {cleanup}/dev." in smoke.stdout
    assert f"{repo.slug}-publish/dev: deployed, started by {repo.slug}/dev." in smoke.stdout

    repo.make("deploy", "ENV=prod")
    for flow in flows_of(repo):
        assert repo.deployment(server, "prod", flow)["version"] == head, flow

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

    # Rollback on the process runtime: the deployments name the earlier commit, which each run
    # clones; a commit no run completed is refused.
    repo.make("deploy", "ENV=dev")
    assert repo.deployment(server, "dev")["version"] == newer
    assert f"at commit {newer[:12]}" in refused(repo, "rollback", "ENV=dev", f"TO={newer}")
    repo.make("rollback", "ENV=dev", f"TO={head}")
    for flow in flows_of(repo):
        deployment = repo.deployment(server, "dev", flow)
        assert deployment["version"] == head, flow
        clone = deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]
        assert clone["commit_sha"] == head, flow


def smoke_runs(server: Server, deployment_id: str) -> list[dict[str, Any]]:
    query = {"deployments": {"id": {"any_": [deployment_id]}}}
    runs = api(f"{server.api_url}/flow_runs/filter", query)
    return [run for run in runs if run["name"].startswith("smoke-")]


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
    # One API for both environments: dev's Completed run of the old commit is no reason for
    # prod to roll back to it. prod never ran it, and a rollback copies no image into prod's
    # registry (environment_registries): refused, nothing deployed.
    output = refused(repo, "rollback", "ENV=prod", f"TO={old_commit[:12]}")
    assert f"at commit {old_commit[:12]}" in output and "'prod' never ran it" in output, output
    prod = {"deployments": {"name": {"any_": ["prod"]}}, "flows": {"name": {"any_": [repo.slug]}}}
    assert api(f"{server.api_url}/deployments/filter", prod) == []
    started = time.monotonic()
    output = repo.make("rollback", "ENV=dev", f"TO={old_commit[:12]}").stdout
    print(f"\nrollback took {time.monotonic() - started:.1f} s")
    assert f"version {old_commit}@{old_digest}" in output
    deployment = repo.deployment(server, "dev")
    assert deployment["version"] == f"{old_commit}@{old_digest}"
    assert deployment["job_variables"]["image"] == f"{image}:{old_commit[:12]}@{old_digest}"

    unknown = repo.commit("never deployed")
    assert "no Completed run" in refused(repo, "rollback", "ENV=dev", f"TO={unknown}")


def previews(server: Server, slug: str) -> list[dict[str, Any]]:
    return api(
        f"{server.api_url}/deployments/filter",
        {"deployments": {"tags": {"all_": [f"project:{slug}", "preview"]}}},
    )


def preview_names(server: Server, slug: str) -> set[str]:
    return {deployment["name"] for deployment in previews(server, slug)}


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
    # One preview per deployment no trigger starts: the template's flow and the added cleanup.
    cleanup = repo.deployment(server, "pr-7", f"{repo.slug}-cleanup")
    assert cleanup["schedules"] == [] and "env:pr-7" in cleanup["tags"]
    assert len(previews(server, repo.slug)) == 2

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


@pytest.mark.slow
def test_prune_deletes_the_deployments_of_a_flow_taken_out_of_flows_yaml(setup: Setup) -> None:
    server, repo = setup.server, setup.process
    repo.make("deploy", "ENV=dev")  # as the preview test does: the deployments exist
    flows_file = repo.path / "flows.yaml"
    declared = flows_file.read_text()
    flows = yaml.safe_load(declared)
    del flows["flows"]["report"]
    flows_file.write_text(yaml.safe_dump(flows))
    reconcile = [str(BIN / "uv"), "run", "python", "-m", f"{repo.package}.ops", "reconcile"]
    try:
        plan = run([*reconcile, "--env", "dev", "--dry-run"], repo.path, repo.env)
        assert (
            f"note: deployment {repo.slug}-report/dev is not in prefect.yaml or flows.yaml" in plan
        )
        pruned = run([*reconcile, "--env", "dev", "--prune"], repo.path, repo.env)
        assert f"delete  deployment   {repo.slug}-report/dev" in pruned
        assert "Applied 1 change(s)" in pruned
        with pytest.raises(urllib.error.HTTPError):
            repo.deployment(server, "dev", f"{repo.slug}-report")
        for flow in flows_of(repo)[:-1]:
            assert repo.deployment(server, "dev", flow)["name"] == "dev"
    finally:
        flows_file.write_text(declared)
