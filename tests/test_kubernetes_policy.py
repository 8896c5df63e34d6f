"""The Kubernetes flow-run pod passes Pod Security "restricted", checked by real tools.

The pod is the one the worker itself would create: prefect-kubernetes' KubernetesWorker job
configuration built from the generated pool's base job template and a deployment's job variables
(with the image pinned by digest, as `make reconcile` deploys it), prepared for a flow run. It
then goes through checkov's Kubernetes checks and kubernetes-validate --strict. checkov lives in
its own environment, .venv/checkov (it pins a boto3 prefect-aws cannot share).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorker

from tests.rendering import DEPLOY_ENV_PLACEHOLDER, ROOT, assert_kubernetes_valid, render

CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"
DIGEST = "sha256:" + "ab" * 32
BACKENDS = ["env", "vault", "prefect"]  # a Secret as files, a projected token, nothing
# What Pod Security "restricted" asks, as checkov's checks: no privilege escalation, non-root
# with a high uid, capabilities dropped, seccomp RuntimeDefault, a read-only root filesystem, no
# host namespaces, no privileged container; plus no API token mounted.
RESTRICTED = {
    "CKV_K8S_16",  # privileged
    "CKV_K8S_17",  # hostPID
    "CKV_K8S_18",  # hostIPC
    "CKV_K8S_19",  # hostNetwork
    "CKV_K8S_20",  # allowPrivilegeEscalation
    "CKV_K8S_22",  # readOnlyRootFilesystem
    "CKV_K8S_23",  # root containers (runAsNonRoot)
    "CKV_K8S_28",  # NET_RAW dropped
    "CKV_K8S_31",  # seccomp RuntimeDefault
    "CKV_K8S_37",  # capabilities minimised (drop ALL)
    "CKV_K8S_38",  # service account token only where needed
    "CKV_K8S_40",  # a uid above 10000
}
# Checks left to the cluster, with the reason:
NOT_OURS = {
    # The image is pinned by digest and immutable: IfNotPresent pulls it once per node.
    "CKV_K8S_15",
    # A NetworkPolicy is the cluster's (its CNI, its egress to sources): README lists it.
    "CKV2_K8S_6",
}


class NoAPI:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"building the job configuration called the API: {name}")


def flow_run_job(repo: Path) -> dict[str, Any]:
    """The Job the worker submits for the repository's first deployment."""
    template = json.loads((repo / "deploy" / "kubernetes-base-job-template.json").read_text())
    deployment = yaml.safe_load((repo / "prefect.yaml").read_text())["deployments"][0]
    raw = json.dumps(deployment["work_pool"]["job_variables"])
    variables = json.loads(DEPLOY_ENV_PLACEHOLDER.sub(lambda m: f"value-of-{m[1]}", raw))
    variables["image"] = variables["image"].split(":")[0] + "@" + DIGEST
    config_class = KubernetesWorker.job_configuration
    config = asyncio.run(config_class.from_template_and_values(template, variables, client=NoAPI()))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="smoke", flow_id=uuid.uuid4()))
    return config.job_manifest


def checkov(directory: Path) -> dict[str, set[str]]:
    """checkov's Kubernetes checks on every file of a directory: failed check ids per file."""
    result = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "--skip-download",  # offline: no guidelines fetched from Prisma Cloud
            "--output",
            "json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_PARSE_ONLY": ""},
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    failed: dict[str, set[str]] = {path.name: set() for path in directory.iterdir()}
    for report in reports if isinstance(reports, list) else [reports]:
        for check in report.get("results", {}).get("failed_checks", []):
            failed[Path(check["file_path"]).name].add(check["check_id"])
    return failed


