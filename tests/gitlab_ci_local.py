"""GitLab's `check` job of a generated .gitlab-ci.yml, run for real by gitlab-ci-local with its
shell executor: the job's own before_script and script, on this machine, instead of running
the same checks by hand."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.rendering import BIN, run


def run_check_job(repo: Path, env: Mapping[str, str], tools: Path, work: Path) -> str:
    """The job's output; fails with it unless the job passes. `tools` holds gitlab-ci-local.

    The job installs uv with pip (`pip install uv==...`): a throwaway virtual environment puts a
    pip first on PATH, so nothing is installed into this machine's Python. The caches the job
    points at .cache/ under the project are this machine's, so hook environments and wheels
    are reused (CI restores them from its cache the same way).
    """
    python = work / "job-python"
    run([sys.executable, "-m", "venv", str(python)], cwd=work, env=env)
    uv_cache = run([str(BIN / "uv"), "cache", "dir"], cwd=work, env=env).strip()
    pre_commit_home = env.get("PRE_COMMIT_HOME") or str(Path.home() / ".cache" / "pre-commit")
    job_env = {**env, "PATH": f"{python / 'bin'}{os.pathsep}{env['PATH']}"}
    variables = {"UV_CACHE_DIR": uv_cache, "PRE_COMMIT_HOME": pre_commit_home}
    args = [str(tools / "gitlab-ci-local"), "--force-shell-executor"]
    for name, value in variables.items():
        args += ["--variable", f"{name}={value}"]
    output = run([*args, "check"], cwd=repo, env=job_env, timeout=1200)
    assert "PASS  check" in output, output
    return output
