"""The Docker runtime for real: render `runtime: docker`, `make reconcile ENV=<first>` builds the
generated Dockerfile and pushes the image to a local registry once, deploys it by digest, the
local image is removed so the worker must pull it, and a Docker worker runs the deployment in a
container: Completed, rows in the warehouse, the publish flow triggered (in a container too).

Once with the env backend (the secret is a file on the worker's host, mounted read-only) and
once with AWS Secrets Manager, read inside the container from moto's HTTP endpoint on
127.0.0.1; that repository also keeps its results in moto's S3 (a prefect-aws block per
environment, saved by `make reconcile`): a second dev run's transform tasks are Cached, a run
of the next environment is not. The image build is checked against the same registry: a tag
holding an image for another platform is refused (and reused by an environment declaring that
platform), an untracked file refuses the build, an ignored one stays out of the image. One
Prefect server and one registry for the module. Docker comes from
tests/e2e/docker_host.sh, which `make test` runs first: without it the tests skip, except under
CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest

from bench.concurrency_bench import api
from tests.e2e import docker
from tests.e2e.server import Server, running_server, running_worker
from tests.rendering import BIN, answers_of, commit_lock, git, render, run, sync
from tests.test_orchestration_e2e import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("docker")]
# Work a test overlaps with its flow runs (they wait on containers, not on this process).
background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docker-e2e")


@dataclass
class DockerStack:
    workdir: Path
    server: Server
    registry: str
    moto: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerStack]:
    docker.require_docker()
    workdir = tmp_path_factory.mktemp("docker")
    with contextlib.ExitStack() as services:
        registry = services.enter_context(docker.running_registry(workdir / "registry"))
        moto_server = docker.running_moto(BIN / "moto_server", workdir / "moto.log")
        moto = services.enter_context(moto_server)
        server = services.enter_context(
            running_server(BIN / "prefect", workdir / "home", workdir / "server.log", os.environ)
        )
        yield DockerStack(workdir, server, registry, moto)


RESULTS_BUCKET = "pipeline-results"
# Each environment's results block: its own folder of one bucket (config/<env>.yaml).
RESULT_STORAGE = (
    "result_storage:\n"
    "  block_type: s3-bucket\n"
    "  bucket_name: ${RESULTS_BUCKET}\n"
    "  bucket_folder: {env}\n"
)


@dataclass
class Rendered:
    repo: Path
    env: dict[str, str]
    answers: dict[str, Any]


@pytest.fixture(scope="module")
def rendered(stack: DockerStack, template: Path) -> Callable[[str], Rendered]:
    """A docker repository per secret backend, rendered, committed and synced once."""

    @cache
    def render_for(backend: str) -> Rendered:
        answers: dict[str, Any] = {
            "secret_backend": backend,
            "runtime": "docker",
            "python_version": docker.PYTHON_VERSION,
            "image_registry": f"{stack.registry}/pipelines",
        }
        if backend == "aws-secrets-manager":
            answers["project_name"] = "Sales ETL AWS"
        repo = render(template, stack.workdir / backend, answers)
        if backend == "aws-secrets-manager":
            for env in answers_of(repo)["environments"]:
                with (repo / "config" / f"{env}.yaml").open("a") as config:
                    config.write(RESULT_STORAGE.replace("{env}", env))
        env = sync(repo)
        commit_lock(repo)
        return Rendered(repo, env, answers_of(repo))

    return render_for


def manifest_digest(registry: str, name: str, tag: str) -> str:
    """The digest the registry serves for name:tag (its Docker-Content-Digest header)."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


