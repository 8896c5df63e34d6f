"""fleet adopt gives each adopted flow the template's record_commit hook, by a text edit."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from fleet.commit_hook import HOOK, add_commit_hook, hook_module

TEAM_MODULE = '''"""The team's flows."""
from prefect import flow, task
import prefect


@flow
def bare(): ...


@prefect.flow(name="named",
              retries=1)
def named(): ...


@flow()
async def empty(): ...


@flow(on_running=[print])
def own_hooks(): ...


@task
def not_a_flow(): ...
'''


def test_every_flow_gets_the_hook_and_the_import_once() -> None:
    hooked, left = add_commit_hook(TEAM_MODULE, "team_flows")
    tree = ast.parse(hooked)  # still Python
    decorators = {
        node.name: ast.unparse(node.decorator_list[0])
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert decorators == {
        "bare": f"flow({HOOK})",
        "named": f"prefect.flow({HOOK}, name='named', retries=1)",
        "empty": f"flow({HOOK})",
        "own_hooks": "flow(on_running=[print])",
        "not_a_flow": "task",
    }
    assert left == ["flow(on_running=[print])"]
    assert hooked.count("from team_flows._internal.provenance import record_commit\n") == 1
    # Nothing else of the team's text moves: take the insertions out and it is the original
    # (but for `@flow()`, which comes back as `@flow`).
    restored = hooked.replace("from team_flows._internal.provenance import record_commit\n", "")
    restored = restored.replace(f"({HOOK})", "").replace(f"{HOOK}, ", "")
    assert restored == TEAM_MODULE.replace("@flow()", "@flow")


def test_a_module_whose_flows_all_have_hooks_is_left_as_it_is() -> None:
    text = "from prefect import flow\n\n\n@flow(on_running=[print])\ndef f(): ...\n"
    assert add_commit_hook(text, "p") == (text, ["flow(on_running=[print])"])
    done = "from p._internal.provenance import record_commit\n" + text.replace(
        "print", "record_commit"
    )
    assert add_commit_hook(done, "p") == (done, [])
    plain = "import os\n\nX = os.sep\n"
    assert add_commit_hook(plain, "p") == (plain, [])


def test_a_formatted_module_stays_formatted_and_an_unformatted_one_as_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    long_flow = (
        "from prefect import flow\n\n\n"
        '@flow(name="a-long-flow-name", retries=2, retry_delay_seconds=30, log_prints=False)\n'
        "def f() -> None: ...\n"
    )
    formatted = tmp_path / "formatted.py"
    formatted.write_text(long_flow)
    assert hook_module(formatted, "pkg", tmp_path) == []
    ruff = [sys.executable, "-m", "ruff"]
    for check in (["check", "--select", "E501,I"], ["format", "--check"]):
        result = subprocess.run([*ruff, *check, str(formatted)], cwd=tmp_path, check=False)
        assert result.returncode == 0, (check, formatted.read_text())
    assert "from pkg._internal.provenance import record_commit" in formatted.read_text()
    loose = tmp_path / "loose.py"
    loose.write_text(long_flow.replace("def f()", "def   f()"))
    hook_module(loose, "pkg", tmp_path)
    assert "def   f()" in loose.read_text()  # not reformatted: the team's style stays
