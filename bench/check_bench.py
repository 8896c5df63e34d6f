"""Every push's check: the generated repository's own pytest against a bare Prefect project's.

Side by side in one run (`python -m bench.check_bench [--rounds 3]`):

- the template rendered with the default answers, committed, `uv sync`ed and its lock committed
  (what a pull request checks out), then the check a pull request's CI job runs in it: `uv run
  pytest -m "not slow"` (the default branch runs the slow ones too: their time is printed, with
  no budget);
- a bare Prefect project a careful engineer would write: a pyproject.toml pinning the same
  Prefect and pytest, one flow, one test that runs it, a session-wide `prefect_test_harness`
  fixture (as Prefect's docs show), installed with `uv sync` from the same uv cache.

Both run in the environment the template's tests give generated repositories
(tests/rendering.repo_env: bytecode written). One untimed run each first writes the .pyc files
either side would have after its first run (and the generated tests' migrated database,
tests/prefect_api.py, which CI keeps in its cache); then the rounds alternate which side runs first,
so load weighs on both alike. Prints each side's wall times, the medians, the ratio and the
load average before and after; exits 1 when the median ratio is over --budget (1.5).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests import rendering
from tests.rendering import BIN, git

BARE_PYPROJECT = """[project]
name = "bare"
version = "0.1.0"
requires-python = ">={python}"
dependencies = ["prefect=={prefect}"]

[dependency-groups]
dev = ["pytest>=8.3"]

[tool.uv]
package = false
"""
BARE_FLOW = """from prefect import flow, task


@task
def double(x: int) -> int:
    return 2 * x


@flow
def pipeline(x: int = 1) -> int:
    return double(x)
"""
BARE_CONFTEST = """import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    with prefect_test_harness(server_startup_timeout=180):
        yield
"""
BARE_TEST = """from flows import pipeline


def test_pipeline() -> None:
    assert pipeline(2) == 4
"""


def bare_project(directory: Path, python: str, prefect: str) -> Path:
    (directory / "tests").mkdir(parents=True)
    (directory / "pyproject.toml").write_text(BARE_PYPROJECT.format(python=python, prefect=prefect))
    (directory / "flows.py").write_text(BARE_FLOW)
    (directory / "tests" / "conftest.py").write_text(BARE_CONFTEST)
    (directory / "tests" / "test_flows.py").write_text(BARE_TEST)
    (directory / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    git("init", "-q", "-b", "main", cwd=directory)
    git("add", "-A", cwd=directory)
    git("commit", "-q", "-m", "bare", cwd=directory)
    return directory


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


PUSH_CHECK = ("-m", "not slow")


def pytest_seconds(repo: Path, env: dict[str, str], *selection: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [str(BIN / "uv"), "run", "pytest", "-q", "-p", "no:cacheprovider", *selection],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"pytest failed in {repo}:\n{result.stdout}{result.stderr}")
    summary = result.stdout.strip().splitlines()[-1]
    print(f"  {repo.name}: {seconds:.1f} s ({summary}), load {load()}", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.5)
    parser.add_argument("--answers", nargs="*", default=[], metavar="QUESTION=VALUE")
    args = parser.parse_args()
    answers = dict(item.split("=", 1) for item in args.answers)
    print(f"load average at the start: {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        template = rendering.snapshot_template(work / "template")
        repo = rendering.render(template, work / "sales-etl", answers)
        env = rendering.sync(repo)
        rendering.commit_lock(repo)
        rendered = rendering.answers_of(repo)
        bare = bare_project(
            work / "bare", str(rendered["python_version"]), rendered["prefect_version"]
        )
        bare_env = rendering.repo_env(str(rendered["python_version"]))
        rendering.run([str(BIN / "uv"), "sync", "--quiet"], cwd=bare, env=bare_env)
        rendering.commit_lock(bare)
        print("untimed first runs (they write the bytecode):")
        pytest_seconds(repo, env, *PUSH_CHECK)
        pytest_seconds(bare, bare_env)
        template_s, bare_s = [], []
        for i in range(args.rounds):
            print(f"round {i + 1}:")
            sides = [(repo, env, template_s, PUSH_CHECK), (bare, bare_env, bare_s, ())]
            for path, side_env, times, selection in sides if i % 2 == 0 else reversed(sides):
                times.append(pytest_seconds(path, side_env, *selection))
        print("the default branch's run of every test, slow ones included (no budget):")
        full_s = pytest_seconds(repo, env)
    ratio = statistics.median(template_s) / statistics.median(bare_s)
    print(
        f"pytest wall, median of {args.rounds} alternating: generated repository's push check "
        f"{statistics.median(template_s):.1f} s (every test: {full_s:.1f} s), bare Prefect "
        f"project {statistics.median(bare_s):.1f} s, ratio {ratio:.2f}x (budget "
        f"{args.budget}x); load average at the end {load()}"
    )
    if ratio > args.budget:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
