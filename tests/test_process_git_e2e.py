"""The process runtime from a private git remote, for real: workers that keep no checkout run
exactly the commit each environment deployed, with that commit's code, config and locked
dependencies, and a wrong or missing credential fails the run without leaking it.

One module fixture: a Prefect server, a git remote over HTTP on 127.0.0.1 that refuses requests
without its token (`git http-backend` behind http.server, tests/e2e/git_http.py) and one render
with [dev, prod]. Workers run from this suite's own virtualenv (not the repository's), in an
empty directory, with the token in a git credential file as the generated README's systemd
unit sets it up.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.concurrency_bench import api
from tests.e2e.demo import wait_for_final_state
from tests.e2e.git_http import GitRemote, private_git_remote
from tests.e2e.server import Server, running_server, running_worker
from tests.rendering import BIN, answers_of, commit_lock, git, render, repo_env, run, sync

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("process-git")]

TOKEN = "tok-" + secrets.token_hex(16)
SLUG = "gitsrc-etl"
# A small pure-Python package the seed's lock does not hold: the second commit adds it.
NEW_DEPENDENCY = "tabulate"
PROBE = re.compile(r"probe code=(\w+) batch_size=(\d+) new_dependency=(True|False)")


@dataclass
class Setup:
    server: Server
    remote: GitRemote
    repo: Path
    env: dict[str, str]
    work: Path

    def make(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", *args],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self.make(*args)
        assert result.returncode == 0, f"make {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def push(self) -> str:
        git("push", "-q", str(self.remote.root / f"{SLUG}.git"), "HEAD:main", cwd=self.repo)
        return git("rev-parse", "HEAD", cwd=self.repo).strip()


def set_probe(repo: Path, code: str) -> None:
    """The flow logs which code, config and dependency set it runs with."""
    flow = repo / "src" / "gitsrc_etl" / "flows" / "etl.py"
    text = flow.read_text(encoding="utf-8")
    text = re.sub(r"\n    get_run_logger\(\)\.info\(\"probe .*\n", "\n", text)
    probe = (
        '    get_run_logger().info("probe code=%s batch_size=%s new_dependency=%s", '
        f'"{code}", settings.batch_size, '
        f'__import__("importlib.util").util.find_spec("{NEW_DEPENDENCY}") is not None)\n'
    )
    text = text.replace(
        "    settings = load_settings()\n", "    settings = load_settings()\n" + probe
    )
    flow.write_text(text, encoding="utf-8")


def set_batch_size(repo: Path, size: int) -> None:
    for name in ("dev", "prod"):
        config = repo / "config" / f"{name}.yaml"
        text = re.sub(r"^batch_size: \d+$", f"batch_size: {size}", config.read_text(), flags=re.M)
        config.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def setup(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("process-git")
    with (
        running_server(
            # A generous bound: on two loaded cores a fresh server has taken over 100 s.
            BIN / "prefect",
            work / "home",
            work / "server.log",
            os.environ,
            timeout=300,
        ) as server,
        private_git_remote(work / "remote", TOKEN, work / "git-remote.log") as remote,
    ):
        repo = render(
            template, work / SLUG, {"project_slug": SLUG, "environments": ["dev", "prod"]}
        )
        env = sync(repo)
        commit_lock(repo)
        remote.create(SLUG)
        env = {
            **env,
            **server.env(),
            "PATH": f"{BIN}:{env['PATH']}",
            "GIT_REPOSITORY": remote.repository_url(SLUG),
        }
        yield Setup(server, remote, repo, env, work)


def worker_env(setup: Setup, credential: str | None) -> dict[str, str]:
    """A worker host's environment: its own virtualenv (this suite's), the API, and git's
    credential store as the README's systemd unit configures it."""
    python_version = str(answers_of(setup.repo)["python_version"])
    env = {
        **repo_env(python_version),
        **setup.server.env(),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "WAREHOUSE_DSN": f"sqlite:///{setup.work / 'warehouse.db'}",
    }
    if credential is not None:
        store = setup.work / f"git-credentials-{secrets.token_hex(4)}"
        host = setup.remote.url.removeprefix("http://")
        store.write_text(f"http://x-access-token:{credential}@{host}\n", encoding="utf-8")
        store.chmod(0o600)
        env |= {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "credential.helper",
            "GIT_CONFIG_VALUE_0": f"store --file={store}",
        }
    return env


