"""The process runtime on a worker that has no checkout: the default render deployed with its
repository on a token-protected git remote over HTTP (tests/e2e/git_http.py), run by a process
worker started in an empty directory from another virtualenv (this suite's own), which clones
the deployed commit and runs it in that commit's locked environment.

With the worker's credential right the run completes and loads every row; with it wrong the
run fails at the clone, and neither token is in the deployment, the run's logs or the worker's.
Two commits deployed as CI deploys them (dev, then prod by promotion; the second to dev only),
a request's preview and a rollback: each run reports the code, config and dependencies of the
commit it was deployed at.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

from bench.concurrency_bench import api
from tests.e2e.git_http import GitRemote, git_remote
from tests.e2e.server import Server, running_server, running_worker
from tests.rendering import BIN, UNHEARD_ALERTS, answers_of, commit_lock, git, render, run, sync
from tests.test_clusters_e2e import loaded_rows, source_rows
from tests.test_orchestration_e2e import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("process-git")]

# Made up here, by parts, so no file holds a credential-looking literal.
TOKEN = "-".join(["read", "only", "token", "for", "tests"])
WRONG = "-".join(["revoked", "token"])

# The render, its remote, the server it is deployed to, and the environment that deployed it.
Deployed = tuple[Path, GitRemote, Server, dict[str, str]]


@pytest.fixture(scope="module")
def deployed(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """The default render with two environments (dev, then prod: a promotion needs no middle
    one), committed with its lock, served by the remote, deployed to a server."""
    workdir = tmp_path_factory.mktemp("process-git")
    repo = render(template, workdir / "pipeline", {"environments": ["dev", "prod"]})
    env = sync(repo)
    commit_lock(repo)
    with (
        git_remote(repo, workdir / "served", TOKEN) as remote,
        running_server(BIN / "prefect", workdir / "home", workdir / "server.log", env) as server,
    ):
        deploy_env = {**env, **server.env(), "DEPLOY_REPOSITORY": remote.url}
        environment = answers_of(repo)["environments"][0]
        run(["make", "reconcile", f"ENV={environment}"], cwd=repo, env=deploy_env)
        yield repo, remote, server, deploy_env


def worker_env(
    deploy_env: dict[str, str], home: Path, remote: GitRemote, token: str | None, dsn: str
) -> dict[str, str]:
    """A worker machine's environment: Prefect, uv and git, the credential for the host in git's
    own configuration (none when token is None), a Python for uv to use, and nothing of the
    repository."""
    home.mkdir(parents=True, exist_ok=True)
    server_env = {
        k: v for k, v in deploy_env.items() if k.startswith("PREFECT_") or k == "DO_NOT_TRACK"
    }
    python = {"UV_PYTHON": deploy_env["UV_PYTHON"]} if "UV_PYTHON" in deploy_env else {}
    # The machine's CA bundle, as a worker host has its system's: uv reaches the package index
    # through this machine's proxy when a lock must be checked against it.
    certificates = {k: v for k, v in deploy_env.items() if k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    credential = (
        {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{remote.url}.extraHeader",
            "GIT_CONFIG_VALUE_0": remote.header(token),
        }
        if token is not None
        else {}
    )
    return {
        **server_env,
        **python,
        **certificates,
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(home),
        **credential,
        "GIT_TERMINAL_PROMPT": "0",
        "UV_CACHE_DIR": str(Path.home() / ".cache" / "uv"),  # warm: what a worker machine keeps
        "WAREHOUSE_DSN": dsn,
    }


def start_run(
    server: Server,
    slug: str,
    environment: str,
    tmp_path: Path,
    env: dict,
    deployment_name: str | None = None,
) -> dict:
    """One flow run of the environment's deployment (or another on its pool), by a worker
    started in an empty directory."""
    empty = tmp_path / "worker-dir"
    empty.mkdir(exist_ok=True)
    name = deployment_name or environment
    deployment = api(f"{server.api_url}/deployments/name/{slug}/{name}")
    flow_run = api(f"{server.api_url}/deployments/{deployment['id']}/create_flow_run", {})
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", f"{slug}-{environment}"]
    log = tmp_path / "worker.log"
    with running_worker(worker, cwd=empty, env=env, log=log):
        finished = wait_for(server.api_url, flow_run["id"], timeout=300)
    assert list(empty.iterdir()) == [], "the worker wrote into its own directory"
    return {**finished, "worker_log": log.read_text(errors="replace")}


def run_logs(server: Server, flow_run_id: str) -> str:
    logs = api(f"{server.api_url}/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}})
    return "\n".join(entry["message"] for entry in logs)


def run_with_credential(
    deployed: Deployed, tmp_path: Path, token: str | None, deployment_name: str | None = None
) -> tuple[dict, str, Path]:
    """One run by a worker holding TOKEN: the finished run, its logs, the database it loads."""
    repo, remote, server, deploy_env = deployed
    answers = answers_of(repo)
    slug, environment = answers["project_slug"], answers["environments"][0]
    database = tmp_path / "warehouse.db"
    env = worker_env(deploy_env, tmp_path / "home", remote, token, f"sqlite:///{database}")
    finished = start_run(server, slug, environment, tmp_path, env, deployment_name)
    return finished, run_logs(server, finished["id"]), database


def test_a_worker_without_a_checkout_runs_the_deployed_commit_from_the_token_remote(
    deployed: Deployed, tmp_path: Path
) -> None:
    repo, remote, server, _ = deployed
    answers = answers_of(repo)
    slug, environment = answers["project_slug"], answers["environments"][0]
    deployment = api(f"{server.api_url}/deployments/name/{slug}/{environment}")
    head = git("rev-parse", "HEAD", cwd=repo).strip()
    [clone, _, _] = deployment["pull_steps"]
    assert clone["prefect.deployments.steps.git_clone"] == {
        "id": "clone",
        "repository": remote.url,
        "commit_sha": head,
    }
    assert deployment["version"] == head
    finished, logs, database = run_with_credential(deployed, tmp_path, TOKEN)
    assert finished["state"]["type"] == "COMPLETED", finished["worker_log"][-4000:] + logs
    assert loaded_rows(database) == source_rows(repo)
    # The run's own code says which commit it ran: the clone's HEAD (_internal/provenance.py).
    assert finished["labels"].get("pipeline.commit") == head, finished["labels"]
    assert remote.requests and all(status == 200 for _, status in remote.requests)
    # The remote is private: without the worker's credential git is refused.
    anonymous = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0"}
    refused = subprocess.run(
        ["git", "ls-remote", remote.url], env=anonymous, capture_output=True, timeout=60
    )
    assert refused.returncode != 0 and remote.requests[-1][1] == 401
    for text in (json.dumps(deployment), logs, finished["worker_log"]):
        assert TOKEN not in text


@pytest.mark.parametrize("credential", [WRONG, None], ids=["wrong", "missing"])
def test_a_wrong_or_missing_credential_fails_the_run_at_the_clone_naming_the_repository(
    deployed: Deployed, tmp_path: Path, credential: str | None
) -> None:
    repo, remote, server, _ = deployed
    finished, logs, database = run_with_credential(deployed, tmp_path, credential)
    assert finished["state"]["type"] in {"FAILED", "CRASHED"}, finished["worker_log"][-4000:]
    assert f"Failed to clone repository {remote.url!r}" in logs + finished["worker_log"], logs
    assert not database.exists(), "a run that could not clone must run no task"
    deployment = api(f"{server.api_url}/deployments/{finished['deployment_id']}")
    server_log = (repo.parent / "server.log").read_text(errors="replace")
    for text in (logs, finished["worker_log"], json.dumps(finished), json.dumps(deployment)):
        assert WRONG not in text and TOKEN not in text
    assert WRONG not in server_log and TOKEN not in server_log


def test_a_commit_whose_lock_is_stale_fails_before_any_task_with_uv_s_reason(
    deployed: Deployed, tmp_path: Path
) -> None:
    """A commit that adds a dependency and forgets `uv lock`: the last pull step's `uv sync
    --locked` refuses it, and the run's state message (not only the worker's log) says why."""
    repo, _, server, _ = deployed
    answers = answers_of(repo)
    slug, environment = answers["project_slug"], answers["environments"][0]
    stale = tmp_path / "stale"
    git("clone", "-q", str(repo), str(stale), cwd=tmp_path)
    pyproject = stale / "pyproject.toml"
    text = pyproject.read_text()
    assert "dependencies = [\n" in text
    pyproject.write_text(text.replace("dependencies = [\n", 'dependencies = [\n    "six",\n', 1))
    git("commit", "-q", "-am", "Add a dependency, forget the lock", cwd=stale)
    commit = git("rev-parse", "HEAD", cwd=stale).strip()
    served = repo.parent / "served" / f"{repo.name}.git"  # the remote's own bare repository
    git("push", "-q", str(served), "HEAD:refs/heads/stale-lock", cwd=stale)
    # The environment's deployment, at that commit: as `make reconcile` at it would make it.
    deployment = api(f"{server.api_url}/deployments/name/{slug}/{environment}")
    pull_steps = json.loads(json.dumps(deployment["pull_steps"]))
    pull_steps[0]["prefect.deployments.steps.git_clone"]["commit_sha"] = commit
    api(
        f"{server.api_url}/deployments/",
        {
            "name": f"{environment}-stale-lock",
            "flow_id": deployment["flow_id"],
            "work_pool_name": deployment["work_pool_name"],
            "entrypoint": deployment["entrypoint"],
            "pull_steps": pull_steps,
            "job_variables": deployment["job_variables"],
            "version": commit,
        },
    )
    finished, logs, database = run_with_credential(
        deployed, tmp_path, TOKEN, f"{environment}-stale-lock"
    )
    state = finished["state"]
    assert state["type"] == "FAILED", (state, finished["worker_log"][-4000:])
    reason = "The lockfile at `uv.lock` needs to be updated, but `--locked` was provided"
    assert "environment could not be made" in state["message"], state
    assert reason in state["message"], state
    assert reason in logs, logs
    tasks = api(
        f"{server.api_url}/task_runs/filter", {"flow_runs": {"id": {"any_": [finished["id"]]}}}
    )
    assert tasks == [] and not database.exists(), "a run without its environment ran a task"
    assert TOKEN not in state["message"] + logs


def readme_from_source(repo: Path) -> str:
    """The README's from_source code block, as a team would copy it."""
    readme = (repo / "README.md").read_text(encoding="utf-8")
    after = readme.split("#### The same deployment from Python", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_s_from_source_route_deploys_what_reconcile_makes(
    deployed: Deployed, tmp_path: Path
) -> None:
    repo, remote, server, deploy_env = deployed
    slug = answers_of(repo)["project_slug"]
    made = api(f"{server.api_url}/deployments/name/{slug}/dev")  # the fixture's make reconcile
    commit = git("rev-parse", "HEAD", cwd=repo).strip()
    assert made["version"] == commit
    script = readme_from_source(repo).replace("<commit>", commit)
    script = script.replace("<repository URL>", remote.url)
    # from_source clones to load the flow: the deploying machine holds the read-only credential.
    worker = worker_env(deploy_env, tmp_path / "home", remote, TOKEN, "sqlite:///unused.db")
    credential = {k: v for k, v in worker.items() if k.startswith("GIT_")}
    output = run(
        [str(repo / ".venv" / "bin" / "python"), "-c", script],
        cwd=tmp_path,
        env={**deploy_env, **credential},
        timeout=300,
    )
    routed = api(f"{server.api_url}/deployments/name/{slug}/dev")
    assert remote.requests[-1][1] == 200, "from_source did not clone from the token remote"
    assert routed["id"] == made["id"]
    assert routed["updated"] != made["updated"], "from_source deployed nothing"
    compared = (
        "entrypoint",
        "pull_steps",
        "job_variables",
        "version",
        "tags",
        "parameters",
        "parameter_openapi_schema",
        "enforce_parameter_schema",
        "description",
        "work_pool_name",
        "work_queue_name",
        "concurrency_limit",
        "concurrency_options",
        "paused",
    )
    assert {k: routed[k] for k in compared} == {k: made[k] for k in compared}
    schedule = ("schedule", "active", "parameters", "slug")
    assert [{k: s[k] for k in schedule} for s in routed["schedules"]] == [
        {k: s[k] for k in schedule} for s in made["schedules"]
    ]
    # And reconcile, which compares every field it deploys, finds nothing to change.
    plan = run(["make", "plan", "ENV=dev"], cwd=repo, env=deploy_env)
    assert "No changes: 'dev' is up to date." in plan, plan
    assert TOKEN not in output + json.dumps(routed)


# The second commit's new dependency: small, pure Python, not in the render's lock.
NEW_DEPENDENCY = "tabulate"
PROBE = re.compile(r"probe code=(\w+) table=(\w+) dependency=(\S+)")


def set_probe(repo: Path, code: str, *, imports_dependency: bool) -> None:
    """The flow logs which code it is, a value of its environment's config, and the new
    dependency's version (imported, so a run without it fails) or whether it could be found."""
    flow = repo / "src" / answers_of(repo)["package_name"] / "flows" / "etl.py"
    text = re.sub(r'    get_run_logger\(\)\.info\("probe .*\n', "", flow.read_text())
    found = f'__import__("importlib.util").util.find_spec("{NEW_DEPENDENCY}")'
    dependency = (
        f'__import__("{NEW_DEPENDENCY}").__version__'
        if imports_dependency
        else f'"absent" if {found} is None else "present"'
    )
    probe = (
        f'    get_run_logger().info("probe code=%s table=%s dependency=%s", "{code}", '
        f"settings.warehouse_table, {dependency})\n"
    )
    anchor = "    settings = load_settings()\n"
    assert anchor in text, "the flow no longer reads its settings where the probe goes"
    flow.write_text(text.replace(anchor, anchor + probe, 1))


def push(repo: Path, ref: str = "main") -> str:
    """Push HEAD to REF of the remote, as a developer or a merge does; HEAD's commit."""
    served = repo.parent / "served" / f"{repo.name}.git"  # the remote's own bare repository
    git("push", "-q", str(served), f"HEAD:refs/heads/{ref}", cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo).strip()


def probe_of(server: Server, flow_run: dict) -> tuple[str, str, str]:
    """What the run's code logged: (its code, its warehouse table, the dependency)."""
    logs = run_logs(server, flow_run["id"])
    found = PROBE.search(logs)
    assert found, f"run {flow_run['name']} ({flow_run['state']['type']}) logged no probe:\n{logs}"
    return found[1], found[2], found[3]


def tables_of(database: Path) -> set[str]:
    with closing(sqlite3.connect(database)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def smoke(repo: Path, env: dict[str, str], *environments: str) -> dict[str, dict]:
    """`make smoke ENV=<env>` of each environment at once, as CI's jobs run them after their
    deploys: each one's smoke run, Completed (make smoke exits 1 otherwise)."""
    slug = answers_of(repo)["project_slug"]
    with ThreadPoolExecutor(len(environments)) as pool:
        outputs = pool.map(
            lambda name: run(["make", "smoke", f"ENV={name}"], cwd=repo, env=env, timeout=300),
            environments,
        )
    runs = {}
    for name, output in zip(environments, outputs, strict=True):
        (run_id,) = re.findall(rf"smoke run ([0-9a-f-]{{36}}) of {slug}/{name} ", output)
        runs[name] = {**api(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}"), "output": output}
    return runs


def test_each_environment_its_preview_and_a_rollback_run_their_own_commit(
    deployed: Deployed, tmp_path: Path
) -> None:
    """Commit A to dev, smoke, promoted to prod; commit B (other code, config and one more
    locked dependency) to dev only; then a request's preview of C, and dev rolled back to A.
    Workers on one machine, in one empty directory, with no checkout, run each."""
    repo, remote, server, deploy_env = deployed
    env = {**deploy_env, **UNHEARD_ALERTS}  # the last environment, prod, requires alerts
    slug = answers_of(repo)["project_slug"]
    host = tmp_path / "worker-host"
    host.mkdir()
    made: list[str] = []  # every make's output, for the token

    def make(*args: str) -> str:
        made.append(run(["make", *args], cwd=repo, env=env))
        return made[-1]

    def deployment(name: str) -> dict:
        return api(f"{server.api_url}/deployments/name/{slug}/{name}")

    def commit_of(name: str) -> str:
        [clone, *_] = deployment(name)["pull_steps"]
        return clone["prefect.deployments.steps.git_clone"]["commit_sha"]

    set_probe(repo, "A", imports_dependency=False)
    git("commit", "-q", "-am", "Probe A", cwd=repo)
    first = push(repo)
    with ExitStack() as stack:
        for name in ("dev", "prod"):
            database = f"sqlite:///{tmp_path / name}.db"
            worker = [str(BIN / "prefect"), "worker", "start", "--pool", f"{slug}-{name}"]
            worker_home = tmp_path / f"home-{name}"
            log = tmp_path / f"worker-{name}.log"
            environ = worker_env(deploy_env, worker_home, remote, TOKEN, database)
            stack.enter_context(running_worker(worker, cwd=host, env=environ, log=log))
        make("deploy", "ENV=dev")
        assert commit_of("dev") == first
        smoke(repo, env, "dev")  # the evidence prod's promotion gate reads
        make("deploy", "ENV=prod")
        assert commit_of("prod") == first

        # Other code, another config value and one more locked dependency, to dev only.
        set_probe(repo, "B", imports_dependency=True)
        for name in ("dev", "prod"):
            config = repo / "config" / f"{name}.yaml"
            text = config.read_text()
            assert "\nwarehouse_table: orders\n" in text
            config.write_text(text.replace("table: orders\n", "table: v2\n"))
        run([str(BIN / "uv"), "add", "--quiet", NEW_DEPENDENCY], cwd=repo, env=env)
        git("commit", "-q", "-am", f"Probe B, table v2, add {NEW_DEPENDENCY}", cwd=repo)
        second = push(repo)
        make("deploy", "ENV=dev")
        assert (commit_of("dev"), commit_of("prod")) == (second, first)
        runs = smoke(repo, env, "dev", "prod")  # both at once, each with its own lock
        dev, prod = runs["dev"], runs["prod"]
        assert probe_of(server, dev)[:2] == ("B", "v2"), dev["output"]
        assert re.fullmatch(r"\d+(\.\d+)+", probe_of(server, dev)[2]), probe_of(server, dev)
        assert probe_of(server, prod) == ("A", "orders", "absent")
        assert dev["labels"]["pipeline.commit"] == second
        assert prod["labels"]["pipeline.commit"] == first
        tables = {name: tables_of(tmp_path / f"{name}.db") for name in ("dev", "prod")}
        assert tables == {"dev": {"orders", "v2"}, "prod": {"orders"}}, tables

        # A request's branch: its preview runs its commit, on dev's pool, while dev rolls back.
        git("switch", "-q", "-c", "topic", cwd=repo)
        set_probe(repo, "C", imports_dependency=True)
        git("commit", "-q", "-am", "Probe C", cwd=repo)
        request = push(repo, "topic")
        make("preview", "REQUEST=5")
        assert commit_of("pr-5") == request
        started = f"{server.api_url}/deployments/{deployment('pr-5')['id']}/create_flow_run"
        preview_id = api(started, {})["id"]
        git("switch", "-q", "main", cwd=repo)
        make("rollback", "ENV=dev", f"TO={first[:12]}")
        assert commit_of("dev") == first
        rolled_back = smoke(repo, env, "dev")["dev"]
        preview = wait_for(server.api_url, preview_id, timeout=300)
    assert preview["state"]["type"] == "COMPLETED", preview["state"]
    assert probe_of(server, preview)[:2] == ("C", "v2")
    assert preview["labels"]["pipeline.commit"] == request
    assert probe_of(server, rolled_back) == ("A", "orders", "absent")
    assert rolled_back["labels"]["pipeline.commit"] == first
    assert not any(host.iterdir()), "a worker wrote into its own directory"
    # The token is in no deployment, no run's logs, no worker's or server's log, no make output.
    deployments = api(f"{server.api_url}/deployments/filter", {})
    texts = [json.dumps(deployments), *made, (repo.parent / "server.log").read_text()]
    texts += [log.read_text(errors="replace") for log in tmp_path.glob("worker-*.log")]
    flow_runs = [*runs.values(), preview, rolled_back]
    texts += [run_logs(server, flow_run["id"]) + json.dumps(flow_run) for flow_run in flow_runs]
    assert all(TOKEN not in text for text in texts)
