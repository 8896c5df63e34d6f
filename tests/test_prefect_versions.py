"""The accepted prefect_version range installs and passes `ops validate`, per release line.

copier.yml accepts the releases of each line of PREFECT_LINES from PREFECT_LOWEST on
(includes/validators.jinja). The lowest release, and each line's newest release on PyPI (asked
with `pip index versions prefect` when the test runs, so a new patch release is tested the next
time the suite runs), are rendered, installed with uv, every name ops/prefect_internals.py takes
from Prefect's private modules resolved and `ops validate` run. A release that is the default
answer is installed, tested and validated by the first entry of tests/test_runtimes.py's check
matrix instead: there, this test only checks that it is still the line's newest.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rendering import BIN, QUESTIONS, ROOT, render, run, sync

VALIDATORS = (ROOT / "includes" / "validators.jinja").read_text(encoding="utf-8")


def release(name: str) -> str:
    match = re.search(rf"set {name} = \[(\d+), (\d+), (\d+)\]", VALIDATORS)
    assert match, f"{name} not found in includes/validators.jinja"
    return ".".join(match.groups())


def lines() -> list[str]:
    match = re.search(r"set PREFECT_LINES = \[(.*)\] -%\}", VALIDATORS)
    assert match, "PREFECT_LINES not found in includes/validators.jinja"
    return [f"{a}.{b}" for a, b in re.findall(r"\[(\d+), (\d+)\]", match[1])]


LOWEST, LINES = release("PREFECT_LOWEST"), lines()
DEFAULT = QUESTIONS["prefect_version"]["default"]


def newest_release(line: str) -> str:
    """The line's newest final release on the package index."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "prefect"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"Available versions: (.*)", result.stdout)
    assert found, f"pip index versions prefect answered:\n{result.stdout}{result.stderr}"
    releases = [v for v in found[1].split(", ") if re.fullmatch(rf"{re.escape(line)}\.\d+", v)]
    assert releases, f"no release of the {line} line on the index"
    return max(releases, key=lambda v: int(v.rsplit(".", 1)[1]))


def test_help_states_the_range() -> None:
    help_text = " ".join(QUESTIONS["prefect_version"]["help"].split())
    assert f"the {', '.join(LINES)} line from {LOWEST} on" in help_text
    assert DEFAULT.rsplit(".", 1)[0] in LINES, "a default outside the tested lines"


# Every name ops/prefect_internals.py takes from Prefect's private modules, and the modules that
# import Prefect; printing the version proves which release was installed.
IMPORTS = """
import importlib, sys, prefect
for module in ("ops.__main__", "ops.deployments", "ops.validate", "flows.etl", "flows.publish"):
    importlib.import_module(f"{sys.argv[1]}.{module}")
internals = importlib.import_module(f"{sys.argv[1]}.ops.prefect_internals")
for name in internals.PRIVATE:
    internals.private(name)
print(prefect.__version__)
"""


def install_and_validate(template: Path, destination: Path, version: str) -> None:
    repo = render(template, destination, {"prefect_version": version})
    env = sync(repo)
    uv = str(BIN / "uv")
    imported = run([uv, "run", "python", "-c", IMPORTS, "sales_etl"], cwd=repo, env=env)
    assert imported.strip().splitlines()[-1] == version
    run([uv, "run", "python", "-m", "sales_etl.ops", "validate"], cwd=repo, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("line", LINES)
def test_the_newest_release_of_each_line_installs_and_validates(
    template: Path, tmp_path: Path, line: str
) -> None:
    version = newest_release(line)
    print(f"\nprefect {line} line: newest release {version}")
    if version == DEFAULT:
        return  # installed and validated by the check matrix's default entry
    install_and_validate(template, tmp_path / "repo", version)


@pytest.mark.slow
@pytest.mark.skipif(LOWEST == DEFAULT, reason="the check matrix installs the default")
def test_the_lowest_release_installs_and_validates(template: Path, tmp_path: Path) -> None:
    install_and_validate(template, tmp_path / "repo", LOWEST)
