"""What `ops validate` says about the repository's flows: every flow module has a test and
deployments, every flow is deployed in every environment with the shared defaults, and each
flows.yaml entry is complete.

A team that writes a flow and its deployment entries by hand gets here the list `make new-flow`
would have made right: one line per problem, naming the file to change.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from collections import Counter
from pathlib import Path
from typing import Any

from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import Flow
from pydantic import ValidationError

from .._internal.config import ConfigError
from .._internal.provenance import record_commit
from .flows import (
    ENTRY_KEYS,
    ENV_TAG_PREFIX,
    FLOWS_FILE,
    UPSTREAM_PARAMETER,
    environment_defaults,
    environment_order,
    read_flows,
    team_deployments,
)
from .prefect_private import RawScheduleConfig
from .state import load_flow

PACKAGE = __package__.rpartition(".")[0]
FLOWS_PACKAGE = f"{PACKAGE}.flows"


def check_entrypoint(entrypoint: str, where: str) -> list[str]:
    """A module path whose module this environment can import.

    A file path (src/pkg/flows/etl.py:etl) makes Prefect load the file as a top-level module
    (`etl`): tasks pickled for Dask or Ray workers then name a module no worker can import.
    """
    module, _, function = entrypoint.rpartition(":")
    if module.endswith(".py") or "/" in module:
        dotted = module.removeprefix("src/").removesuffix(".py").replace("/", ".")
        return [
            f"{where}: entrypoint '{entrypoint}' is a file path; use the module path "
            f"'{dotted}:{function}' so Dask and Ray workers can import its tasks"
        ]
    try:
        found = module and function and importlib.util.find_spec(module)
    except ImportError:
        found = None
    if not found:
        return [f"{where}: entrypoint '{entrypoint}' names no module this package provides"]
    return []


def loaded(entrypoint: str, root: Path) -> Flow[..., Any] | None:
    """The flow an importable entrypoint names, or None (check_entrypoint says why)."""
    if check_entrypoint(entrypoint, ""):
        return None
    try:
        flow = load_flow(entrypoint, root)
    except Exception:  # a missing function or a module that fails to import
        return None
    return flow if isinstance(flow, Flow) else None


def parameters_of(flow: Flow[..., Any]) -> set[str]:
    return set(inspect.signature(flow.fn).parameters)


def entry_problems(
    name: str, entry: dict[str, Any], project: dict[str, Any], root: Path, flows: set[str]
) -> list[str]:
    """A flows.yaml entry's own problems; `flows` are the flow names the repository deploys."""
    where = f"{FLOWS_FILE}: flow '{name}'"
    problems = [
        f"{where}: unknown key '{key}' (known: {', '.join(sorted(ENTRY_KEYS))})"
        for key in sorted(set(entry) - ENTRY_KEYS)
    ]
    entrypoint = str(entry.get("entrypoint") or "")
    if not entrypoint:
        return [*problems, f"{where} has no entrypoint, such as '{FLOWS_PACKAGE}.{name}:{name}'"]
    problems += check_entrypoint(entrypoint, where)
    flow = loaded(entrypoint, root)
    if flow is None and not problems:
        problems.append(f"{where}: '{entrypoint}' is not a @flow of its module")
    module = entrypoint.partition(":")[0]
    if module.startswith(FLOWS_PACKAGE + "."):
        test = Path("tests") / "flows" / f"test_{module.rpartition('.')[2]}.py"
        if not (root / test).exists():
            problems.append(f"{where} has no test: write {test} (make new-flow writes one)")
    if entry.get("schedule") and entry.get("after"):
        problems.append(
            f"{where} has both a schedule and 'after': a triggered deployment is never "
            "smoke-run on its own, so give it one or the other"
        )
    if entry.get("schedule"):
        problems += schedule_problems(entry["schedule"], project, where)
    names = entry.get("name")
    if names is not None and not isinstance(names, str | dict):
        problems.append(f"{where}: name must be a deployment name or map environments to names")
    if after := entry.get("after"):
        if after not in flows:
            problems.append(
                f"{where} runs after '{after}', which no deployment runs "
                f"(flows: {', '.join(sorted(flows))})"
            )
        if flow is not None and UPSTREAM_PARAMETER not in parameters_of(flow):
            problems.append(
                f"{where} runs after '{after}', so its flow must take a "
                f"'{UPSTREAM_PARAMETER}: str | None = None' parameter (the triggering run's id)"
            )
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        problems.append(f"{where}: parameters must be a mapping")
    elif flow is not None:
        accepted = parameters_of(flow)
        for key in sorted(set(parameters) - accepted):
            problems.append(
                f"{where}: parameter '{key}' is not one of {flow.name}'s "
                f"({', '.join(sorted(accepted)) or 'none'})"
            )
    tags = entry.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        problems.append(f"{where}: tags must be a list of strings")
    return problems


