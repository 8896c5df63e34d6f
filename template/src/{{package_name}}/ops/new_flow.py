"""`python -m <package>.ops.new_flow NAME [--schedule CRON | --after FLOW]` (make new-flow):
add a flow in one step.

Writes src/<package>/flows/NAME.py (a flow to fill in), tests/flows/test_NAME.py (which runs
it on the test API) and NAME's entry in flows.yaml, which deploys it in every environment with
prefect.yaml's shared defaults: all of it passes the repository's checks as written. A bad
name, schedule or upstream is refused before anything is written.
"""

from __future__ import annotations

import argparse
import builtins
import json
import keyword
import re
import sys
from pathlib import Path

import yaml
from prefect.client.schemas.schedules import CronSchedule
from pydantic import ValidationError

from .._internal.config import ConfigError, read_yaml
from .flows import FLOWS_FILE, UPSTREAM_PARAMETER, environment_order, read_flows
from .state import read_state

PACKAGE = __package__.rpartition(".")[0]
NAME = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
# Names the generated module itself uses: a flow called so would shadow them.
TAKEN = {
    "annotations",
    "extract",
    "flow",
    "get_run_logger",
    "record_commit",
    "task",
    "transform",
}
LINE_LENGTH = 100
EMPTY_FLOWS = re.compile(r"(?m)^flows:[ \t]*\{\}[ \t]*$")

FLOW_MODULE = '''\
"""{title}: replace this line with what the flow does.

`make new-flow` wrote this module, its test (tests/flows/test_{name}.py)
and its deployments ({flows_file}: one per environment, with prefect.yaml's shared defaults).
Keep the shape: one task per retryable step, IO apart from pure logic.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from {package}._internal.provenance import record_commit


@task(retries=2, retry_delay_seconds=[2, 10])
def extract(limit: int) -> list[int]:
    """Read the input (IO, so it retries): replace with your source."""
    return list(range(limit))


def transform(rows: list[int]) -> list[int]:
    """Pure logic, tested without a flow run: replace with yours."""
    return [row * 2 for row in rows]


@flow(
    name="{flow_name}",
    log_prints=False,
    # Labels each run with the commit it runs: smoke and promotion compare it (ops validate).
    on_running=[record_commit],
)
def {name}({signature}) -> int:
    """{docstring}"""
    rows = transform(extract(limit))
    get_run_logger().info("Processed %d rows", len(rows))
    return len(rows)


if __name__ == "__main__":
    {name}()
'''

TEST_MODULE = '''\
"""The {name} flow, run for real on the session's temporary Prefect API."""

from __future__ import annotations

{import_line}


def test_transform_doubles_each_row() -> None:
    assert transform([1, 2]) == [2, 4]


def test_{name}_processes_every_row() -> None:
    assert {name}(limit=3) == 3
'''


def import_line(module: str, names: list[str]) -> str:
    """`from module import names`, wrapped as ruff format wraps a line that is too long."""
    line = f"from {module} import {', '.join(names)}"
    if len(line) <= LINE_LENGTH:
        return line
    return f"from {module} import (\n" + "".join(f"    {name},\n" for name in names) + ")"


def check_name(name: str, root: Path) -> None:
    if not NAME.match(name):
        raise ConfigError(
            f"NAME '{name}' must be a lowercase Python name: a letter, then letters, digits or "
            "underscores, at most 30 characters (it names the module and the flow function)."
        )
    if keyword.iskeyword(name) or hasattr(builtins, name) or name in TAKEN:
        raise ConfigError(f"NAME '{name}' is a Python or Prefect name the flow would shadow.")
    module = root / "src" / PACKAGE / "flows" / f"{name}.py"
    test = root / "tests" / "flows" / f"test_{name}.py"
    for path in (module, test):
        if path.exists():
            raise ConfigError(f"{path.relative_to(root)} exists: choose another NAME.")
    if name in read_flows(root):
        raise ConfigError(f"{FLOWS_FILE} already has a flow '{name}'.")