def workers(stack: ExitStack, setup: Setup, credential: str | None, *envs: str) -> Path:
    host = setup.work / f"worker-host-{secrets.token_hex(4)}"
    host.mkdir()
    for name in envs:
        stack.enter_context(
            running_worker(
                [str(BIN / "prefect"), "worker", "start", "--pool", f"{SLUG}-{name}"],
                cwd=host,
                env=worker_env(setup, credential),
                log=setup.work / f"worker-{name}-{host.name}.log",
            )
        )
    return host


def smoke_run(setup: Setup, env: str) -> dict[str, Any]:
    output = setup.ok("smoke", f"ENV={env}", "SMOKE_PARAMETERS={}")
    (run_id,) = re.findall(r"smoke run ([0-9a-f-]{36}) ", output)
    return api(f"{setup.server.api_url}/flow_runs/{run_id}")


def logs_of(setup: Setup, run_id: str) -> list[str]:
    found = api(
        f"{setup.server.api_url}/logs/filter",
        {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200},
    )
    return [entry["message"] for entry in found]


def probe_of(setup: Setup, run: dict[str, Any]) -> tuple[str, int, bool]:
    for message in logs_of(setup, run["id"]):
        if found := PROBE.search(message):
            return found[1], int(found[2]), found[3] == "True"
    raise AssertionError(f"run {run['id']} logged no probe: {logs_of(setup, run['id'])}")


def test_each_environment_runs_its_own_commit_from_git(setup: Setup) -> None:
    repo = setup.repo
    set_probe(repo, "A")
    git("commit", "-q", "-am", "probe A", cwd=repo)
    first = setup.push()
    batch_a = int(
        re.search(r"^batch_size: (\d+)$", (repo / "config/dev.yaml").read_text(), re.M)[1]
    )

    with ExitStack() as stack:
        host = workers(stack, setup, TOKEN, "dev", "prod")
        setup.ok("deploy", "ENV=dev")
        dev = api(f"{setup.server.api_url}/deployments/name/{SLUG}/dev")
        (clone,) = dev["pull_steps"]
        assert clone["prefect.deployments.steps.git_clone"] == {
            "repository": setup.remote.repository_url(SLUG),
            "branch": None,
            "commit_sha": first,
        }
        smoke_a = smoke_run(setup, "dev")
        assert f"commit:{first}" in smoke_a["tags"]
        assert probe_of(setup, smoke_a) == ("A", batch_a, False)
        setup.ok("deploy", "ENV=prod")

        # The second commit: other code, other config, one more locked dependency.
        set_probe(repo, "B")
        set_batch_size(repo, 7)
        subprocess.run(
            [str(BIN / "uv"), "add", "--quiet", NEW_DEPENDENCY],
            cwd=repo,
            env=setup.env,
            check=True,
            timeout=300,
        )
        git("commit", "-q", "-am", "probe B, batch size 7, a new dependency", cwd=repo)
        second = setup.push()
        setup.ok("deploy", "ENV=dev")
        smoke_b = smoke_run(setup, "dev")
        prod = smoke_run(setup, "prod")
        # Both environments at once on one worker host: each its own commit and lock.
        assert f"commit:{second}" in smoke_b["tags"]
        assert probe_of(setup, smoke_b) == ("B", 7, True)
        assert f"commit:{first}" in prod["tags"]
        assert probe_of(setup, prod) == ("A", batch_a, False)

        # A rollback deploys the earlier commit: dev runs its code again.
        setup.ok("rollback", "ENV=dev", f"TO={first[:12]}")
        rolled_back = smoke_run(setup, "dev")
        assert probe_of(setup, rolled_back) == ("A", batch_a, False)

        # A request's preview runs the request's commit.
        git("switch", "-q", "-c", "topic", cwd=repo)
        set_probe(repo, "C")
        git("commit", "-q", "-am", "probe C", cwd=repo)
        git("push", "-q", str(setup.remote.root / f"{SLUG}.git"), "topic", cwd=repo)
        setup.ok("preview", "REQUEST=5")
        preview = wait_for(setup, start_run(setup, "pr-5"))
        assert preview["state"]["type"] == "COMPLETED", preview["state"]
        assert probe_of(setup, preview)[0] == "C"
        git("switch", "-q", "main", cwd=repo)
    # The worker host never held a checkout of its own.
    assert not (host / "pyproject.toml").exists()
    assert not any(host.iterdir())


