"""Kubernetes pods of the generated repositories: one base job template for every secret
backend, and flow-run and worker pods that pass Pod Security "restricted".

The Job manifests are the ones the worker would submit (its own from_template_and_values on
each deployment's job variables, checked by kubernetes-validate --strict); the worker's pod is
modelled from the prefect-worker chart's templates/deployment.yaml (release 2026.8.18172642:
no Helm here) on the values file. checkov's Kubernetes checks judge both, and the worker's
default base job template must fail them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect_kubernetes.worker import KubernetesWorker

from bench.concurrency_bench import api
from tests.e2e.server import running_server
from tests.rendering import BIN, QUESTIONS, assert_kubernetes_valid, render, run
from tests.test_container_settings import kubernetes_jobs
from tests.test_runtimes import deploy_time, helm_values, job_configuration

pytestmark = pytest.mark.xdist_group("kubernetes_pods")

# checkov pins boto3 1.35, which prefect-aws cannot use: the Makefile installs it into an
# environment of its own (pyproject.toml's `policy` group).
CHECKOV = BIN.parent / "checkov" / "bin" / "checkov"
# The Pod Security "restricted" checks of checkov's Kubernetes framework: no privileged
# containers or host namespaces (16-19), no privilege escalation (20), a read-only root (22),
# non-root (23), no added capabilities and all dropped (25, 28, 37), seccomp RuntimeDefault
# (31), no API token (38), a uid above the host's users (40).
POD_SECURITY = [f"CKV_K8S_{n}" for n in (16, 17, 18, 19, 20, 22, 23, 25, 28, 31, 37, 38, 40)]
# The worker calls the Kubernetes API (its token, 38) and runs as its image's user 1001 (40):
# neither is a "restricted" rule.
WORKER_EXEMPT = {"CKV_K8S_38", "CKV_K8S_40"}
# The default template fails at least these (no securityContext at all).
DEFAULT_FAILS = {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_31", "CKV_K8S_37"}
# What each backend adds to the worker's default template: volumes (and mounts) and variables.
BACKEND_ADDITIONS = {
    "env": ({"pipeline-secrets"}, {"secrets_name"}),
    "vault": ({"vault-token"}, {"vault_token_audience"}),
    "aws-secrets-manager": (set(), set()),
}
# Variables every backend's template adds, for deploy/team/flow-runs.yaml.
PLACEMENT = {"node_selector", "tolerations"}
# emptyDir volumes at every path a flow run writes: Prefect's home, its results and the
# example's warehouse (/var/lib/pipeline), and temporary files.
WRITABLE = {"tmp": "/tmp", "home": "/home/pipeline", "pipeline-data": "/var/lib/pipeline"}


@pytest.fixture(scope="module")
def repos(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    workdir = tmp_path_factory.mktemp("kubernetes-pods")
    return {
        backend: render(
            template, workdir / backend, {"runtime": "kubernetes", "secret_backend": backend}
        )
        for backend in BACKEND_ADDITIONS
    }


def base_job_template(repo: Path) -> dict[str, Any]:
    orchestration = yaml.safe_load((repo / "config" / "orchestration.yaml").read_text())
    assert orchestration["base_job_template"] == "deploy/kubernetes-base-job-template.json"
    return json.loads((repo / orchestration["base_job_template"]).read_text())


@pytest.mark.parametrize("backend", BACKEND_ADDITIONS)
def test_one_base_job_template_is_the_workers_default_hardened_plus_the_backends_part(
    repos: dict[str, Path], backend: str
) -> None:
    ours = base_job_template(repos[backend])
    default = KubernetesWorker.get_default_base_job_template()
    volumes, variables = BACKEND_ADDITIONS[backend]
    pod = ours["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    names = {v["name"] for v in pod["volumes"]}
    assert names == set(WRITABLE) | volumes
    assert {m["name"] for m in container["volumeMounts"]} == names
    assert set(ours["variables"]["properties"]) - set(default["variables"]["properties"]) == (
        variables | PLACEMENT
    )
    # Take our additions away: what is left is the worker's default, key for key.
    for key in ("securityContext", "automountServiceAccountToken", "volumes"):
        del pod[key]
    for key in ("securityContext", "volumeMounts"):
        del container[key]
    # The placement a team sets in deploy/team/flow-runs.yaml.
    assert (pod.pop("nodeSelector"), pod.pop("tolerations")) == (
        "{{ node_selector }}",
        "{{ tolerations }}",
    )
    for name in [*variables, *PLACEMENT]:
        del ours["variables"]["properties"][name]
    assert ours == default


def test_flow_run_pods_run_as_the_images_user_and_write_only_to_mounted_paths(
    repos: dict[str, Path],
) -> None:
    repo = repos["env"]
    dockerfile = (repo / "Dockerfile").read_text()
    (uid,) = re.findall(r"^USER (\d+)$", dockerfile, re.MULTILINE)
    (user,) = re.findall(rf"useradd --create-home --uid {uid} (\S+)", dockerfile)
    (results,) = re.findall(r"PREFECT_RESULTS_LOCAL_STORAGE_PATH=(\S+)", dockerfile)
    pod = base_job_template(repo)["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    context = pod["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (int(uid),) * 3
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert {name: mounts[name] for name in WRITABLE} == WRITABLE
    assert mounts["home"] == f"/home/{user}"  # useradd's home: PREFECT_HOME is ~/.prefect
    assert results.startswith(mounts["pipeline-data"] + "/")
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert empty_dirs == set(WRITABLE)


def worker_deployment(values: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The worker's Deployment as the chart's templates/deployment.yaml renders these values
    (the fields checkov's pod checks read)."""
    worker = values["worker"]
    scratch = [
        {"mountPath": "/home/prefect", "name": "scratch", "subPathExpr": "home"},
        {"mountPath": "/tmp", "name": "scratch", "subPathExpr": "tmp"},
    ]
    container = {
        "name": "prefect-worker",
        "image": f"prefecthq/prefect:{worker['image']['prefectTag']}",
        "resources": worker["resources"],
        "securityContext": worker["containerSecurityContext"],
        "volumeMounts": scratch,
    }
    pod = {
        "serviceAccountName": "prefect-worker",
        "imagePullSecrets": [{"name": n} for n in worker["image"].get("pullSecrets", [])],
        "securityContext": worker["podSecurityContext"],
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }
    labels = {"app.kubernetes.io/name": "prefect-worker"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "prefect-worker", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def checkov_failures(directory: Path) -> dict[str, set[str]]:
    """checkov's failed Pod Security checks, by manifest file name."""
    command = [str(CHECKOV), "--directory", str(directory), "--framework", "kubernetes"]
    command += ["--check", ",".join(POD_SECURITY), "--output", "json", "--compact"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failures: dict[str, set[str]] = {}
    passed = 0
    for each in reports:
        passed += each.get("summary", {}).get("passed", 0)
        for check in each.get("results", {}).get("failed_checks", []):
            failures.setdefault(Path(check["file_path"]).name, set()).add(check["check_id"])
    assert passed, f"checkov checked nothing: {result.stdout[:2000]}"
    return failures


def test_flow_run_and_worker_pods_pass_checkovs_pod_security_checks(
    repos: dict[str, Path], tmp_path: Path
) -> None:
    """Each backend's Jobs and each environment's worker pass; the default template fails."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for backend, repo in repos.items():
        jobs = kubernetes_jobs(repo, {})  # resolved and kubernetes-validated
        (manifests / f"jobs-{backend}.yaml").write_text(yaml.safe_dump_all(jobs))
    repo = repos["env"]
    workers = []
    for path in sorted((repo / "deploy").glob("worker-*.yaml")):
        env = path.stem.removeprefix("worker-")
        workers.append(worker_deployment(helm_values(repo, env), f"sales-etl-{env}"))
    (manifests / "workers.yaml").write_text(yaml.safe_dump_all(workers))
    assert_kubernetes_valid(manifests / "workers.yaml")
    # The oracle can fail: the worker's own default template, on the same job variables.
    default = repo.parent / "default"
    (default / "config").mkdir(parents=True)
    (default / "config" / "orchestration.yaml").write_text(
        "base_job_template: deploy/kubernetes-base-job-template.json\n"
    )
    (default / "deploy").mkdir()
    (default / "deploy" / "kubernetes-base-job-template.json").write_text(
        json.dumps(KubernetesWorker.get_default_base_job_template())
    )
    (default / "prefect.yaml").write_text((repo / "prefect.yaml").read_text())
    (manifests / "jobs-default.yaml").write_text(yaml.safe_dump_all(kubernetes_jobs(default, {})))

    failures = checkov_failures(manifests)
    default_failures = failures.pop("jobs-default.yaml", set())
    assert default_failures >= DEFAULT_FAILS, default_failures
    worker_failures = failures.pop("workers.yaml", set()) - WORKER_EXEMPT
    assert worker_failures == set()
    assert failures == {}


# The generated package's own read_state and validate, on this interpreter (it has Prefect):
# each environment's job variables, then validate's problems, as JSON.
READ_JOB_VARIABLES = """
import json, sys
from pathlib import Path
sys.path.insert(0, "src")
from sales_etl.ops.state import read_state
from sales_etl.ops.validate import validate
root = Path.cwd()
variables = {
    env: [d.spec["work_pool"]["job_variables"] for d in read_state(env, root).deployments]
    for env in ("dev", "prod")
}
print(json.dumps({"variables": variables, "problems": validate(root)}))
"""
TEAM_DEV = """dev:
  memory_limit: 8Gi
  node_selector:
    pool: pipelines
  tolerations:
    - {key: dedicated, operator: Equal, value: pipelines, effect: NoSchedule}
  annotations:
    cluster-autoscaler.kubernetes.io/safe-to-evict: "false"
"""


def read_job_variables(repo: Path) -> dict[str, Any]:
    output = run([str(BIN / "python"), "-c", READ_JOB_VARIABLES], repo, os.environ, timeout=120)
    return json.loads(output.strip().splitlines()[-1])


def test_team_job_variables_reach_their_environments_jobs_only(
    repos: dict[str, Path], tmp_path: Path
) -> None:
    """deploy/team/flow-runs.yaml (the team's: _skip_if_exists) sizes and places one
    environment's flow-run pods; validate refuses a key the template does not have."""
    team_file = "deploy/team/flow-runs.yaml"
    assert any(fnmatch(team_file, pattern) for pattern in QUESTIONS["_skip_if_exists"])
    repo = shutil.copytree(repos["env"], tmp_path / "sales-etl")
    path = repo / team_file
    path.write_text(path.read_text().replace("dev: {}\n", TEAM_DEV))
    state = read_job_variables(repo)
    assert state["problems"] == []
    for variables in state["variables"]["dev"]:
        assert variables["memory_limit"] == "8Gi"
        config = job_configuration("kubernetes", base_job_template(repo), deploy_time(variables))
        pod = config.job_manifest["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"pool": "pipelines"}
        assert pod["tolerations"][0]["key"] == "dedicated"
        assert pod["containers"][0]["resources"]["limits"]["memory"] == "8Gi"
    for variables in state["variables"]["prod"]:
        assert variables["memory_limit"] == "2Gi"
        assert "node_selector" not in variables

    path.write_text(path.read_text().replace("  memory_limit: 8Gi", "  colour: blue"))
    problems = read_job_variables(repo)["problems"]
    assert problems == [
        "deploy/team/flow-runs.yaml 'dev': job variable 'colour' is not in the work pool's template"
    ]


def hand_deploy(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`prefect deploy` of the first environment as a person runs it, with no Docker daemon
    (a build that gets past prefect.yaml's first step fails at once)."""
    return subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "dev"],
        cwd=repo,
        env={**env, "DOCKER_HOST": "tcp://127.0.0.1:9", "IMAGE_TAG": "hand"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_prefect_deploy_by_hand_refuses_while_the_team_sets_job_variables(
    repos: dict[str, Path], tmp_path: Path
) -> None:
    """`prefect deploy` reads prefect.yaml alone: while deploy/team/flow-runs.yaml sets job
    variables it stops at its first build step, before anything is deployed, and says to
    deploy with make; ops' own deploys (PIPELINE_DEPLOY_TOOL) and an empty team file pass."""
    repo = shutil.copytree(repos["env"], tmp_path / "sales-etl")
    team = repo / "deploy" / "team" / "flow-runs.yaml"
    empty = team.read_text()
    team.write_text(empty.replace("dev: {}\n", TEAM_DEV))
    prefect = BIN / "prefect"
    base = {**os.environ, "PYTHONPATH": str(repo / "src"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    with running_server(prefect, tmp_path / "home", tmp_path / "server.log", base) as server:
        env = {**base, **server.env()}
        run(
            [str(prefect), "work-pool", "create", "sales-etl-dev", "--type", "kubernetes"],
            repo,
            env,
        )

        refused = hand_deploy(repo, env)
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0, output
        assert "deploy/team/flow-runs.yaml sets job variables for dev" in output, output
        assert "make deploy ENV=<env>" in output, output
        assert api(f"{server.api_url}/deployments/filter", {}) == [], "deployed anyway"

        # Past the guard, each fails at the image build (no daemon), not at the guard.
        for guarded, extra in (("ops", {"PIPELINE_DEPLOY_TOOL": "ops"}), ("empty", {})):
            if guarded == "empty":
                team.write_text(empty)
            passed = hand_deploy(repo, {**env, **extra})
            output = passed.stdout + passed.stderr
            assert passed.returncode != 0, output
            assert "sets job variables" not in output, (guarded, output)
            assert "build_docker_image" in output or "Docker" in output, (guarded, output)