@pytest.fixture(scope="module")
def repos(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rendered = {}
    for backend in BACKENDS:
        repo = tmp_path_factory.mktemp(f"k8s-{backend}") / "sales-etl"
        rendered[backend] = render(
            template, repo, {"runtime": "kubernetes", "secret_backend": backend}
        )
    return rendered


@pytest.fixture(scope="module")
def jobs(repos: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {backend: flow_run_job(repo) for backend, repo in repos.items()}


def write_jobs(jobs: dict[str, dict[str, Any]], directory: Path) -> Path:
    directory.mkdir()
    for name, job in jobs.items():
        # The API server names a Job from generateName; the validators need the name.
        named = {**job, "metadata": {**job["metadata"], "name": job["metadata"]["generateName"]}}
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(named))
    return directory


def strip_security(job: dict[str, Any]) -> dict[str, Any]:
    broken = json.loads(json.dumps(job))
    pod = broken["spec"]["template"]["spec"]
    del pod["securityContext"]
    for container in pod["containers"]:
        del container["securityContext"]
    return broken


@pytest.mark.slow
def test_flow_run_pods_pass_restricted_in_checkov_and_the_api_schema(
    jobs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    good = write_jobs(jobs, tmp_path / "good")
    for path in sorted(good.iterdir()):
        assert_kubernetes_valid(path)
    broken = {"broken": strip_security(jobs["env"])}
    failed = checkov(write_jobs({**jobs, **broken}, tmp_path / "all"))
    for backend in BACKENDS:
        assert failed[f"{backend}.yaml"] <= NOT_OURS, (backend, failed[f"{backend}.yaml"])
    # The oracle can fail: the same pod without its security contexts breaks "restricted".
    stripped = {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_31"}
    assert stripped | {"CKV_K8S_37", "CKV_K8S_40"} <= failed["broken.yaml"]
    assert failed["broken.yaml"] - NOT_OURS <= RESTRICTED | {"CKV_K8S_29", "CKV_K8S_30"}


def test_flow_run_pods_mount_every_path_the_pipeline_writes(
    jobs: dict[str, dict[str, Any]], repos: dict[str, Path]
) -> None:
    """A read-only root filesystem: /tmp (Dask, Ray, tempfile), the home (PREFECT_HOME, uv) and
    /var/lib/pipeline (results, the example's warehouse) are emptyDirs; the backend's own
    files are read-only."""
    for backend, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for path in ("/tmp", "/home/pipeline", "/var/lib/pipeline"):
            assert "emptyDir" in volumes[mounts[path]["name"]], (backend, path)
        extra = {p: m for p, m in mounts.items() if "emptyDir" not in volumes[m["name"]]}
        assert all(m.get("readOnly") for m in extra.values()), (backend, extra)
        assert len(extra) == (0 if backend == "prefect" else 1), backend
        assert pod["imagePullSecrets"] == [{"name": "registry-dev"}]
        dockerfile = (repos[backend] / "Dockerfile").read_text()
        assert "--uid 10001 pipeline" in dockerfile and "\nUSER 10001\n" in dockerfile
        assert pod["securityContext"]["runAsUser"] == 10001


def test_one_base_job_template_serves_every_secret_backend(repos: dict[str, Path]) -> None:
    """One file for every backend: each adds only its own volumes and variables."""
    default = KubernetesWorker.get_default_base_job_template()
    names = set(default["variables"]["properties"]) | {"image_pull_secrets"}
    added = {"env": {"secrets_name"}, "vault": {"vault_token_audience"}, "prefect": set()}
    for backend, repo in repos.items():
        text = (repo / "deploy" / "kubernetes-base-job-template.json").read_text()
        assert text.endswith("}\n"), "end-of-file-fixer in the generated pre-commit"
        ours = json.loads(text)
        assert set(ours["variables"]["properties"]) == names | added[backend], backend
        assert set(ours["job_configuration"]) == set(default["job_configuration"])
    shipped = list((ROOT / "template").rglob("*kubernetes-base-job-template*"))
    assert len(shipped) == 1, shipped


def test_external_vault_gets_a_token_reviewer_of_its_own(repos: dict[str, Path]) -> None:
    reviewer = repos["vault"] / "deploy" / "vault-token-reviewer.yaml"
    assert_kubernetes_valid(reviewer)
    documents = {d["kind"]: d for d in yaml.safe_load_all(reviewer.read_text()) if d}
    account = documents["ServiceAccount"]["metadata"]
    binding = documents["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == "system:auth-delegator"  # may review tokens, no more
    (subject,) = binding["subjects"]
    assert (subject["name"], subject["namespace"]) == (account["name"], account["namespace"])
    token = documents["Secret"]
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == account["name"]
    assert "token_reviewer_jwt" in reviewer.read_text()
    assert "deploy/vault-token-reviewer.yaml" in (repos["vault"] / "README.md").read_text()
    assert not (repos["env"] / "deploy" / "vault-token-reviewer.yaml").exists()


def test_namespaces_enforce_restricted_and_accounts_pull_with_the_environments_secret(
    repos: dict[str, Path],
) -> None:
    documents = [
        d for d in yaml.safe_load_all((repos["env"] / "deploy" / "flow-runs.yaml").read_text()) if d
    ]
    for namespace in (d for d in documents if d["kind"] == "Namespace"):
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    accounts = [d for d in documents if d["kind"] == "ServiceAccount"]
    assert len(accounts) == 3
    for account in accounts:
        env = account["metadata"]["namespace"].removeprefix("sales-etl-")
        assert account["imagePullSecrets"] == [{"name": f"registry-{env}"}]


def test_worker_values_ask_for_restricted_and_the_pull_secret(repos: dict[str, Path]) -> None:
    """The chart renders these into the worker's pod (its template mounts /tmp and the home
    as emptyDirs); no Helm here, so the values are checked against what restricted requires."""
    for path in sorted((repos["env"] / "deploy").glob("worker-*.yaml")):
        worker = yaml.safe_load(path.read_text())["worker"]
        env = path.stem.removeprefix("worker-")
        assert worker["image"]["pullSecrets"] == [f"registry-{env}"]
        pod, container = worker["podSecurityContext"], worker["containerSecurityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["allowPrivilegeEscalation"] is False
        assert container["readOnlyRootFilesystem"] is True
        assert container["capabilities"] == {"drop": ["ALL"]}