@pytest.mark.parametrize("backend", ["env", "aws-secrets-manager"])
def test_docker_worker_runs_the_pushed_image(
    stack: DockerStack, rendered: Callable[[str], Rendered], backend: str
) -> None:
    prepared = rendered(backend)
    repo, env, answers = prepared.repo, prepared.env, prepared.answers
    slug, environment = answers["project_slug"], answers["environments"][0]
    api_url = stack.server.api_url
    deploy_env = {**env, **stack.server.env(), **docker.provide_secret(repo, answers, stack.moto)}
    if backend == "aws-secrets-manager":
        deploy_env["RESULTS_BUCKET"] = RESULTS_BUCKET
        s3(stack.moto).create_bucket(
            Bucket=RESULTS_BUCKET,
            CreateBucketConfiguration={"LocationConstraint": docker.AWS_REGION},
        )

    started = time.monotonic()
    output = run(["make", "reconcile", f"ENV={environment}"], cwd=repo, env=deploy_env, timeout=900)
    built = time.monotonic()
    tag = git("rev-parse", "--short=12", "HEAD", cwd=repo).strip()
    image = f"{stack.registry}/pipelines/{slug}:{tag}"
    assert docker.image_id(image), f"make reconcile built no {image}:\n{output}"
    pushed = api(f"http://{stack.registry}/v2/pipelines/{slug}/tags/list")
    assert tag in pushed["tags"]
    # Built and pushed once, then both deployments pinned to the digest the registry holds.
    assert output.count(f"Building {image} ") == 1, output
    digest = manifest_digest(stack.registry, f"pipelines/{slug}", tag)
    docker.remove_image(image)
    assert not docker.pulled_image_id(f"{image}@{digest}")
    commit = git("rev-parse", "HEAD", cwd=repo).strip()
    deployment = api(f"{api_url}/deployments/name/{slug}/{environment}")
    downstream = api(f"{api_url}/deployments/name/{slug}-publish/{environment}")
    for pinned in (deployment, downstream):
        assert pinned["job_variables"]["image"] == f"{image}@{digest}"
        # The platform it was built for, which the worker asks the daemon to run.
        assert pinned["job_variables"]["container_create_kwargs"] == {"platform": "linux/amd64"}
        assert pinned["version"] == f"{commit}@{digest}"
    job_env = deployment["job_variables"]["env"]
    # The backend's settings arrive resolved from the deploying environment; the value never.
    assert {k: job_env[k] for k in ("AWS_DEFAULT_REGION", "PIPELINE_SECRETS_DIR") if k in job_env}
    assert "{{" not in json.dumps(deployment["job_variables"])
    assert docker.WAREHOUSE_DSN not in json.dumps(deployment)

    pool = api(f"{api_url}/work_pools/{slug}-{environment}")
    volume = f"{slug}-{environment}"
    worker = [str(repo / ".venv/bin/prefect"), "worker", "start", "--pool", pool["name"]]
    log = repo.parent / f"{repo.name}-worker.log"
    with docker.cleaned_up([volume]) as pools, running_worker(worker, repo, deploy_env, log):
        pools.append(pool["id"])
        # The next environment's results block, saved while the first run runs (ops/results.py).
        staged = (
            background.submit(reconcile_next_environment, stack, prepared, deploy_env)
            if backend == "aws-secrets-manager"
            else None
        )
        body = docker.run_overrides(deployment, stack.moto)
        run_id = api(f"{api_url}/deployments/{deployment['id']}/create_flow_run", body)["id"]
        etl = wait_for(api_url, run_id, timeout=300)
        assert etl["state"]["type"] == "COMPLETED", log.read_text()[-4000:]
        publish = wait_for(api_url, docker.triggered_run(api_url, downstream["id"]), timeout=300)
        assert publish["state"]["type"] == "COMPLETED", log.read_text()[-4000:]
        # Each run's code says it ran the commit the image was built from (PIPELINE_COMMIT).
        for finished in (etl, publish):
            assert finished["labels"].get("pipeline.commit") == commit, finished["labels"]
        rows = docker.count_rows(volume, "orders")
        if backend == "aws-secrets-manager":
            cache_started = time.monotonic()
            assert staged is not None
            assert_cached_per_environment(stack, prepared, staged.result(timeout=600), run_id, log)
            cache_runs = time.monotonic() - cache_started
            print(f"\nThe cache runs (second dev run, staging) {cache_runs:.0f} s")
    print(
        f"\nmake reconcile (build, push) {built - started:.0f} s, then worker and both runs "
        f"{time.monotonic() - built:.0f} s"
    )

    # The worker pulled the image back from the registry and ran each flow in a container.
    assert docker.pulled_image_id(f"{image}@{digest}")
    assert etl["infrastructure_pid"] and publish["infrastructure_pid"]
    summary = api(f"{api_url}/artifacts/{slug}-run-summary/latest")
    data = json.loads(summary["data"]) if isinstance(summary["data"], str) else summary["data"]
    assert rows == sum(batch["rows"] for batch in data) > 0
    assert publish["parameters"] == {"upstream_flow_run": f"prefect.flow-run.{run_id}"}


