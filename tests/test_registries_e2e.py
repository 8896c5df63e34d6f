"""Promotion across registries and APIs for real, as issue #21 asks it tested: a docker-runtime
render promoted dev -> staging -> prod (`api_topology: per-environment`) across three `prefect
server`s on 127.0.0.1 (tests/e2e/three_apis.py: dev without auth, staging and prod each with its
own PREFECT_SERVER_API_AUTH_STRING), each environment's deploy reading the previous one's
evidence from the previous server with the PREVIOUS_PREFECT_API_* settings; and through two
local registries (`environment_registries`): dev and staging share one, prod has its own with
htpasswd auth.

`make deploy ENV=dev` builds and pushes the image once into dev's registry (a real Docker
engine, tests/e2e/docker_host.sh); each smoke run is recorded through its environment's API (a
run marked Completed and labelled with the commit, as its code labels it: no Docker worker runs
it here, tests/test_docker_e2e.py does that). Refused, with nothing deployed and nothing copied:
staging while dev has not run the commit; prod while the previous API's auth string is missing
or wrong, while prod's registry credential is missing or wrong (each message naming the setting,
never the value), for a commit off the default branch, and a rollback to a commit prod never
ran. Otherwise staging deploys dev's digest from the shared registry, and prod gets that digest
copied into its own (ops/registry_copy.py) and deploys it: nothing rebuilt, the digest dev's.
Then a newer commit goes through all three, and `make rollback ENV=prod TO=<first>` deploys the
first commit's image by digest with that commit's own prefect.yaml.

"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import docker
from tests.e2e.server import Server
from tests.e2e.three_apis import (
    AUTH,
    WRONG,
    complete_a_run,
    previous_of,
    read_deployment,
    three_servers,
)
from tests.rendering import BIN, UNHEARD_ALERTS, answers_of, commit_lock, git, render, sync

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("registries")]
# The setup's render beside the servers' start, and refusals beside a deploy, side by side.
background = ThreadPoolExecutor(max_workers=3, thread_name_prefix="registries-e2e")

PROD_LOGIN = ("prod-pusher", "prod-e2e-password")
WRONG_PASSWORD = "not-the-prod-e2e-password"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# What each refusal must never print: the registry passwords and the APIs' auth strings.
SECRETS = (PROD_LOGIN[1], WRONG_PASSWORD, WRONG, *AUTH.values())


@dataclass
class Stack:
    servers: dict[str, Server]
    dev_registry: str
    prod_registry: str
    repo: Path
    envs: dict[str, str]

    def env_of(self, environment: str) -> dict[str, str]:
        """What environment's CI job holds: its own API and auth string (dev's has none), and
        the previous environment's API and auth string as its read credentials."""
        env = {**self.envs, **self.servers[environment].env()}
        if environment in AUTH:
            env["PREFECT_API_AUTH_STRING"] = AUTH[environment]
        if environment != "dev":
            previous = previous_of(environment)
            env["PREVIOUS_PREFECT_API_URL"] = self.servers[previous].api_url
            if previous in AUTH:
                env["PREVIOUS_PREFECT_API_AUTH_STRING"] = AUTH[previous]
        return env

    def deployment(self, environment: str, flow: str) -> dict[str, Any] | None:
        return read_deployment(self.servers, environment, f"{flow}/{environment}")


