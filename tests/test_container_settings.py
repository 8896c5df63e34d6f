"""What a flow-run container gets: a Docker or Kubernetes worker passes only job_variables.env
(and Prefect's settings), so each secret backend's non-secret settings ride in every
environment's job variables, filled from the deploying environment's variable of the same name,
which CI maps per environment. The env backend's secrets reach a Docker container as files; on
Kubernetes with Vault each flow-run pod gets a projected token for Vault's audience. Checked with
the workers' own job configuration models and kubernetes-validate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect_docker.worker import DockerWorker

from tests.rendering import assert_kubernetes_valid, choices, render
from tests.test_runtimes import SECRET_WORDS, deploy_time, deployments, env_of, job_configuration

# One pytest worker takes the whole module: its fixture (eleven renders, about half a minute on
# 2 cores) is set up once, not once per worker with one of its tests.
pytestmark = pytest.mark.xdist_group("container_settings")

# Each backend's settings on a container runtime (process workers pass their own environment).
SETTINGS = {
    "env": [],
    "prefect": [],
    "aws-secrets-manager": ["AWS_DEFAULT_REGION"],
    "gcp-secret-manager": ["GOOGLE_CLOUD_PROJECT"],
    "azure-key-vault": ["AZURE_KEY_VAULT_URL"],
    "vault": ["VAULT_ADDR"],
}
RUNTIME_SETTINGS = {("vault", "kubernetes"): ["VAULT_ROLE"]}


def test_every_backend_is_covered() -> None:
    assert set(SETTINGS) == set(choices("secret_backend"))


# Every backend on Docker; the other runtimes share includes/runtime/_image.jinja's job_env, so
# a few pairs cover them (Vault on Kubernetes adds its login role).
COMBINATIONS = [
    *[("docker", backend) for backend in SETTINGS],
    ("kubernetes", "vault"),
    ("kubernetes", "env"),
    ("ecs", "gcp-secret-manager"),
    ("ecs", "env"),
]


@pytest.fixture(scope="module")
def renders(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, Path]:
    workdir = tmp_path_factory.mktemp("container-settings")
    return {
        (runtime, backend): render(
            template,
            workdir / f"{runtime}-{backend}",
            {"runtime": runtime, "secret_backend": backend},
        )
        for runtime, backend in [*COMBINATIONS, ("process", "vault")]
    }


def deploy_variables(repo: Path) -> str:
    """The deploy workflow: the variables CI maps into `make deploy`."""
    return (repo / ".github" / "workflows" / "deploy.yml").read_text()


@pytest.mark.parametrize(("runtime", "backend"), COMBINATIONS)
def test_backend_settings_reach_the_container_from_deploy_variables(
    renders: dict[tuple, Path], runtime: str, backend: str
) -> None:
    repo = renders[(runtime, backend)]
    settings = SETTINGS[backend] + RUNTIME_SETTINGS.get((backend, runtime), [])
    workflow = deploy_variables(repo)
    for deployment in deployments(repo):
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["PIPELINE_ENV"] == env_of(deployment)
        for name in settings:
            # Resolved by `prefect deploy` from the deploying environment: per environment.
            assert env[name] == f"{{{{ ${name} }}}}"
            assert f"{name}: ${{{{ vars.{name} }}}}" in workflow
        extra = set(env) - {"PIPELINE_ENV", *settings}
        files = backend == "env" and runtime in {"docker", "kubernetes"}
        assert extra == ({"PIPELINE_SECRETS_DIR"} if files else set())
        assert not [name for name in env if SECRET_WORDS.search(name)]


def test_process_workers_keep_their_own_environment(renders: dict[tuple, Path]) -> None:
    for deployment in deployments(renders[("process", "vault")]):
        # The run's own settings and how Prefect starts it in the clone's locked environment.
        assert deployment["work_pool"]["job_variables"]["env"] == {
            "PIPELINE_ENV": env_of(deployment),
            "PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES": "true",
            "UV_FROZEN": "1",
        }


def test_env_backend_on_docker_mounts_a_secrets_directory_read_only(
    renders: dict[tuple, Path],
) -> None:
    repo = renders[("docker", "env")]
    for deployment in deployments(repo):
        raw = deployment["work_pool"]["job_variables"]
        assert "{{ $PIPELINE_SECRETS_DIR }}:/run/secrets/pipeline:ro" in raw["volumes"]
        config = job_configuration(
            "docker", DockerWorker.get_default_base_job_template(), deploy_time(raw)
        )
        assert "value-of-PIPELINE_SECRETS_DIR:/run/secrets/pipeline:ro" in config.volumes
        assert config.env["PIPELINE_SECRETS_DIR"] == "/run/secrets/pipeline"
        # Results and the example warehouse outlive the container, one volume per environment.
        assert f"sales-etl-{env_of(deployment)}:/var/lib/pipeline" in config.volumes
    assert "PIPELINE_SECRETS_DIR: ${{ vars.PIPELINE_SECRETS_DIR }}" in deploy_variables(repo)


def kubernetes_jobs(repo: Path, overrides: dict[str, str]) -> list[dict[str, Any]]:
    """The Job manifests the Kubernetes worker builds from the repository's base job template and
    each deployment's job variables (with overrides), checked by kubernetes-validate --strict."""
    orchestration = yaml.safe_load((repo / "config" / "orchestration.yaml").read_text())
    template = json.loads((repo / orchestration["base_job_template"]).read_text())
    jobs = []
    for deployment in deployments(repo):
        variables = deploy_time({**deployment["work_pool"]["job_variables"], **overrides})
        manifest = job_configuration("kubernetes", template, variables).job_manifest
        pod = manifest["spec"]["template"]["spec"]
        # The worker's own default puts these Job fields in the pod spec (prefect-kubernetes
        # 0.8.0); the API server drops them. Everything else must pass strict validation.
        pod.pop("completions")
        pod.pop("parallelism")
        # The worker names Jobs by generateName; kubernetes-validate reports by name.
        manifest["metadata"]["name"] = f"flow-run-{env_of(deployment)}"
        # As the worker's prepare_for_flow_run does: Kubernetes takes env as a list.
        (container,) = pod["containers"]
        container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
        jobs.append(manifest)
    path = repo.parent / f"{repo.name}-jobs.yaml"
    path.write_text(yaml.safe_dump_all(jobs))
    assert_kubernetes_valid(path)
    return jobs


