"""Docker for the container end-to-end runs (tests/test_docker_e2e.py, `make demo` with
runtime=docker, bench/docker_bench.py): a local registry and a moto endpoint on 127.0.0.1, the
flow-run containers and volumes of a work pool, all removed on the way out.

tests/e2e/docker_host.sh (run by `make test` and `make demo`) installs Docker and builds the
stand-in base images; `unavailable()` says what is still missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3

from bench.concurrency_bench import api
from tests.e2e.server import free_port, stop

HOST_SCRIPT = Path(__file__).with_name("docker_host.sh")
# What the generated Dockerfile names, as docker_host.sh builds them; its python is 3.11.
STAND_INS = ("python:3.11-slim-bookworm", "ghcr.io/astral-sh/uv:0.13.9")
PYTHON_VERSION = "3.11"
# Where the flow-run image keeps results and the example warehouse (the Dockerfile's volume).
DATA_DIR = "/var/lib/pipeline"
WAREHOUSE_DSN = f"sqlite:///{DATA_DIR}/warehouse.db"
AWS_REGION = "eu-west-1"


def docker(*args: str, timeout: float = 600, check: bool = True) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result.stdout


def unavailable() -> str | None:
    """Why the Docker runs cannot happen on this machine, or None when they can."""
    for tool in ("docker", "docker-registry"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (tests/e2e/docker_host.sh installs it as root)"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "no Docker daemon answers (tests/e2e/docker_host.sh starts one as root)"
    missing = [image for image in STAND_INS if not docker("images", "-q", image).strip()]
    if missing:
        return f"base images missing: {', '.join(missing)} (tests/e2e/docker_host.sh builds them)"
    return None


def require_docker() -> None:
    """Skip the calling test when Docker cannot run here; under CI=true fail instead."""
    import pytest

    if reason := unavailable():
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the Docker end-to-end tests, but {reason}")
        pytest.skip(reason)


def wait_for_url(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer after {timeout:.0f} s")


@contextlib.contextmanager
def background(command: list[str], ready_url: str, log: Path) -> Iterator[None]:
    """A server process in its own session, stopped (with its children) on the way out."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_url(ready_url, process)
        yield
    finally:
        stop(process)


def bcrypt_hash(password: str) -> str:
    """An htpasswd bcrypt hash (the only kind distribution's htpasswd auth accepts): glibc's
    crypt through Python's crypt module (3.12 and older), else apache2-utils' htpasswd."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
        if hashed and hashed.startswith("$2"):
            return hashed
    except ImportError:
        pass
    if shutil.which("htpasswd") is None:
        raise RuntimeError("no bcrypt here: install apache2-utils for htpasswd")
    result = subprocess.run(
        ["htpasswd", "-nbB", "user", password], capture_output=True, text=True, check=True
    )
    return result.stdout.strip().split(":", 1)[1]


@contextlib.contextmanager
def running_registry(workdir: Path, login: tuple[str, str] | None = None) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 (the daemon trusts loopback over plain HTTP),
    storing under workdir; yields its host:port. With login (user, password) it requires that
    credential (htpasswd auth, Basic over plain HTTP: loopback only)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "registry.yml"
    auth = ""
    if login is not None:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(f"{login[0]}:{bcrypt_hash(login[1])}\n")
        auth = f"auth:\n  htpasswd:\n    realm: e2e\n    path: {htpasswd}\n"
    # Its packaged config wants htpasswd: this one has it only when asked and listens on
    # loopback only.
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "log:\n  level: warn\n" + auth
    )
    address = f"127.0.0.1:{port}"
    command = ["docker-registry", "serve", str(config)]
    # With auth /v2/ answers 401, which urlopen raises: wait on the port instead.
    ready = f"http://{address}/v2/" if login is None else f"http://{address}/"
    with background(command, ready, workdir / "registry.log"):
        yield address


@contextlib.contextmanager
def running_moto(moto_server: Path, log: Path) -> Iterator[str]:
    """moto's AWS emulation as a real HTTP endpoint on 127.0.0.1; yields its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    with background([str(moto_server), "-H", "127.0.0.1", "-p", port], f"{url}/", log):
        yield url


def image_id(reference: str) -> str:
    return docker("images", "-q", reference).strip()


