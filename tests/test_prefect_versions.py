"""The ends of the accepted prefect_version range (and each release line between) install and
pass `ops validate`.

copier.yml accepts exactly the releases from PREFECT_LOWEST to PREFECT_HIGHEST
(includes/validators.jinja). An end that is the default release is installed, tested and
validated by the first entry of tests/test_runtimes.py's check matrix (the default answers);
every other end is rendered here, installed with uv, its modules that reach into Prefect's
private API imported and `ops validate` run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rendering import BIN, PREFECT_HIGHEST, PREFECT_LOWEST, QUESTIONS, render, run, sync

LOWEST, HIGHEST = PREFECT_LOWEST, PREFECT_HIGHEST
DEFAULT = QUESTIONS["prefect_version"]["default"]
# The newest release of each minor line strictly inside the range (none while it spans one
# line): tests/test_prefect_releases.py fails when PyPI shows a line this leaves out.
LINES: tuple[str, ...] = ()
INSTALLED = {LOWEST, HIGHEST, *LINES}


def test_help_states_the_range() -> None:
    help_text = " ".join(QUESTIONS["prefect_version"]["help"].split())
    assert f"{LOWEST} to {HIGHEST}" in help_text
    assert DEFAULT in {LOWEST, HIGHEST}, "an end the check matrix does not install"


# The modules that import Prefect, ops.prefect_private (every private name ops takes from
# prefect.cli.deploy) first; printing the version proves which release was installed.
IMPORTS = """
import importlib, sys, prefect
for module in ("ops.prefect_private", "ops.__main__", "ops.deployments", "ops.validate",
               "flows.etl", "flows.publish"):
    importlib.import_module(f"{sys.argv[1]}.{module}")
print(prefect.__version__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted(INSTALLED - {DEFAULT}))
def test_release_at_the_end_of_the_range_installs_and_validates(
    template: Path, tmp_path: Path, version: str
) -> None:
    repo = render(template, tmp_path / "repo", {"prefect_version": version})
    env = sync(repo)
    uv = str(BIN / "uv")
    imported = run([uv, "run", "python", "-c", IMPORTS, "sales_etl"], cwd=repo, env=env)
    assert imported.strip().splitlines()[-1] == version
    run([uv, "run", "python", "-m", "sales_etl.ops", "validate"], cwd=repo, env=env)