def pod_of(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def backend_volume(pod: dict[str, Any], container: dict[str, Any]) -> tuple[dict, dict]:
    """The volume and mount the secret backend adds to the shared emptyDirs
    (tests/test_kubernetes_pods.py checks those)."""
    (volume,) = [v for v in pod["volumes"] if "emptyDir" not in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    return volume, mount


def test_vault_on_kubernetes_projects_a_token_for_the_vault_audience(
    renders: dict[tuple, Path],
) -> None:
    repo = renders[("kubernetes", "vault")]
    for deployment in deployments(repo):
        assert deployment["work_pool"]["job_variables"]["vault_token_audience"] == "vault"
    for job in kubernetes_jobs(repo, {"vault_token_audience": "vault-test"}):
        pod, container = pod_of(job)
        volume, mount = backend_volume(pod, container)
        (source,) = volume["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == "vault-test"
        assert mount["mountPath"] == "/var/run/secrets/vault"
        assert pod["serviceAccountName"] == "sales-etl-flow-run"
        assert {"name": "VAULT_ROLE", "value": "value-of-VAULT_ROLE"} in container["env"]


def test_env_backend_on_kubernetes_mounts_the_namespace_secret_as_files(
    renders: dict[tuple, Path],
) -> None:
    for job in kubernetes_jobs(renders[("kubernetes", "env")], {}):
        pod, container = pod_of(job)
        volume, mount = backend_volume(pod, container)
        assert volume["secret"]["secretName"] == "pipeline-secrets"
        assert mount["readOnly"] is True
        directory = {"name": "PIPELINE_SECRETS_DIR", "value": mount["mountPath"]}
        assert directory in container["env"]
