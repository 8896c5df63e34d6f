"""fleet adopt gives each adopted flow the template's record_commit hook, by a text edit."""

from __future__ import annotations

import ast

from fleet.commit_hook import HOOK, add_commit_hook

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
