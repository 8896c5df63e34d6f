"""A self-hosted Prefect server with basic auth, for real: the default render's `ops reconcile`
refuses a missing or wrong PREFECT_API_AUTH_STRING in one line naming it (the server exempts
/health from auth, so only an authenticated read can tell), and reconciles with the right one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.server import running_server
from tests.rendering import BIN, answers_of, commit_lock, render, run, sync

# Made up and built by parts: no credential-looking literal in the repository.
AUTH_STRING = "ops" + ":" + "not-" + "a-real-password"
WRONG = "ops" + ":" + "wrong-" + "guess"


@pytest.mark.slow
def test_a_missing_or_wrong_auth_string_is_named_and_the_right_one_reconciles(
    template: Path, tmp_path: Path
) -> None:
    repo = render(template, tmp_path / "sales-etl")
    env = sync(repo)
    commit_lock(repo)
    package = answers_of(repo)["package_name"]
    environment = answers_of(repo)["environments"][0]
    reconcile = [str(BIN / "uv"), "run", "python", "-m", f"{package}.ops", "reconcile"]
    reconcile += ["--env", environment]
    logs = tmp_path / "server.log"
    prefect = BIN / "prefect"
    with running_server(
        prefect, tmp_path / "home", logs, os.environ, auth_string=AUTH_STRING
    ) as server:
        base = {**env, **server.env()}
        for name in ("PREFECT_API_AUTH_STRING", "PREFECT_API_KEY"):
            base.pop(name, None)
        # The preflight, unset then wrong; --dry-run skips the preflight, so its 401 comes
        # from reconcile's first read and the entry point's handler.
        refused = [(None, []), (WRONG, []), (WRONG, ["--dry-run"])]
        for auth, extra in refused:
            attempt = {**base, **({"PREFECT_API_AUTH_STRING": auth} if auth else {})}
            result = subprocess.run(
                reconcile + extra,
                cwd=repo,
                env=attempt,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            output = result.stdout + result.stderr
            shown = f"auth {'set' if auth else 'unset'} {extra}:\n{output}"
            assert result.returncode == 2, shown
            assert "PREFECT_API_AUTH_STRING" in output, shown
            assert "401 Unauthorized" in output, shown
            assert "Traceback" not in output, shown
            assert WRONG not in output and "wrong-guess" not in output, shown
            assert "nothing was changed" in output or extra, shown
        output = run(reconcile, cwd=repo, env={**base, "PREFECT_API_AUTH_STRING": AUTH_STRING})
        assert "Traceback" not in output
        assert AUTH_STRING not in output
