"""`python -m fleet adopt` on existing Prefect repositories built the way teams build them
(`prefect init` recipes, `flow.from_source(...).deploy(...)`, two flows with their own GitHub
workflow), and a Prefect 2-style one it must refuse; real copier, real git."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.concurrency_bench import api
from fleet.cli import main
from tests import test_update as update_tests
from tests.e2e.server import running_server
from tests.fleet_support import snapshot
from tests.rendering import BIN, GIT_IDENTITY, UNHEARD_ALERTS, commit_lock, git, run, sync

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("adopt")]

FLOW = """from prefect import flow


@flow(name="{name}")
def {function}(rows: int = 1, label: str = "x") -> int:
    return rows
"""

DEPLOYMENTS = """
import json
from pathlib import Path
import yaml
from {package}.ops.flows import team_deployments
project = yaml.safe_load(Path("prefect.yaml").read_text())
print(json.dumps(team_deployments(project, Path.cwd())))
"""


@pytest.fixture(scope="module")
def releases(tagged: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A template with two releases: the working tree, then new shared deployment defaults."""
    template = tmp_path_factory.mktemp("adopt-template") / "copier-prefect"
    first, second = update_tests.release_with_new_shared_defaults(tagged, template)
    return template, first, second


def prefect(repo: Path, *args: str) -> None:
    env = {**GIT_IDENTITY, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    env |= {"PREFECT_HOME": str(repo.parent / "ph"), "DO_NOT_TRACK": "1"}
    subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )


def commit(repo: Path) -> None:
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "team's work", cwd=repo)