@pytest.fixture(scope="module")
def stack(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    docker.require_docker()
    work = tmp_path_factory.mktemp("registries")
    with contextlib.ExitStack() as services:
        dev_registry = services.enter_context(docker.running_registry(work / "dev-registry"))
        prod_registry = services.enter_context(
            docker.running_registry(work / "prod-registry", login=PROD_LOGIN)
        )
        # The answers of test_docker_e2e's env render but the registries and the environments:
        # the same uv.lock, so the daemon's build cache of its dependency layer serves both.
        answers = {
            "runtime": "docker",
            "python_version": docker.PYTHON_VERSION,
            "environments": ["dev", "staging", "prod"],
            "image_registry": f"{dev_registry}/pipelines",
            "environment_registries": {"prod": f"{prod_registry}/prod"},
            "api_topology": "per-environment",
        }
        # Rendered and synced while the servers start (10 s of it on 2 cores).
        prepared = background.submit(prepare, template, work / "repo", answers)
        servers = services.enter_context(three_servers(work))
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
    stack: Stack, environment: str, *args: str, **extra: str | None
) -> subprocess.CompletedProcess[str]:
    """`make <args> ENV=environment` with environment's settings; extra overrides them, None
    unsets one."""
    env = {**stack.env_of(environment), **extra}
    return subprocess.run(
        ["make", *args, f"ENV={environment}"],
        cwd=stack.repo,
        env={name: value for name, value in env.items() if value is not None},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def soon(stack: Stack, environment: str, *args: str, **extra: str | None) -> Future:
    return background.submit(make, stack, environment, *args, **extra)


def succeeded(result: subprocess.CompletedProcess[str] | Future) -> str:
    if isinstance(result, Future):
        result = result.result(timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not any(secret in output for secret in SECRETS), "a credential was echoed"
    return output


def refused(result: subprocess.CompletedProcess[str] | Future, *said: str) -> str:
    """The output of a refused make (promote's exit 2), which says each of said and echoes
    no credential."""
    if isinstance(result, Future):
        result = result.result(timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert not any(secret in output for secret in SECRETS), "a credential was echoed"
    for words in said:
        assert words in output, output
    return output


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


def smoked(stack: Stack, environment: str, flow: str, commit: str) -> None:
    """What `make smoke ENV=environment` leaves on its server: a Completed run of flow's
    deployment (named smoke-*, so it starts no downstream run) labelled with the commit."""
    deployment = stack.deployment(environment, flow)
    assert deployment is not None, f"{flow}/{environment} is not deployed"
    complete_a_run(stack.servers, environment, deployment["id"], f"smoke-{commit[:12]}", commit)


def test_one_digest_goes_dev_staging_prod_across_three_apis_and_two_registries(
    stack: Stack,
) -> None:
    started = time.monotonic()
    slug = answers_of(stack.repo)["project_slug"]
    flows = (slug, f"{slug}-publish")
    commit = git("rev-parse", "HEAD", cwd=stack.repo).strip()
    tag = commit[:12]
    dev_image, prod_image = f"pipelines/{slug}", f"prod/{slug}"
    login = {"REGISTRY_USERNAME": PROD_LOGIN[0], "REGISTRY_PASSWORD": PROD_LOGIN[1]}

    def nothing_in_prod(*commits: str) -> None:
        """prod's registry holds no image of these commits, and prod's deployment is what it
        was: the first commit's, or none before that one got there."""
        for other in commits:
            assert not served_digest(stack.prod_registry, prod_image, other[:12], PROD_LOGIN)
        prod = stack.deployment("prod", slug)
        assert prod is None or prod["version"] == f"{commit}@{digest}", prod

    # dev builds and pushes once. Meanwhile prod, which reads staging's API, is refused
    # without its auth string and with a wrong one, before it reads anything.
    without_auth = soon(stack, "prod", "deploy", PREVIOUS_PREFECT_API_AUTH_STRING=None, **login)
    wrong_auth = soon(stack, "prod", "deploy", PREVIOUS_PREFECT_API_AUTH_STRING=WRONG, **login)
    output = succeeded(make(stack, "dev", "deploy"))
    assert output.count("Building ") == 1, output
    digest = served_digest(stack.dev_registry, dev_image, tag)
    assert digest, f"dev's registry has no {dev_image}:{tag}"
    dev = stack.deployment("dev", slug)
    assert dev is not None
    assert dev["job_variables"]["image"] == f"{stack.dev_registry}/{dev_image}:{tag}@{digest}"
    refused(without_auth, "401 Unauthorized", "PREVIOUS_PREFECT_API_AUTH_STRING is unset")
    refused(wrong_auth, "PREVIOUS_PREFECT_API_AUTH_STRING was not accepted")
    # dev deployed the commit but has not run it: staging refuses it.
    refused(
        make(stack, "staging", "deploy"),
        f"no run of {slug}/dev at version {commit}@{digest} has Completed",
    )
    for environment in ("staging", "prod"):
        assert stack.deployment(environment, slug) is None, environment
        # Their APIs hold nothing of dev's: promotion can only read it from dev's server.
        assert stack.deployment(environment, f"{slug}/dev") is None
    assert catalog(stack.prod_registry, PROD_LOGIN) == []
    built = time.monotonic()

    # staging shares dev's registry: the same reference by digest, nothing built or copied.
    smoked(stack, "dev", slug, commit)
    output = succeeded(make(stack, "staging", "deploy"))
    assert "Building " not in output and "Copying " not in output, output
    for flow in flows:
        staging = stack.deployment("staging", flow)
        assert staging is not None and staging["version"] == f"{commit}@{digest}", flow
        image = staging["job_variables"]["image"]
        assert image == f"{stack.dev_registry}/{dev_image}:{tag}@{digest}", flow
    smoked(stack, "staging", slug, commit)

    # prod's registry refuses the copy before anything moves: no credential for it, and a
    # wrong one (each with its own Docker client config, where `make registry-login` writes).
    attempts = [
        soon(stack, "prod", "deploy", DOCKER_CONFIG=str(stack.repo.parent / "no-login")),
        soon(
            stack,
            "prod",
            "deploy",
            REGISTRY_USERNAME=PROD_LOGIN[0],
            REGISTRY_PASSWORD=WRONG_PASSWORD,
        ),
    ]
    for attempt, said in zip(
        attempts,
        (
            "REGISTRY_USERNAME and REGISTRY_PASSWORD are not set",
            "REGISTRY_USERNAME and REGISTRY_PASSWORD do not give it",
        ),
        strict=True,
    ):
        refused(
            attempt, f"{stack.prod_registry} refused write access to {prod_image} (HTTP 401)", said
        )
    assert catalog(stack.prod_registry, PROD_LOGIN) == []
    nothing_in_prod(commit)

    output = succeeded(make(stack, "prod", "deploy", **login))
    assert "Building " not in output, output  # nothing rebuilt
    assert f"serves {digest} (" in output, output
    assert served_digest(stack.prod_registry, prod_image, tag, PROD_LOGIN) == digest
    # The same bytes, read back by digest from prod's registry.
    assert served_digest(stack.prod_registry, prod_image, digest, PROD_LOGIN) == digest
    for flow in flows:
        prod = stack.deployment("prod", flow)
        assert prod is not None and prod["version"] == f"{commit}@{digest}", flow
        image = prod["job_variables"]["image"]
        assert image == f"{stack.prod_registry}/{prod_image}:{tag}@{digest}", flow
    smoked(stack, "prod", slug, commit)  # what rollback looks for
    # prod's registry was never pushed to by the Docker engine: no local image names it.
    assert not docker.image_id(f"{stack.prod_registry}/{prod_image}:{tag}")
    promoted = time.monotonic()

    # A newer commit (another description in prefect.yaml), first on a branch: dev deploys
    # it (the first environment deploys HEAD), and meanwhile prod refuses it, off the default
    # branch, whatever the previous API says.
    description = answers_of(stack.repo)["description"]
    prefect_yaml = stack.repo / "prefect.yaml"
    text = prefect_yaml.read_text(encoding="utf-8")
    assert f'description: "{description}"' in text
    git("switch", "-q", "-c", "feature", cwd=stack.repo)
    prefect_yaml.write_text(text.replace(description, "Changed later."), encoding="utf-8")
    git("commit", "-q", "-am", "A new description", cwd=stack.repo)
    newer = git("rev-parse", "HEAD", cwd=stack.repo).strip()
    off_branch = soon(stack, "prod", "deploy", **login)
    succeeded(make(stack, "dev", "deploy"))
    refused(off_branch, f"commit {newer[:12]} is not on the default branch")
    nothing_in_prod(newer)
    git("switch", "-q", "main", cwd=stack.repo)
    git("merge", "-q", "--ff-only", "feature", cwd=stack.repo)
    smoked(stack, "dev", slug, newer)

    # staging takes it; meanwhile a prod rollback to it, which prod never ran, is refused.
    never_ran = soon(stack, "prod", "rollback", f"TO={newer[:12]}", **login)
    succeeded(make(stack, "staging", "deploy"))
    refused(never_ran, f"at commit {newer[:12]}", "'prod' never ran it", "nothing was deployed")
    nothing_in_prod(newer)
    smoked(stack, "staging", slug, newer)
    succeeded(make(stack, "prod", "deploy", **login))
    prod = stack.deployment("prod", slug)
    assert prod is not None
    assert prod["version"].startswith(f"{newer}@") and prod["description"] == "Changed later."

    # Rollback: prod back to the first commit, its image by digest from prod's registry,
    # deployed with that commit's own prefect.yaml, reading only prod's API.
    output = succeeded(make(stack, "prod", "rollback", f"TO={tag}", **login))
    assert f"From {tag}'s own prefect.yaml" in output, output
    assert "Building " not in output and "Copying " not in output, output
    for flow in flows:
        prod = stack.deployment("prod", flow)
        assert prod is not None and prod["version"] == f"{commit}@{digest}", flow
        assert (
            prod["job_variables"]["image"] == f"{stack.prod_registry}/{prod_image}:{tag}@{digest}"
        )
    prod = stack.deployment("prod", slug)
    assert prod is not None and prod["description"] == description
    print(
        f"\ndev deploy (build, push) and refusals {built - started:.0f} s, "
        f"staging, prod refusals and copy {promoted - built:.0f} s, "
        f"newer commit through all three and rollback {time.monotonic() - promoted:.0f} s"
    )
