"""What `fleet adopt` infers of a repository's runtime, read from what teams really commit: a
`prefect init` recipe, deployments' job variables, a script that creates the work pool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleet.adopt import infer
from tests.rendering import GIT_IDENTITY, git

FLOW = "from prefect import flow\n\n\n@flow\ndef hello() -> int:\n    return 1\n"

FROM_SOURCE = """from prefect import flow

if __name__ == "__main__":
    flow.from_source(source=".", entrypoint="flows/hello.py:hello").deploy(
        name="hello-prod",
        work_pool_name="team-prod",
        job_variables={"cluster": "flows", "launch_type": "FARGATE"},
    )
"""


def repository(root: Path, files: dict[str, str]) -> Path:
    """A committed git repository holding FILES and one flow."""
    files = {"flows/hello.py": FLOW, **files}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git("init", "-q", "-b", "main", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "team's work", cwd=root)
    return root


def prefect_yaml(job_variables: dict) -> str:
    deployment = {
        "name": "nightly",
        "entrypoint": "flows/hello.py:hello",
        "work_pool": {"name": "team-pool", "job_variables": job_variables},
    }
    return yaml.safe_dump({"name": "team", "deployments": [deployment]})


def test_a_docker_recipe_is_adopted_as_the_docker_runtime(tmp_path: Path) -> None:
    repo = tmp_path / "team"
    repo.mkdir()
    env = {**GIT_IDENTITY, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    env |= {"PREFECT_HOME": str(tmp_path / "ph"), "DO_NOT_TRACK": "1"}
    recipe = ["--recipe", "docker", "--field", "image_name=team/flows", "--field", "tag=latest"]
    subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "init", *recipe],
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    project = yaml.safe_load((repo / "prefect.yaml").read_text())
    project["deployments"] = [{"name": "nightly", "entrypoint": "flows/hello.py:hello"}]
    (repo / "prefect.yaml").write_text(yaml.safe_dump(project))
    inferred = infer(repository(repo, {}))
    assert inferred.answers["runtime"] == "docker", inferred.how
    assert [d.name for d in inferred.deployments] == ["nightly"]


@pytest.mark.parametrize(
    ("job_variables", "runtime"),
    [
        ({"namespace": "flows", "service_account_name": "runner", "image": "x"}, "kubernetes"),
        ({"cluster": "flows", "task_role_arn": "arn", "image": "x"}, "ecs"),
        ({"image": "x"}, "docker"),
        ({}, "process"),
    ],
)
def test_the_runtime_follows_the_job_variables_a_deployment_sets(
    tmp_path: Path, job_variables: dict, runtime: str
) -> None:
    inferred = infer(repository(tmp_path, {"prefect.yaml": prefect_yaml(job_variables)}))
    assert inferred.answers["runtime"] == runtime, inferred.how
    dropped = sorted(set(job_variables) - {"image"})
    notes = [n for n in inferred.notes if "job variables" in n]
    assert len(notes) == bool(dropped), inferred.notes
    assert all(key in notes[0] for key in dropped), notes


def test_a_from_source_script_with_ecs_job_variables_is_the_ecs_runtime(tmp_path: Path) -> None:
    inferred = infer(repository(tmp_path, {"deploy.py": FROM_SOURCE}))
    assert inferred.answers["runtime"] == "ecs", inferred.how


def test_a_script_that_creates_a_kubernetes_pool_names_the_runtime(tmp_path: Path) -> None:
    setup = "set -eu\nprefect work-pool create team-prod --type kubernetes --overwrite\n"
    files = {"prefect.yaml": prefect_yaml({}), "scripts/pools.sh": setup}
    inferred = infer(repository(tmp_path, files))
    assert inferred.answers["runtime"] == "kubernetes", inferred.how
    assert "work-pool create" in inferred.how["runtime"]


def test_two_pool_types_created_leave_the_runtime_to_the_deployments(tmp_path: Path) -> None:
    setup = "prefect work-pool create a --type kubernetes\nprefect work-pool create b -t ecs\n"
    inferred = infer(repository(tmp_path, {"prefect.yaml": prefect_yaml({}), "Makefile": setup}))
    assert inferred.answers["runtime"] == "process", inferred.how