def pulled_image_id(reference: str) -> str:
    """The local image id of a deployment's image, '' when absent. A pull by digest
    (registry/name:tag@sha256:...) leaves the image under registry/name@sha256:..., untagged."""
    name, _, digest = reference.partition("@")
    if not digest:
        return image_id(reference)
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    return image_id(f"{name}@{digest}")


def remove_image(reference: str) -> None:
    """Untag the image so the worker must pull it; --no-prune keeps its parent layers, the
    build cache of the next deploy."""
    docker("rmi", "--no-prune", reference)


def pool_containers(pool_id: str) -> list[str]:
    """Containers the Docker worker started for a work pool (prefect-docker labels them)."""
    return docker("ps", "-aq", "--filter", f"label=io.prefect.work-pool-id={pool_id}").split()


@contextlib.contextmanager
def cleaned_up(volumes: list[str]) -> Iterator[list[str]]:
    """Yields a list to add work pool ids to; on the way out removes their flow-run containers
    (auto_remove misses one killed mid-run) and the named volumes."""
    pool_ids: list[str] = []
    for volume in volumes:
        docker("volume", "rm", "-f", volume, check=False)
    try:
        yield pool_ids
    finally:
        for pool_id in pool_ids:
            containers = pool_containers(pool_id)
            if containers:
                docker("rm", "-f", *containers, check=False)
        for volume in volumes:
            docker("volume", "rm", "-f", volume, check=False)


def count_rows(volume: str, table: str) -> int:
    """Rows in the example warehouse that flow runs wrote into a volume, read by a container."""
    script = (
        "import sqlite3, sys; "
        f"print(sqlite3.connect('{DATA_DIR}/warehouse.db').execute('SELECT COUNT(*) FROM {table}')"
        ".fetchone()[0])"
    )
    output = docker(
        "run", "--rm", "-v", f"{volume}:{DATA_DIR}:ro", STAND_INS[0], "python3", "-c", script
    )
    return int(output.strip())


def host_note() -> str:
    """One line on where flow-run containers run, for the demo."""
    server = docker("version", "--format", "{{.Server.Version}}").strip()
    return f"dockerd {server} on {os.uname().nodename}, host network (API on 127.0.0.1)"


def provide_secret(repo: Path, answers: dict[str, Any], moto: str) -> dict[str, str]:
    """Put the warehouse DSN where the backend reads it; returns the deploy-time variables."""
    if answers["secret_backend"] == "env":
        secrets = repo.parent / f"{repo.name}-secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "warehouse-dsn").write_text(WAREHOUSE_DSN + "\n")
        # Read by the container's uid 10001 through a read-only bind mount.
        secrets.chmod(0o755)
        (secrets / "warehouse-dsn").chmod(0o644)
        return {"PIPELINE_SECRETS_DIR": str(secrets)}
    if answers["secret_backend"] != "aws-secrets-manager":
        raise ValueError("the Docker runs cover secret_backend env and aws-secrets-manager")
    provide_secret_for(answers, answers["environments"][0], moto)
    return {"AWS_DEFAULT_REGION": AWS_REGION}


def provide_secret_for(answers: dict[str, Any], environment: str, moto: str) -> None:
    """The warehouse DSN of one environment in moto's Secrets Manager."""
    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto,
        region_name=AWS_REGION,
        aws_access_key_id="test-only",
        aws_secret_access_key="test-only",  # moto accepts any key
    )
    secret_id = f"{answers['project_slug']}/{environment}/warehouse-dsn"
    client.create_secret(Name=secret_id, SecretString=WAREHOUSE_DSN)


def run_overrides(deployment: dict[str, Any], moto: str) -> dict[str, Any]:
    """Per-run job variables: moto's endpoint and throwaway keys for an AWS repository (a real
    worker host has an IAM role instead); nothing for the env backend."""
    env = deployment["job_variables"]["env"]
    if "AWS_DEFAULT_REGION" not in env:
        return {}
    test_only = {"AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": "test-only"}
    test_only["AWS_SECRET_ACCESS_KEY"] = "test-only"
    return {"job_variables": {"env": {**env, **test_only}}}


def triggered_run(api_url: str, deployment_id: str, timeout: float = 120) -> str:
    """The id of the first run a trigger started for a deployment."""
    deadline = time.monotonic() + timeout
    body = {"deployments": {"id": {"any_": [deployment_id]}}}
    while not (runs := api(f"{api_url}/flow_runs/filter", body)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the trigger started no run after {timeout:.0f} s")
        time.sleep(1)
    return runs[0]["id"]
