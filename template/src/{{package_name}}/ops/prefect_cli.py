"""`prefect <args>` run in this process rather than in a new one.

ops has already imported Prefect and the flows by the time it deploys: a second interpreter
would import them again, 4-6 s of CPU on two cores, for every reconcile. The command is the
same, `prefect.cli.app`, the `prefect` executable's entry point, so it reads the same
prefect.yaml, settings and environment, and it uses this process's settings context, so the
API a test harness (or a profile) set is the API it deploys to.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path


def run_prefect(args: list[str], cwd: Path) -> tuple[int, str]:
    """`prefect <args>` in cwd: its exit code and its output (stdout and stderr together)."""
    from .prefect_internals import cli_app

    app = cli_app()
    output = io.StringIO()
    argv, previous = sys.argv, Path.cwd()
    sys.argv = ["prefect", *args]
    code = 0
    try:
        os.chdir(cwd)
        with redirect_stdout(output), redirect_stderr(output):
            app()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        sys.argv = argv
        os.chdir(previous)
    return code, output.getvalue()