def start_run(setup: Setup, name: str) -> str:
    deployment = api(f"{setup.server.api_url}/deployments/name/{SLUG}/{name}")
    return api(f"{setup.server.api_url}/deployments/{deployment['id']}/create_flow_run", {})["id"]


def wait_for(setup: Setup, run_id: str, timeout: float = 600) -> dict[str, Any]:
    wait_for_final_state(setup.server.api_url, run_id, timeout)
    return api(f"{setup.server.api_url}/flow_runs/{run_id}")


def test_a_wrong_or_missing_token_fails_the_run_naming_the_repository(setup: Setup) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    # Both at once: a worker with a wrong token on dev's pool, one with none on prod's.
    for name in ("dev", "prod"):
        setup.ok("reconcile", f"ENV={name}")  # the deployments, whatever the other test left
    with ExitStack() as stack:
        workers(stack, setup, wrong, "dev")
        workers(stack, setup, None, "prod")
        started = {name: start_run(setup, name) for name in ("dev", "prod")}
        runs = {name: wait_for(setup, run_id) for name, run_id in started.items()}
    url = setup.remote.repository_url(SLUG)
    texts = {
        "the server's log": (setup.work / "server.log").read_text(errors="replace"),
        "the git remote's log": (setup.work / "git-remote.log").read_text(),
    }
    for name, flow_run in runs.items():
        assert flow_run["state"]["type"] in {"CRASHED", "FAILED"}, flow_run["state"]
        logs = "\n".join(logs_of(setup, flow_run["id"]))
        worker_logs = "\n".join(p.read_text() for p in setup.work.glob(f"worker-{name}-*.log"))
        # The run's own logs stop at its clone step; Prefect 3.9.1's supervisor writes the
        # step's error to the worker's output, which names the repository.
        assert "Executing deployment step: git_clone" in logs, logs
        assert f"Failed to clone repository {url!r}" in worker_logs, worker_logs
        deployment = api(f"{setup.server.api_url}/deployments/name/{SLUG}/{name}")
        texts |= {
            f"{name}'s flow-run logs": logs,
            f"{name}'s flow run": str(flow_run),
            f"{name}'s deployment": str(deployment),
            f"{name}'s worker log": worker_logs,
        }
    for where, text in texts.items():
        assert TOKEN not in text, f"the token is in {where}"
        assert wrong not in text, f"the wrong token is in {where}"


def readme_from_source(repo: Path) -> str:
    """The README's from_source code block, as a team would copy it."""
    readme = (repo / "README.md").read_text(encoding="utf-8")
    after = readme.split("by Prefect's own `from_source` route", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_s_from_source_route_deploys_what_reconcile_makes(setup: Setup) -> None:
    commit = setup.push()
    setup.ok("reconcile", "ENV=dev")
    made = api(f"{setup.server.api_url}/deployments/name/{SLUG}/dev")
    script = readme_from_source(setup.repo)
    script = script.replace("<commit>", commit)
    script = script.replace("<repository URL>", setup.remote.repository_url(SLUG))
    # from_source clones to load the flow: the deploying machine uses the read-only credential.
    credential = {k: v for k, v in worker_env(setup, TOKEN).items() if k.startswith("GIT_")}
    run(
        [str(setup.repo / ".venv" / "bin" / "python"), "-c", script],
        cwd=setup.work,
        env={**setup.env, **credential},
        timeout=300,
    )
    routed = api(f"{setup.server.api_url}/deployments/name/{SLUG}/dev")
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
        "description",
        "work_pool_name",
        "work_queue_name",
        "concurrency_limit",
        "concurrency_options",
    )
    assert {k: routed[k] for k in compared} == {k: made[k] for k in compared}
    schedule = ("schedule", "active", "parameters", "slug")
    assert [{k: s[k] for k in schedule} for s in routed["schedules"]] == [
        {k: s[k] for k in schedule} for s in made["schedules"]
    ]
    # And reconcile, which compares every field it deploys, finds nothing to change.
    plan = setup.ok("plan", "ENV=dev")
    assert not re.search(rf"deployment +{SLUG}/dev ", plan), plan