def schedule_problems(schedule: Any, project: dict[str, Any], where: str) -> list[str]:
    """A cron string (in the shared timezone) or a prefect.yaml schedule mapping."""
    if not isinstance(schedule, dict):
        timezone = ((project.get("definitions") or {}).get("schedule") or {}).get("timezone")
        try:
            CronSchedule(cron=str(schedule), timezone=timezone)
        except ValidationError as error:
            return [f"{where}: schedule '{schedule}' is not a valid cron: {error}"]
        return []
    try:
        RawScheduleConfig.model_validate(schedule)
        if not {"cron", "interval", "rrule"} & set(schedule):
            raise ValueError("it needs one of cron, interval or rrule")
    except (ValidationError, ValueError) as error:
        return [f"{where}: schedule {schedule} is invalid: {error}"]
    return []


def defined_flows() -> dict[str, list[Flow[..., Any]]]:
    """The @flow objects each module of the flows package defines, by module path."""
    package = importlib.import_module(FLOWS_PACKAGE)
    found = {}
    for info in pkgutil.iter_modules(package.__path__, FLOWS_PACKAGE + "."):
        module = importlib.import_module(info.name)
        found[info.name] = [
            value
            for value in vars(module).values()
            if isinstance(value, Flow) and value.fn.__module__ == info.name
        ]
    return found


def deployment_problems(
    deployments: list[dict[str, Any]], project: dict[str, Any], order: list[str]
) -> list[str]:
    """Each flow deployed in every environment, on the environment's pool, scheduled only in
    the last, and selectable by `prefect deploy --name`."""
    problems = []
    environments: dict[str, list[str]] = {}
    names: Counter[tuple[str, str]] = Counter()
    for spec in deployments:
        entrypoint = str(spec.get("entrypoint") or "")
        envs = [
            t.removeprefix(ENV_TAG_PREFIX)
            for t in spec.get("tags") or []
            if t.startswith(ENV_TAG_PREFIX)
        ]
        environments.setdefault(entrypoint, []).extend(envs)
        for env in envs:
            where = f"deployment '{spec.get('name')}' of {entrypoint} in '{env}'"
            names[(entrypoint.rpartition(":")[2], str(spec.get("name")))] += 1
            if env not in order:
                continue
            pool = (environment_defaults(project, env)["work_pool"] or {}).get("name")
            if (spec.get("work_pool") or {}).get("name") != pool:
                problems.append(
                    f"{where} runs on work pool '{(spec.get('work_pool') or {}).get('name')}', "
                    f"not the environment's '{pool}'"
                )
            active = any(s.get("active", True) for s in spec.get("schedules") or [])
            if active and env != order[-1]:
                problems.append(
                    f"{where} has an active schedule: only the last environment "
                    f"('{order[-1]}') runs on schedule"
                )
    for entrypoint, envs in environments.items():
        for env in order:
            if env not in envs:
                problems.append(f"{entrypoint} has no deployment in '{env}'")
    for (function, name), count in sorted(names.items()):
        if count > 1:
            problems.append(
                f"{count} deployments are selected by `prefect deploy --name {function}/{name}`: "
                "give their flows' functions different names"
            )
    return problems


def flow_problems(project: dict[str, Any], root: Path) -> list[str]:
    """Every problem with the repository's flows, one line each."""
    try:
        entries = read_flows(root)
    except ConfigError as error:
        return [str(error)]
    order = environment_order(project)
    declared = project.get("deployments") or []
    by_entrypoint = {str(d.get("entrypoint")) for d in declared}
    flows = {f.name for e in by_entrypoint if (f := loaded(e, root)) is not None}
    flows |= {
        f.name for entry in entries.values() if (f := loaded(str(entry.get("entrypoint")), root))
    }
    problems = []
    for name, entry in entries.items():
        problems += entry_problems(name, entry, project, root, flows)
        if entry.get("entrypoint") in by_entrypoint:
            problems.append(
                f"{FLOWS_FILE}: flow '{name}' ({entry['entrypoint']}) is also deployed by "
                "prefect.yaml: keep one of the two"
            )
    if problems or not order:
        return problems  # the deployments below would only repeat them
    deployments = [*declared, *team_deployments(project, root)]
    problems += deployment_problems(deployments, project, order)
    deployed = {str(d.get("entrypoint")).partition(":")[0] for d in deployments}
    for module, defined in defined_flows().items():
        path = Path("src", *module.split(".")).with_suffix(".py")
        for flow in defined:
            if module not in deployed:
                problems.append(
                    f"{path}: flow '{flow.name}' has no deployment: add it to {FLOWS_FILE} "
                    "(make new-flow writes the entry)"
                )
            if record_commit not in flow.on_running_hooks:
                problems.append(
                    f"{path}: flow '{flow.name}' records no commit: give it "
                    "`on_running=[record_commit]` (smoke runs and promotion need it)"
                )
    return problems