def init_recipe(repo: Path, recipe: str, deployments: list[dict]) -> Path:
    """A repository made with `prefect init --recipe RECIPE`, its deployments filled in."""
    repo.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=repo)
    extra = ["--field", "image_name=registry.example.com/team/flows"] if "docker" in recipe else []
    extra += ["--field", "repository=https://git.example.com/team/flows.git"] * ("git" in recipe)
    extra += ["--field", "branch=main"] * ("git" in recipe)
    extra += ["--field", "tag=latest"] * ("docker" in recipe)
    prefect(repo, "init", "--recipe", recipe, *extra)
    project = yaml.safe_load((repo / "prefect.yaml").read_text())
    project["deployments"] = deployments
    (repo / "prefect.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    (repo / "flows").mkdir()
    (repo / "flows" / "hello.py").write_text(FLOW.format(name="hello", function="hello"))
    commit(repo)
    return repo


def adopt(repo: Path, template: Path, ref: str, *data: str) -> tuple[int, str]:
    out = io.StringIO()
    args = ["adopt", str(repo), "--template", str(template), "--vcs-ref", ref]
    with contextlib.redirect_stdout(out):
        code = main([*args, *[f"--data={d}" for d in data]])
    return code, out.getvalue()


def in_repository(repo: Path, *args: str) -> str:
    return update_tests.in_repository(repo, *args)


def team_deployments(repo: Path) -> list[dict]:
    package = yaml.safe_load((repo / ".copier-answers.yml").read_text())["package_name"]
    return json.loads(in_repository(repo, "-c", DEPLOYMENTS.format(package=package)))


def check_adopted(repo: Path, main_before: str) -> dict:
    """The repository on the adoption branch, default branch untouched, its own checks clean."""
    assert git("rev-parse", "main", cwd=repo).strip() == main_before
    assert git("branch", "--show-current", cwd=repo).strip() == "adopt/copier-prefect"
    assert git("status", "--porcelain", cwd=repo) == ""
    log = git("log", "--format=%s", "main..HEAD", cwd=repo).splitlines()
    assert log == [
        "Adopt copier-prefect: the team's flows and their deployments",
        log[1],
    ] and log[1].startswith("Adopt copier-prefect: the template at ")
    answers = yaml.safe_load((repo / ".copier-answers.yml").read_text())
    assert answers["_src_path"].startswith(("file://", "git+file://"))
    package = answers["package_name"]
    ruff = Path(sys.executable).parent / "ruff"
    for command in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([ruff, *command], cwd=repo, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    in_repository(repo, "-m", f"{package}.ops", "validate")
    assert (repo / "ADOPTION.md").is_file()
    return answers


LOCAL_DEPLOYMENTS = [
    {
        "name": "nightly",
        "entrypoint": "flows/hello.py:hello",
        "parameters": {"rows": 5, "label": "night"},
        "tags": ["team-a"],
        "schedules": [{"cron": "15 1 * * *", "timezone": "Europe/Paris"}],
        "work_pool": {"name": "team-pool", "job_variables": {}},
    }
]


def adopted_recipe(repo: Path, recipe: str, template: Path, ref: str) -> tuple[Path, dict]:
    """A RECIPE repository holding LOCAL_DEPLOYMENTS, adopted with two environments."""
    init_recipe(repo, recipe, LOCAL_DEPLOYMENTS)
    before = git("rev-parse", "main", cwd=repo).strip()
    code, out = adopt(repo, template, ref, "environments=[dev, prod]")
    assert code == 0, out
    return repo, check_adopted(repo, before)


def test_a_local_recipe_repository_is_adopted_and_updates_cleanly_across_a_release(
    releases: tuple[Path, str, str], tmp_path: Path
) -> None:
    template, first, second = releases
    repo, answers = adopted_recipe(tmp_path / "team-flows", "local", template, first)
    assert (answers["project_name"], answers["timezone"]) == ("team-flows", "Europe/Paris")
    assert not (repo / "flows" / "hello.py").exists()
    assert (repo / "src" / "team_flows" / "flows" / "hello.py").is_file()
    assert (repo / "prefect.yaml.pre-adoption").is_file()
    (prod,) = [d for d in team_deployments(repo) if "env:prod" in d["tags"]]
    assert prod["name"] == "nightly"
    assert prod["entrypoint"] == "team_flows.flows.hello:hello"
    assert prod["parameters"] == {"rows": 5, "label": "night"}
    assert prod["schedules"] == [{"cron": "15 1 * * *", "timezone": "Europe/Paris", "active": True}]
    assert "team-a" in prod["tags"]
    assert prod["concurrency_limit"]["limit"] == 1
    flows_yaml = (repo / "flows.yaml").read_bytes()
    team_flow = (repo / "src" / "team_flows" / "flows" / "hello.py").read_bytes()

    # The base recorded by the adoption lets copier's three-way merge apply the release alone.
    update_tests.update(repo, second)
    assert git("status", "--porcelain", cwd=repo).strip()  # the release changed prefect.yaml
    conflicts = git("diff", "--check", cwd=repo) + git("ls-files", "-u", cwd=repo)
    assert conflicts == "", conflicts
    assert list(repo.rglob("*.rej")) == []
    assert (repo / "flows.yaml").read_bytes() == flows_yaml
    assert (repo / "src" / "team_flows" / "flows" / "hello.py").read_bytes() == team_flow
    (prod,) = [d for d in team_deployments(repo) if "env:prod" in d["tags"]]
    assert (prod["name"], prod["concurrency_limit"]["limit"]) == ("nightly", 3)


FROM_SOURCE = """from prefect import flow

if __name__ == "__main__":
    flow.from_source(
        source="https://git.example.com/team/etl.git",
        entrypoint="pipelines/load.py:load",
    ).deploy(
        name="load-prod",
        work_pool_name="k8s-prod",
        interval=3600,
        parameters={"rows": 2},
        tags=["etl"],
    )
    flow.from_source(
        source="https://git.example.com/team/etl.git",
        entrypoint="pipelines/load.py:load",
    ).deploy(name="load-dev", work_pool_name="k8s-dev", parameters={"rows": 1})
"""


def test_a_from_source_deploy_script_and_a_two_flow_repository_keep_their_deployments(
    releases: tuple[Path, str, str], tmp_path: Path
) -> None:
    template, first, _ = releases
    repo = tmp_path / "etl"
    (repo / "pipelines").mkdir(parents=True)
    (repo / "pipelines" / "load.py").write_text(FLOW.format(name="load", function="load"))
    (repo / "deploy.py").write_text(FROM_SOURCE)
    (repo / ".python-version").write_text("3.11\n")
    git("init", "-q", "-b", "main", cwd=repo)
    commit(repo)
    before = git("rev-parse", "main", cwd=repo).strip()
    code, out = adopt(repo, template, first)
    assert code == 0, out
    answers = check_adopted(repo, before)
    assert (answers["environments"], answers["python_version"]) == (["dev", "prod"], "3.11")
    named = {(d["name"], d["tags"][-1]): d for d in team_deployments(repo)}
    schedule = {"interval": 3600, "timezone": "UTC", "active": True}  # the shared timezone
    assert named[("load-prod", "etl")]["schedules"][0] == schedule
    assert named[("load-prod", "etl")]["parameters"] == {"rows": 2}
    assert "env:dev" in named[("load-dev", "env:dev")]["tags"]

    two = init_recipe(tmp_path / "two", "git", [])
    (two / "flows" / "report.py").write_text(FLOW.format(name="report", function="report"))
    project = yaml.safe_load((two / "prefect.yaml").read_text())
    project["deployments"] = [
        {
            "name": "hourly",
            "entrypoint": "flows/hello.py:hello",
            "schedules": [{"cron": "0 * * * *"}],
        },
        {"name": "weekly", "entrypoint": "flows/report.py:report", "parameters": {"label": "w"}},
    ]
    (two / "prefect.yaml").write_text(yaml.safe_dump(project))
    (two / ".github" / "workflows").mkdir(parents=True)
    (two / ".github" / "workflows" / "ci.yml").write_text(
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps: [{run: pytest}]\n"
    )
    commit(two)
    before = git("rev-parse", "main", cwd=two).strip()
    code, out = adopt(two, template, first)
    assert code == 0, out
    answers = check_adopted(two, before)
    assert answers["ci_platform"] == "github-actions"
    last = answers["environments"][-1]
    names = {d["name"]: d for d in team_deployments(two) if f"env:{last}" in d["tags"]}
    assert names["hourly"]["schedules"][0]["cron"] == "0 * * * *"
    assert names["weekly"]["parameters"] == {"label": "w"}
    assert (two / ".github" / "workflows" / "ci.yml.pre-adoption").is_file()


def test_a_docker_recipe_repository_is_adopted_on_the_docker_runtime(
    releases: tuple[Path, str, str], tmp_path: Path
) -> None:
    """`prefect init --recipe docker`: its image build makes it a docker repository, and its
    deployment keeps its name, schedule and parameters."""
    template, first, _ = releases
    repo, answers = adopted_recipe(tmp_path / "boxed", "docker", template, first)
    assert answers["runtime"] == "docker"
    assert (repo / "Dockerfile").is_file()
    [nightly] = [d for d in team_deployments(repo) if d["name"] == "nightly"]
    assert nightly["parameters"] == {"rows": 5, "label": "night"}
    assert nightly["schedules"][0]["cron"] == "15 1 * * *"
    assert "runtime" in (repo / "ADOPTION.md").read_text()


PREFECT2 = """from prefect.deployments import Deployment
from flows.hello import hello

Deployment.build_from_flow(flow=hello, name="nightly").apply()
"""


def test_a_prefect2_or_dirty_repository_is_refused_and_left_as_it_was(
    releases: tuple[Path, str, str], tmp_path: Path
) -> None:
    template, first, _ = releases
    old = init_recipe(tmp_path / "old", "local", LOCAL_DEPLOYMENTS)
    (old / "deploy.py").write_text(PREFECT2)
    commit(old)
    before = snapshot(old)
    code, out = adopt(old, template, first)
    assert code == 1
    assert "Prefect 2-style" in out and "deploy.py uses Deployment.build_from_flow" in out
    assert snapshot(old) == before

    dirty = init_recipe(tmp_path / "dirty", "local", LOCAL_DEPLOYMENTS)
    (dirty / "flows" / "hello.py").write_text("# unfinished\n")
    before = snapshot(dirty)
    code, out = adopt(dirty, template, first)
    assert (code, "uncommitted changes" in out) == (1, True), out
    assert snapshot(dirty) == before
    shutil.rmtree(tmp_path / "ph", ignore_errors=True)


def test_an_adopted_repository_keeps_its_deployment_on_a_real_server_and_runs(
    releases: tuple[Path, str, str], tmp_path: Path
) -> None:
    """Deployed as the team did (`prefect deploy`), adopted, reconciled with the template's
    `make reconcile`: the same deployment (id, name, schedule, parameters), run by a worker."""
    template, first, _ = releases
    repo = init_recipe(tmp_path / "team-flows", "local", LOCAL_DEPLOYMENTS)
    with running_server(
        BIN / "prefect", tmp_path / "home", tmp_path / "server.log", os.environ
    ) as server:
        env = {**os.environ, **server.env()}
        run(
            [str(BIN / "prefect"), "work-pool", "create", "team-pool", "--type", "process"],
            repo,
            env,
        )
        run([str(BIN / "prefect"), "deploy", "--all"], repo, env)
        before = api(f"{server.api_url}/deployments/name/hello/nightly")
        code, out = adopt(repo, template, first, "environments=[dev, prod]")
        assert code == 0, out
        synced = sync(repo)
        commit_lock(repo)  # the worker clones the deployed commit and runs its uv.lock
        # Its own tests pass as the adopted repository's CI runs them (no server of ours).
        run(["uv", "run", "--frozen", "pytest", "-q"], repo, synced, 600)
        repo_env = {**synced, **server.env(), "PATH": f"{BIN}:{os.environ['PATH']}"}
        repo_env |= UNHEARD_ALERTS  # prod, the last environment, requires an alerts target
        plan = run(["make", "plan", "ENV=prod"], repo, repo_env)
        # What it already had stays: the plan moves it to the template's pool and package, and
        # changes neither its name, its schedule nor its parameters.
        [line] = [ln for ln in plan.splitlines() if "deployment" in ln and "hello/nightly" in ln]
        assert line.split()[0] == "update", plan
        assert not {"parameters", "schedules"} & set(
            line.split("hello/nightly")[1].replace(",", " ").split()
        ), plan
        run(["make", "reconcile", "ENV=prod"], repo, repo_env)
        after = api(f"{server.api_url}/deployments/name/hello/nightly")
        assert after["id"] == before["id"], plan
        assert after["parameters"] == before["parameters"] == {"rows": 5, "label": "night"}
        kept = ("cron", "timezone")
        assert [{k: s["schedule"][k] for k in kept} for s in after["schedules"]] == [
            {k: s["schedule"][k] for k in kept} for s in before["schedules"]
        ]
        assert after["entrypoint"] == "team_flows.flows.hello:hello"
        flow_run = api(f"{server.api_url}/deployments/{after['id']}/create_flow_run", {})
        worker = ["uv", "run", "prefect", "worker", "start", "--pool", "team-flows-prod"]
        run([*worker, "--run-once"], repo, repo_env, timeout=300)
        finished = api(f"{server.api_url}/flow_runs/{flow_run['id']}")
        state = finished["state"]["type"]
        assert state == "COMPLETED", (tmp_path / "server.log").read_text()[-3000:]
        # adopt gave the team's flow the record_commit hook: the run says what it ran.
        head = git("rev-parse", "HEAD", cwd=repo).strip()
        assert finished["labels"].get("pipeline.commit") == head, finished["labels"]