def restricted_pod(template: Path, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod and container securityContext and emptyDir paths of the Kubernetes runtime's
    base job template (the same Dockerfile as this image)."""
    repo = render(template, workdir / "kubernetes", {"runtime": "kubernetes"})
    base = json.loads((repo / "deploy" / "kubernetes-base-job-template.json").read_text())
    pod = base["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_a_flow_run_completes_in_a_restricted_read_only_container(
    stack: DockerStack, rendered: Callable[[str], Rendered], template: Path
) -> None:
    """The Kubernetes flow-run pod's Pod Security settings on this image, as `docker run`
    flags: a read-only root, only the base job template's emptyDir paths writable (tmpfs), its
    user, no capabilities, no privilege escalation. The deployment's run Completes there."""
    prepared = rendered("env")
    repo, answers = prepared.repo, prepared.answers
    slug, environment = answers["project_slug"], answers["environments"][0]
    api_url = stack.server.api_url
    deploy_env = {**prepared.env, **stack.server.env()}
    deploy_env.update(docker.provide_secret(repo, answers, stack.moto))
    # Built and pushed once for the module (a no-op after test_docker_worker_runs_the_pushed_image).
    run(["make", "reconcile", f"ENV={environment}"], cwd=repo, env=deploy_env, timeout=900)
    deployment = api(f"{api_url}/deployments/name/{slug}/{environment}")
    variables = deployment["job_variables"]
    pod, container = restricted_pod(template, stack.workdir)
    user = pod["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
    identity = f"{user['runAsUser']}:{user['runAsGroup']}"
    run_id = api(f"{api_url}/deployments/{deployment['id']}/create_flow_run", {})["id"]
    name = f"restricted-{run_id[:8]}"
    flags = ["--name", name, "--read-only", "--network", "host", "--user", identity]
    flags += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    # An emptyDir is writable by the pod's user and fsGroup; Docker's tmpfs keeps the image
    # directory's root ownership unless told.
    for path in writable:
        flags += ["--tmpfs", f"{path}:exec,uid={user['runAsUser']},gid={user['fsGroup']}"]
    # The env backend's secrets, read-only, as the Kubernetes Secret volume mounts them.
    flags += ["--volume", next(v for v in variables["volumes"] if v.endswith(":ro"))]
    for name, value in {**variables["env"], **stack.server.env()}.items():
        if name != "PREFECT_HOME":  # the image user's ~/.prefect, as in the pod
            flags += ["--env", f"{name}={value}"]
    docker.docker("image", "pull", variables["image"], timeout=300)
    command = ["prefect", "flow-run", "execute", run_id]
    try:
        result = subprocess.run(
            ["docker", "run", *flags, variables["image"], *command],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        docker.docker("rm", "--force", name, check=False)
    logs = result.stdout + result.stderr
    flow_run = api(f"{api_url}/flow_runs/{run_id}")
    assert flow_run["state"]["type"] == "COMPLETED", logs[-4000:]
    assert set(writable) == {"/tmp", "/home/pipeline", docker.DATA_DIR}


def s3(moto: str) -> Any:  # boto3's clients have no static type
    return boto3.client(
        "s3",
        endpoint_url=moto,
        region_name=docker.AWS_REGION,
        aws_access_key_id="test-only",
        aws_secret_access_key="test-only",  # moto accepts any key
    )


def transform_states(api_url: str, run_id: str) -> list[str]:
    """The state names of a flow run's transform task runs (Completed, or Cached on a hit)."""
    body = {"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"name": {"like_": "transform"}}}
    return [task_run["state"]["name"] for task_run in api(f"{api_url}/task_runs/filter", body)]


def results_in(moto: str, folder: str) -> list[str]:
    listing = s3(moto).list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=f"{folder}/")
    return [item["Key"] for item in listing.get("Contents", [])]


def run_and_wait(
    api_url: str, deployment: dict[str, Any], moto: str, log: Path, environment: str = ""
) -> str:
    """Run a deployment to Completed; with environment, as that environment's run (its
    PIPELINE_ENV: its config, secrets and results) in the same image."""
    body = docker.run_overrides(deployment, moto)
    if environment:
        env = body["job_variables"]["env"]
        body["job_variables"]["env"] = {**env, "PIPELINE_ENV": environment}
    run_id = api(f"{api_url}/deployments/{deployment['id']}/create_flow_run", body)["id"]
    flow_run = wait_for(api_url, run_id, timeout=300)
    assert flow_run["state"]["type"] == "COMPLETED", log.read_text()[-4000:]
    return run_id


def reconcile_next_environment(
    stack: DockerStack, prepared: Rendered, deploy_env: dict[str, str]
) -> str:
    """The second environment's real reconcile without a deploy: its pool, limits and results
    block (and its secret in moto); returns its output."""
    staging = prepared.answers["environments"][1]
    docker.provide_secret_for(prepared.answers, staging, stack.moto)
    python = str(prepared.repo / ".venv/bin/python")
    package = prepared.answers["package_name"]
    reconcile = [python, "-m", f"{package}.ops", "reconcile", "--env", staging, "--skip-deploy"]
    # IMAGE_TAG as the Makefile sets it: the preflight checks every variable prefect.yaml reads.
    tag = git("rev-parse", "--short=12", "HEAD", cwd=prepared.repo).strip()
    return run(reconcile, cwd=prepared.repo, env={**deploy_env, "IMAGE_TAG": tag}, timeout=600)


def assert_cached_per_environment(
    stack: DockerStack, prepared: Rendered, staging_output: str, first_run: str, log: Path
) -> None:
    """The first dev run computed its batches into dev's S3 folder; a second dev run takes
    them from there (Cached); a staging run, its own block and folder, computes them.

    Staging's block comes from its real reconcile (without a deploy), and its run is the dev
    deployment's image started as staging (PIPELINE_ENV) on the running worker: what decides
    where results go is the environment's config, and a second pool, worker and deploy would
    add a minute."""
    api_url, slug = stack.server.api_url, prepared.answers["project_slug"]
    dev, staging = prepared.answers["environments"][:2]
    computed = transform_states(api_url, first_run)
    assert computed and set(computed) == {"Completed"}, computed
    stored = results_in(stack.moto, dev)
    assert stored, f"no results under s3://{RESULTS_BUCKET}/{dev}/"
    assert not results_in(stack.moto, staging)
    deployment = api(f"{api_url}/deployments/name/{slug}/{dev}")
    again = transform_states(api_url, run_and_wait(api_url, deployment, stack.moto, log))
    assert again and set(again) == {"Cached"}, again

    block = f"s3-bucket/{slug}-{staging}-results"
    assert f"create  block        {block}" in staging_output, staging_output
    other_run = run_and_wait(api_url, deployment, stack.moto, log, environment=staging)
    other = transform_states(api_url, other_run)
    assert other and set(other) == {"Completed"}, other
    assert results_in(stack.moto, staging)
    assert results_in(stack.moto, dev) == stored  # staging wrote nothing into dev's folder


# Run by the generated repository's interpreter: its ops/image.py publishes HEAD's tree under
# the tag given for the environment given, printing what it did, or the ConfigError it refused with.
PUBLISH = """
import sys
from pathlib import Path
from {package}._internal.config import ConfigError, read_yaml
from {package}.ops.image import build_settings, publish_image
settings = build_settings(read_yaml(Path("prefect.yaml")))
try:
    print("digest", publish_image(settings, Path.cwd(), sys.argv[1], sys.argv[2]))
except ConfigError as error:
    print("refused", error)
"""


def publish_with_the_repository(prepared: Rendered, tag: str) -> str:
    script = PUBLISH.format(package=prepared.answers["package_name"])
    python = str(prepared.repo / ".venv/bin/python")
    environment = prepared.answers["environments"][0]
    return run(
        [python, "-c", script, tag, environment], cwd=prepared.repo, env=prepared.env, timeout=900
    )


def arm64_image(reference: str, workdir: Path) -> None:
    """A real linux/arm64 image under reference, as an arm64 laptop would have pushed it:
    built FROM scratch, so this amd64 daemon's classic builder needs no emulation."""
    context = workdir / "arm64-context"
    context.mkdir(exist_ok=True)
    (context / "marker").write_text("built for arm64\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY marker /marker\n")
    docker.docker("build", "--platform", "linux/arm64", "--tag", reference, str(context))


def registry_json(registry: str, path: str, accept: str) -> Any:
    request = urllib.request.Request(f"http://{registry}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def pushed_platform(registry: str, name: str, tag: str) -> str:
    """os/architecture of the image config the registry's manifest for name:tag points at."""
    manifest = registry_json(
        registry, f"{name}/manifests/{tag}", "application/vnd.docker.distribution.manifest.v2+json"
    )
    config = registry_json(registry, f"{name}/blobs/{manifest['config']['digest']}", "*/*")
    return f"{config['os']}/{config['architecture']}"


def commit_config(prepared: Rendered, environment: str, text: str) -> None:
    with (prepared.repo / "config" / f"{environment}.yaml").open("a") as config:
        config.write(text)
    git("commit", "-q", "-am", f"{environment}: {text.strip()}", cwd=prepared.repo)


def test_image_is_built_for_its_platform_from_a_committed_tree(
    stack: DockerStack, rendered: Callable[[str], Rendered]
) -> None:
    prepared = rendered("env")
    slug, package = prepared.answers["project_slug"], prepared.answers["package_name"]
    dev = prepared.answers["environments"][0]
    image = f"{stack.registry}/pipelines/{slug}"

    # An untracked file under src/ would enter the image: refused, nothing built or pushed.
    scratch = prepared.repo / "src" / package / "scratch.py"
    scratch.write_text("UNCOMMITTED = True\n")
    try:
        output = publish_with_the_repository(prepared, "untracked")
    finally:
        scratch.unlink()
    assert "refused refusing to build" in output and "scratch.py" in output, output
    assert not docker.image_id(f"{image}:untracked")

    # The tag holds an arm64 image: refused in one line naming the tag and both platforms,
    # neither reused nor pushed over.
    foreign = f"{image}:foreign"
    arm64_image(foreign, stack.workdir)
    docker.docker("push", foreign)
    docker.remove_image(foreign)
    arm64_digest = manifest_digest(stack.registry, f"pipelines/{slug}", "foreign")
    output = publish_with_the_repository(prepared, "foreign")
    refusal = f"refused {foreign} in the registry is for linux/arm64, not linux/amd64: "
    (line,) = [line for line in output.splitlines() if line.startswith("refused")]
    assert line.startswith(refusal) and "Building" not in output, output
    assert manifest_digest(stack.registry, f"pipelines/{slug}", "foreign") == arm64_digest
    assert not docker.image_id(foreign)

    # An environment whose config/<env>.yaml says linux/arm64 reuses that very image.
    commit_config(prepared, dev, "image_platform: linux/arm64\n")
    try:
        output = publish_with_the_repository(prepared, "foreign")
    finally:
        git("reset", "-q", "--hard", "HEAD~1", cwd=prepared.repo)
    assert f"{foreign} for linux/arm64 is already in the registry ({arm64_digest})" in output
    assert f"digest {arm64_digest}" in output, output

    # A new tag is built for linux/amd64 from the commit: an ignored file in config/ (which
    # the .dockerignore lets through) stays out, the platform is labelled and pushed.
    fresh = f"{image}:fresh"
    ignored = prepared.repo / "config" / ".env"
    ignored.write_text("LOCAL_ONLY=1\n")
    try:
        output = publish_with_the_repository(prepared, "fresh")
    finally:
        ignored.unlink()
    assert f"Building {fresh} for linux/amd64" in output, output
    pushed = manifest_digest(stack.registry, f"pipelines/{slug}", "fresh")
    assert f"digest {pushed}" in output, output
    assert pushed_platform(stack.registry, f"pipelines/{slug}", "fresh") == "linux/amd64"
    inspected = json.loads(docker.docker("image", "inspect", fresh))[0]
    assert (inspected["Os"], inspected["Architecture"]) == ("linux", "amd64")
    assert inspected["Config"]["Labels"]["pipeline.platform"] == "linux/amd64"
    listing = docker.docker("run", "--rm", "--entrypoint", "ls", fresh, "-a", "/app/config")
    assert f"{dev}.yaml" in listing.split() and ".env" not in listing.split(), listing
    # Now the registry holds it for the platform: reused, not rebuilt.
    output = publish_with_the_repository(prepared, "fresh")
    assert f"{fresh} for linux/amd64 is already in the registry ({pushed})" in output, output
    docker.remove_image(fresh)
