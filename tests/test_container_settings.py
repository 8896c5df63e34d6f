"""What a flow-run container gets: a Docker or Kubernetes worker passes only job_variables.env
(and Prefect's settings), so each secret backend's non-secret settings ride in every
environment's job variables, filled from the deploying environment's variable of the same name,
which CI maps per environment. The env backend's secrets reach a Docker container as files; on
Kubernetes with Vault each flow-run pod gets a projected token for Vault's audience. Checked with
the workers' own job configuration models and kubernetes-validate.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from prefect_docker.worker import DockerWorker

from tests.rendering import BIN, choices, render
from tests.test_runtimes import SECRET_WORDS, deploy_time, deployments, env_of, job_configuration

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
        files = (runtime, backend) == ("docker", "env")
        assert extra == ({"PIPELINE_SECRETS_DIR"} if files else set())
        assert not [name for name in env if SECRET_WORDS.search(name)]


def test_process_workers_keep_their_own_environment(renders: dict[tuple, Path]) -> None:
    for deployment in deployments(renders[("process", "vault")]):
        assert deployment["work_pool"]["job_variables"]["env"] == {
            "PIPELINE_ENV": env_of(deployment)
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


def test_vault_on_kubernetes_projects_a_token_for_the_vault_audience(
    renders: dict[tuple, Path], tmp_path: Path
) -> None:
    repo = renders[("kubernetes", "vault")]
    orchestration = yaml.safe_load((repo / "config" / "orchestration.yaml").read_text())
    template = json.loads((repo / orchestration["base_job_template"]).read_text())
    manifests = []
    for deployment in deployments(repo):
        raw = deployment["work_pool"]["job_variables"]
        assert raw["vault_token_audience"] == "vault"
        variables = deploy_time({**raw, "vault_token_audience": "vault-test"})
        config = job_configuration("kubernetes", template, variables)
        pod = config.job_manifest["spec"]["template"]["spec"]
        (volume,) = pod["volumes"]
        (source,) = volume["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == "vault-test"
        (container,) = pod["containers"]
        (mount,) = container["volumeMounts"]
        assert (mount["name"], mount["mountPath"]) == (volume["name"], "/var/run/secrets/vault")
        assert pod["serviceAccountName"] == "sales-etl-flow-run"
        assert container["env"]["VAULT_ROLE"] == "value-of-VAULT_ROLE"
        # As the worker's prepare_for_flow_run does: Kubernetes takes env as a list.
        container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
        # The worker's own default puts these Job fields in the pod spec (prefect-kubernetes
        # 0.8.0); the API server drops them. Everything else must pass strict validation.
        pod.pop("completions")
        pod.pop("parallelism")
        # The worker names Jobs by generateName; kubernetes-validate reports by name.
        config.job_manifest["metadata"]["name"] = f"flow-run-{env_of(deployment)}"
        manifests.append(config.job_manifest)
    # The Jobs the worker would create are valid Kubernetes objects.
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump_all(manifests))
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--no-warn", str(jobs)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Only vault's pools carry the projected token.
    other = renders[("kubernetes", "env")]
    assert not (other / "deploy" / "kubernetes-base-job-template.json").exists()
