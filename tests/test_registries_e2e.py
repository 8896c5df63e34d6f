"""Promotion across registries and APIs for real: a docker-runtime render whose dev images live
in one local registry and prod's in another (`environment_registries`), the second with
htpasswd auth, and whose environments each have their own Prefect API (`api_topology:
per-environment`): two `prefect server`s on 127.0.0.1, each with its own
PREFECT_SERVER_API_AUTH_STRING; prod's deploy reads dev's evidence from dev's server with the
PREVIOUS_PREFECT_API_* settings.

`make deploy ENV=dev` builds and pushes the image once into dev's registry (a real Docker
engine, tests/e2e/docker_host.sh); dev's smoke run is recorded through the API (a run marked
Completed and labelled with the commit, as its code labels it: no Docker worker runs it here,
tests/test_docker_e2e.py does that). `make deploy ENV=prod` is refused, with nothing copied
and nothing deployed, while prod's registry credential is missing or wrong, the message naming
the setting and never the value; with it, the manifest is copied by digest (ops/registry_copy.py)
and prod deploys that digest from its own registry: nothing rebuilt, the digest dev's. Then a
newer commit goes through both, and `make rollback ENV=prod TO=<first>` deploys the first
commit's image by digest with that commit's own prefect.yaml.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import docker
from tests.e2e.server import Server, running_server
from tests.rendering import BIN, UNHEARD_ALERTS, answers_of, commit_lock, git, render, sync

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("registries")]
# The setup's render beside the server's start, and the two refused deploys side by side.
background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="registries-e2e")

PROD_LOGIN = ("prod-pusher", "prod-e2e-password")
WRONG_PASSWORD = "not-the-prod-e2e-password"
# Each server's basic auth, made up and built by parts.
API_AUTH = {env: f"ops-{env}" + ":" + "not-a-real-" + env for env in ("dev", "prod")}
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Stack:
    servers: dict[str, Server]
    dev_registry: str
    prod_registry: str
    repo: Path
    envs: dict[str, str]

    def env_of(self, environment: str) -> dict[str, str]:
        """What environment's CI job holds: its own API and auth string; for prod, dev's API
        and auth string as the previous environment's read credentials."""
        env = {
            **self.envs,
            **self.servers[environment].env(),
            "PREFECT_API_AUTH_STRING": API_AUTH[environment],
        }
        if environment == "prod":
            env["PREVIOUS_PREFECT_API_URL"] = self.servers["dev"].api_url
            env["PREVIOUS_PREFECT_API_AUTH_STRING"] = API_AUTH["dev"]
        return env


