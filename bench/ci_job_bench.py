"""What a pull request's CI job costs, on the one platform whose job runs here: GitLab's.

`python -m bench.ci_job_bench [--rounds 2]` renders the default answers with
`ci_platform=gitlab-ci`, installs and commits the lock as `make setup` does, then runs the
generated `.gitlab-ci.yml` `check` job for real with gitlab-ci-local's shell executor
(tests/gitlab_ci_local.py: the job's own before_script and script, uv and pre-commit caches of
this machine, as CI restores them from its cache). Beside it, in the same run, the same
repository's own pytest and a bare Prefect project's (bench/check_bench.py), so the job's
figure reads against what every push's check is measured by. The job runs on a branch, as a
merge request's pipeline does, so its rule leaves out the tests marked slow; the pytest beside
it runs the same selection. GitHub Actions, Bitbucket
Pipelines and Azure Pipelines cannot run here: their files are validated by the tests only.

The first job run is untimed (it builds the pre-commit hook environments a CI cache holds);
prints each round's wall times, the medians and the load average. No budget: the issue asks
for the figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.check_bench import PUSH_CHECK, bare_project, load, pytest_seconds
from tests import rendering
from tests.gitlab_ci_local import run_check_job
from tests.rendering import BIN, git
from tests.test_ci_platforms import install_node_tools


def job_seconds(repo: Path, env: dict[str, str], tools: Path, work: Path) -> float:
    start = time.perf_counter()
    output = run_check_job(repo, env, tools, work)
    seconds = time.perf_counter() - start
    if "deselected" not in output:
        rule = "its push-check rule did not apply"
        raise SystemExit(f"the check job ran every test: {rule}\n{output}")
    print(f"  check job: {seconds:.1f} s, load {load()}", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"load average at the start: {load()}")
    tools = install_node_tools()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        template = rendering.snapshot_template(work / "template")
        repo = rendering.render(template, work / "sales-etl", {"ci_platform": "gitlab-ci"})
        env = rendering.sync(repo)
        git("add", "uv.lock", cwd=repo)
        rendering.run(
            [str(BIN / "uv"), "run", "pre-commit", "run", "--files", "uv.lock"], repo, env
        )
        rendering.commit_lock(repo)
        git("switch", "-q", "-c", "change", cwd=repo)
        answers = rendering.answers_of(repo)
        python = str(answers["python_version"])
        bare = bare_project(work / "bare", python, answers["prefect_version"])
        bare_env = rendering.repo_env(python)
        rendering.run([str(BIN / "uv"), "sync", "--quiet"], cwd=bare, env=bare_env)
        rendering.commit_lock(bare)
        print("untimed first runs (hook environments, bytecode):")
        job_seconds(repo, env, tools, work)
        pytest_seconds(bare, bare_env)
        job_s, pytest_s, bare_s = [], [], []
        for i in range(args.rounds):
            print(f"round {i + 1}:")
            job_s.append(job_seconds(repo, env, tools, work))
            pytest_s.append(pytest_seconds(repo, env, *PUSH_CHECK))
            bare_s.append(pytest_seconds(bare, bare_env))
    job, own, floor = (statistics.median(s) for s in (job_s, pytest_s, bare_s))
    print(
        f"GitLab check job (gitlab-ci-local, shell executor, warm caches), median of "
        f"{args.rounds}: {job:.1f} s; its repository's pytest alone {own:.1f} s; a bare "
        f"Prefect project's pytest {floor:.1f} s (job / bare {job / floor:.2f}x); "
        f"load average at the end {load()}"
    )


if __name__ == "__main__":
    main()
