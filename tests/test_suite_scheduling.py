"""`make test` relies on --dist loadgroup keeping an xdist_group on one worker.

The end-to-end modules mark themselves with xdist_group so that their module fixtures (a Prefect
server, installed renders, a Docker registry) are set up once. pytest 9.2 with pytest-xdist 3.8
drops the marks without a word (pytest-dev/pytest-xdist#1386) and every worker that got one of
a module's tests set its fixture up again: minutes of the suite's time. This runs the suite's
own scheduling on a throwaway module and checks where the grouped tests ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

GROUPED_MODULE = """
import os
import pytest

pytestmark = pytest.mark.xdist_group("grouped")


@pytest.fixture(scope="module")
def expensive(tmp_path_factory):
    with open(os.environ["SETUPS"], "a") as log:
        log.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")


@pytest.mark.parametrize("i", range(6))
def test_grouped(expensive, i):
    pass
"""

UNGROUPED_MODULE = """
import pytest


@pytest.mark.parametrize("i", range(12))
def test_ungrouped(i):
    pass
"""

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def test_an_xdist_group_runs_on_one_worker_and_sets_its_module_fixture_up_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED_MODULE)
    (tmp_path / "test_ungrouped.py").write_text(UNGROUPED_MODULE)
    setups = tmp_path / "setups.log"
    result = subprocess.run(
        [*PYTEST, "-n", "3", "--dist", "loadgroup", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        # Not PYTEST_XDIST_WORKER and the like of the worker running this test.
        env={**without_pytest_variables(os.environ), "SETUPS": str(setups)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(setups.read_text().split()) == 1, f"module fixture set up on: {setups.read_text()}"


def without_pytest_variables(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if not name.startswith("PYTEST_")}