def check_schedule(schedule: str, root: Path) -> None:
    definitions = read_yaml(root / "prefect.yaml").get("definitions") or {}
    timezone = (definitions.get("schedule") or {}).get("timezone")
    try:
        CronSchedule(cron=schedule, timezone=timezone)
    except ValidationError:
        raise ConfigError(
            f"SCHEDULE '{schedule}' is not a cron expression: five fields, such as '0 3 * * *'."
        ) from None


def check_after(after: str, root: Path) -> None:
    order = environment_order(read_yaml(root / "prefect.yaml"))
    flows = {d.flow_name for d in read_state(order[0], root).deployments}
    if after not in flows:
        raise ConfigError(
            f"AFTER '{after}' is no flow this repository deploys ({', '.join(sorted(flows))})."
        )


def flow_module(name: str, project: str, after: str | None) -> str:
    signature = "limit: int = 10"
    docstring = "Process `limit` rows."
    if after:
        signature += f", {UPSTREAM_PARAMETER}: str | None = None"
        docstring = (
            "Process `limit` rows, once per Completed run of the upstream flow.\n\n"
            f"    {UPSTREAM_PARAMETER} is that run's id: the trigger in {FLOWS_FILE} passes it.\n"
            "    "
        )
    return FLOW_MODULE.format(
        title=name.replace("_", " ").capitalize(),
        name=name,
        package=PACKAGE,
        flows_file=FLOWS_FILE,
        flow_name=f"{project}-{name.replace('_', '-')}",
        signature=signature,
        docstring=docstring,
    )


def test_module(name: str) -> str:
    module = f"{PACKAGE}.flows.{name}"
    return TEST_MODULE.format(name=name, import_line=import_line(module, [name, "transform"]))


def flows_entry(name: str, schedule: str | None, after: str | None) -> str:
    lines = [f"  {name}:", f"    entrypoint: {PACKAGE}.flows.{name}:{name}"]
    # JSON strings are YAML strings: a cron's `*` or a name's `-` stays a string.
    if schedule:
        lines.append(f"    schedule: {json.dumps(schedule)}")
    if after:
        lines.append(f"    after: {json.dumps(after)}")
    return "\n".join(lines) + "\n"


def with_entry(text: str, entry: str) -> str:
    """flows.yaml's text with the entry added at the end of its `flows:` mapping (the file's
    last key, as the template writes it)."""
    text = EMPTY_FLOWS.sub("flows:", text, count=1)
    if not re.search(r"(?m)^flows:[ \t]*$", text):
        text += "" if text.endswith("\n") or not text else "\n"
        text += "flows:\n"
    return (text if text.endswith("\n") else text + "\n") + entry


def new_flow(name: str, root: Path, *, schedule: str | None, after: str | None) -> list[Path]:
    """Write the flow, its test and its flows.yaml entry; the paths written."""
    if schedule and after:
        raise ConfigError("give SCHEDULE or AFTER, not both: a triggered flow runs on its own.")
    check_name(name, root)
    if schedule:
        check_schedule(schedule, root)
    if after:
        check_after(after, root)
    project = str(read_yaml(root / "prefect.yaml")["name"])
    flows_path = root / FLOWS_FILE
    old = flows_path.read_text(encoding="utf-8") if flows_path.exists() else ""
    new = with_entry(old, flows_entry(name, schedule, after))
    parsed = (yaml.safe_load(new) or {}).get("flows") or {}
    if name not in parsed or set(parsed) - {name} != set(read_flows(root)):
        raise ConfigError(
            f"{FLOWS_FILE}: 'flows:' is not its last key, so the entry cannot be appended; "
            f"add it by hand:\n{flows_entry(name, schedule, after)}"
        )
    files = {
        root / "src" / PACKAGE / "flows" / f"{name}.py": flow_module(name, project, after),
        root / "tests" / "flows" / f"test_{name}.py": test_module(name),
        flows_path: new,
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="new_flow", description=__doc__)
    parser.add_argument("name", help="the flow's module and function name, e.g. orders_cleanup")
    parser.add_argument("--schedule", help="a cron expression, active in the last environment")
    parser.add_argument("--after", help="run after each Completed run of this flow (its name)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    args = parser.parse_args(argv)
    try:
        written = new_flow(args.name, args.root, schedule=args.schedule, after=args.after)
    except ConfigError as error:
        print(f"new-flow: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