@pytest.fixture(scope="module")
def stack(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    docker.require_docker()
    work = tmp_path_factory.mktemp("registries")
    with contextlib.ExitStack() as services:
        dev_registry = services.enter_context(docker.running_registry(work / "dev-registry"))
        prod_registry = services.enter_context(
            docker.running_registry(work / "prod-registry", login=PROD_LOGIN)
        )
        # The answers of test_docker_e2e's env render but the registries: the same uv.lock, so
        # the daemon's build cache of its dependency layer serves both.
        answers = {
            "runtime": "docker",
            "python_version": docker.PYTHON_VERSION,
            "environments": ["dev", "prod"],
            "image_registry": f"{dev_registry}/pipelines",
            "environment_registries": {"prod": f"{prod_registry}/prod"},
            "api_topology": "per-environment",
        }
        # Rendered and synced while the server starts (10 s of it on 2 cores).
        prepared = background.submit(prepare, template, work / "repo", answers)
        servers = {
            name: services.enter_context(
                running_server(
                    BIN / "prefect",
                    work / f"home-{name}",
                    work / f"server-{name}.log",
                    os.environ,
                    auth_string=auth,
                )
            )
            for name, auth in API_AUTH.items()
        }
        repo, env = prepared.result(timeout=600)
        secrets = work / "secrets"
        secrets.mkdir()
        env = {
            **{k: v for k, v in env.items() if not k.startswith(("PREFECT_API_", "PREVIOUS_"))},
            "PATH": f"{BIN}:{env['PATH']}",
            "DOCKER_CONFIG": str(work / "docker-config"),
            "PIPELINE_SECRETS_DIR": str(secrets),
            **UNHEARD_ALERTS,  # prod, the last environment, requires an alerts target
        }
        for name in (
            "REGISTRY_USERNAME",
            "REGISTRY_PASSWORD",
            "SOURCE_REGISTRY_USERNAME",
            "SOURCE_REGISTRY_PASSWORD",
        ):
            env.pop(name, None)
        yield Stack(servers, dev_registry, prod_registry, repo, env)


def prepare(template: Path, destination: Path, answers: dict[str, Any]) -> tuple[Path, dict]:
    repo = render(template, destination, answers)
    env = sync(repo)
    commit_lock(repo)
    return repo, env


def make(
    stack: Stack, environment: str, *args: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", *args, f"ENV={environment}"],
        cwd=stack.repo,
        env={**stack.env_of(environment), **extra},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def served_digest(registry: str, name: str, tag: str, login: tuple[str, str] | None = None) -> str:
    """The digest registry serves for name:tag, '' when it has none."""
    response = httpx.head(
        f"http://{registry}/v2/{name}/manifests/{tag}",
        headers={"Accept": f"{MANIFEST_V2}, {OCI_MANIFEST}"},
        auth=login,
        timeout=10,
    )
    return response.headers.get("Docker-Content-Digest", "") if response.status_code == 200 else ""


def catalog(registry: str, login: tuple[str, str] | None = None) -> list[str]:
    response = httpx.get(f"http://{registry}/v2/_catalog", auth=login, timeout=10)
    response.raise_for_status()
    return list(response.json()["repositories"] or [])


def call(
    stack: Stack, environment: str, method: str, path: str, body: Any = None
) -> httpx.Response:
    """environment's server's API with its basic auth. A 503 is retried: a fresh server's
    services hold SQLite's write lock."""
    user, password = API_AUTH[environment].split(":", 1)
    url = f"{stack.servers[environment].api_url}{path}"
    for _ in range(10):
        response = httpx.request(method, url, json=body, auth=(user, password), timeout=30)
        if response.status_code != 503:
            break
        time.sleep(1)
    return response


def api(stack: Stack, environment: str, path: str, body: Any = None) -> Any:
    response = call(stack, environment, "GET" if body is None else "POST", path, body)
    response.raise_for_status()
    return response.json() if response.content else None


def record_smoke_run(stack: Stack, environment: str, deployment_id: str, commit: str) -> None:
    """What `make smoke ENV=environment` leaves on its server: a Completed run (named smoke-*,
    so it starts no downstream run) labelled with the commit by its code."""
    path = f"/deployments/{deployment_id}/create_flow_run"
    flow_run = api(stack, environment, path, {"name": f"smoke-{commit[:12]}"})
    for state in ("RUNNING", "COMPLETED"):
        body = {"state": {"type": state}, "force": True}
        api(stack, environment, f"/flow_runs/{flow_run['id']}/set_state", body)
    labels = {"pipeline.commit": commit}
    response = call(stack, environment, "PATCH", f"/flow_runs/{flow_run['id']}/labels", labels)
    response.raise_for_status()


def no_prod_deployment(stack: Stack, slug: str) -> bool:
    return call(stack, "prod", "GET", f"/deployments/name/{slug}/prod").status_code == 404


def test_prod_gets_dev_s_digest_copied_into_its_own_registry(stack: Stack) -> None:
    started = time.monotonic()
    slug = answers_of(stack.repo)["project_slug"]
    commit = git("rev-parse", "HEAD", cwd=stack.repo).strip()
    tag = commit[:12]
    dev_image, prod_image = f"pipelines/{slug}", f"prod/{slug}"

    deployed = make(stack, "dev", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert deployed.stdout.count("Building ") == 1, deployed.stdout
    digest = served_digest(stack.dev_registry, dev_image, tag)
    assert digest, f"dev's registry has no {dev_image}:{tag}"
    dev = api(stack, "dev", f"/deployments/name/{slug}/dev")
    assert dev["job_variables"]["image"] == f"{stack.dev_registry}/{dev_image}:{tag}@{digest}"
    # prod's API has nothing of dev's: promotion can only have read it from dev's server.
    assert call(stack, "prod", "GET", f"/deployments/name/{slug}/dev").status_code == 404
    record_smoke_run(stack, "dev", dev["id"], commit)
    built = time.monotonic()

    # Refused before anything moves: no credential for prod's registry, and a wrong one (at
    # once, each with its own Docker client config, where `make registry-login` writes).
    cases = [
        (
            {"DOCKER_CONFIG": str(stack.repo.parent / "no-login")},
            "REGISTRY_USERNAME and REGISTRY_PASSWORD are not set",
        ),
        (
            {"REGISTRY_USERNAME": PROD_LOGIN[0], "REGISTRY_PASSWORD": WRONG_PASSWORD},
            "REGISTRY_USERNAME and REGISTRY_PASSWORD do not give it",
        ),
    ]
    attempts = [background.submit(make, stack, "prod", "deploy", **extra) for extra, _ in cases]
    for attempt, (_, said) in zip(attempts, cases, strict=True):
        refused = attempt.result(timeout=600)
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0, output
        assert f"{stack.prod_registry} refused write access to {prod_image} (HTTP 401)" in output
        assert said in output, output
        assert WRONG_PASSWORD not in output and PROD_LOGIN[1] not in output
        assert not any(auth in output for auth in API_AUTH.values())
        assert "Traceback" not in output, output
        assert catalog(stack.prod_registry, PROD_LOGIN) == []
        assert no_prod_deployment(stack, slug)

    login = {"REGISTRY_USERNAME": PROD_LOGIN[0], "REGISTRY_PASSWORD": PROD_LOGIN[1]}
    promoted = make(stack, "prod", "deploy", **login)
    output = promoted.stdout + promoted.stderr
    assert promoted.returncode == 0, output
    assert "Building " not in output, output  # nothing rebuilt
    assert PROD_LOGIN[1] not in output
    assert not any(auth in output for auth in API_AUTH.values())
    assert f"serves {digest} (" in output, output
    assert served_digest(stack.prod_registry, prod_image, tag, PROD_LOGIN) == digest
    # The same bytes, read back by digest from prod's registry.
    assert served_digest(stack.prod_registry, prod_image, digest, PROD_LOGIN) == digest
    for flow in (slug, f"{slug}-publish"):
        prod = api(stack, "prod", f"/deployments/name/{flow}/prod")
        image = prod["job_variables"]["image"]
        assert image == f"{stack.prod_registry}/{prod_image}:{tag}@{digest}", flow
        assert prod["version"] == f"{commit}@{digest}"
        if flow == slug:
            record_smoke_run(stack, "prod", prod["id"], commit)  # what rollback looks for
    # prod's registry was never pushed to by the Docker engine: no local image names it.
    assert not docker.image_id(f"{stack.prod_registry}/{prod_image}:{tag}")
    copied = time.monotonic()

    # Rollback: a newer commit (another description in prefect.yaml) goes dev -> prod, then
    # prod is rolled back to the first: its image by digest from prod's registry, deployed
    # with that commit's own prefect.yaml, reading only prod's API.
    description = answers_of(stack.repo)["description"]
    prefect_yaml = stack.repo / "prefect.yaml"
    text = prefect_yaml.read_text(encoding="utf-8")
    assert f'description: "{description}"' in text
    prefect_yaml.write_text(text.replace(description, "Changed later."), encoding="utf-8")
    git("commit", "-q", "-am", "A new description", cwd=stack.repo)
    newer = git("rev-parse", "HEAD", cwd=stack.repo).strip()
    deployed = make(stack, "dev", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    record_smoke_run(stack, "dev", dev["id"], newer)
    promoted = make(stack, "prod", "deploy", **login)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    prod = api(stack, "prod", f"/deployments/name/{slug}/prod")
    assert prod["version"].startswith(f"{newer}@") and prod["description"] == "Changed later."
    rolled = make(stack, "prod", "rollback", f"TO={tag}", **login)
    output = rolled.stdout + rolled.stderr
    assert rolled.returncode == 0, output
    assert f"From {tag}'s own prefect.yaml" in output, output
    assert "Building " not in output and PROD_LOGIN[1] not in output
    prod = api(stack, "prod", f"/deployments/name/{slug}/prod")
    assert (prod["version"], prod["description"]) == (f"{commit}@{digest}", description)
    assert prod["job_variables"]["image"] == f"{stack.prod_registry}/{prod_image}:{tag}@{digest}"
    print(
        f"\ndev deploy (build, push) {built - started:.0f} s, "
        f"prod refusals and copy {copied - built:.0f} s, "
        f"newer commit through both and rollback {time.monotonic() - copied:.0f} s"
    )
