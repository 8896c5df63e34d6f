"""The team's flows of flows.yaml, as the deployments prefect.yaml would hold for them.

prefect.yaml is the template's: its `definitions: shared` holds what every flow's deployments
share (version, concurrency) and each environment's first deployment its tags and work pool.
flows.yaml is the team's: one short entry per flow. Each entry becomes one deployment per
environment, named after it as the template's own are, so a release that changes the shared
defaults changes every flow's deployments and never conflicts with the team's entries.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

from .._internal.config import ConfigError, read_yaml

FLOWS_FILE = "flows.yaml"
ENV_TAG_PREFIX = "env:"
ENTRY_KEYS = {"entrypoint", "name", "schedule", "after", "parameters", "tags", "description"}
# The parameter a downstream flow receives: the id of the run that triggered it.
UPSTREAM_PARAMETER = "upstream_flow_run"


def environment_order(project: dict[str, Any]) -> list[str]:
    """The environments in prefect.yaml's order, which is the promotion order."""
    order: list[str] = []
    for spec in project.get("deployments") or []:
        for tag in spec.get("tags") or []:
            name = tag.removeprefix(ENV_TAG_PREFIX)
            if tag.startswith(ENV_TAG_PREFIX) and name not in order:
                order.append(name)
    return order


def read_flows(root: Path) -> dict[str, dict[str, Any]]:
    """flows.yaml's entries by name; none when the file is missing (a repository from before
    it existed gets it on its next copier update)."""
    path = root / FLOWS_FILE
    if not path.exists():
        return {}
    flows = read_yaml(path).get("flows") or {}
    if not isinstance(flows, dict) or not all(isinstance(e, dict) for e in flows.values()):
        raise ConfigError(f"{FLOWS_FILE}: 'flows' must map each flow's name to its settings.")
    return {str(name): entry for name, entry in flows.items()}


def environment_defaults(project: dict[str, Any], environment: str) -> dict[str, Any]:
    """The tags and work pool of the environment's first deployment in prefect.yaml."""
    for spec in project.get("deployments") or []:
        if ENV_TAG_PREFIX + environment in (spec.get("tags") or []):
            return {"tags": list(spec["tags"]), "work_pool": spec.get("work_pool") or {}}
    raise ConfigError(f"prefect.yaml has no deployment tagged 'env:{environment}'.")


def downstream_trigger(upstream_flow: str, environment: str) -> dict[str, Any]:
    """Start the deployment after each Completed run of upstream_flow's deployment in the same
    environment, as prefect.yaml's publish deployment starts after the ETL's: never after a
    smoke run (named smoke-<env>, ops/smoke.py; Prefect negates a label pattern with "!")."""
    return {
        "type": "event",
        "expect": ["prefect.flow-run.Completed"],
        "match": {"prefect.resource.id": "prefect.flow-run.*", "prefect.resource.name": "!smoke-*"},
        "match_related": [
            {"prefect.resource.role": "flow", "prefect.resource.name": upstream_flow},
            {"prefect.resource.role": "deployment", "prefect.resource.name": environment},
        ],
        "parameters": {UPSTREAM_PARAMETER: "{{ event.resource.id }}"},
    }


def deployment_name(entry: dict[str, Any], environment: str, last: str) -> str:
    """The environment's name, unless the entry keeps a name of its own: a repository adopted
    with deployments already running keeps theirs (`name: nightly` names the last
    environment's; a mapping `{prod: nightly, dev: nightly-dev}` names any environment's)."""
    names = entry.get("name")
    if isinstance(names, dict):
        return str(names.get(environment) or environment)
    return str(names) if names and environment == last else environment


def schedule_of(entry: dict[str, Any], timezone: str | None, active: bool) -> dict[str, Any]:
    """A cron string in the shared timezone, or a mapping as prefect.yaml takes one (cron,
    interval or rrule, with its own timezone when it has one)."""
    given = entry["schedule"]
    schedule = dict(given) if isinstance(given, dict) else {"cron": given}
    if timezone and "timezone" not in schedule and "rrule" not in schedule:
        schedule["timezone"] = timezone
    return {**schedule, "active": active}


def flow_deployment(
    entry: dict[str, Any], environment: str, project: dict[str, Any], last: str
) -> dict[str, Any]:
    """One flows.yaml entry's deployment in one environment."""
    definitions = project.get("definitions") or {}
    defaults = environment_defaults(project, environment)
    spec: dict[str, Any] = deepcopy(definitions.get("shared") or {})
    spec.update(
        name=deployment_name(entry, environment, last),
        entrypoint=entry.get("entrypoint"),
        parameters=deepcopy(entry.get("parameters") or {}),
        tags=[*defaults["tags"], *(entry.get("tags") or [])],
        work_pool=deepcopy(defaults["work_pool"]),
        schedules=[],
    )
    if entry.get("description"):
        spec["description"] = entry["description"]
    if entry.get("schedule"):
        timezone = (definitions.get("schedule") or {}).get("timezone")
        spec["schedules"] = [schedule_of(entry, timezone, environment == last)]
    if entry.get("after"):
        spec["triggers"] = [downstream_trigger(str(entry["after"]), environment)]
    return spec


def team_deployments(project: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """Every flows.yaml entry's deployments, environment by environment."""
    flows = read_flows(root)
    order = environment_order(project)
    described = {name: with_description(entry, root) for name, entry in flows.items()}
    return [
        flow_deployment(entry, environment, project, order[-1])
        for environment in order
        for entry in described.values()
    ]


def with_description(entry: dict[str, Any], root: Path) -> dict[str, Any]:
    """The entry with a description: its own, else its flow's docstring, else its entrypoint.
    prefect deploy stores a docstring-less flow's missing description as the text 'None'."""
    if entry.get("description") or not entry.get("entrypoint"):
        return entry
    from prefect.flows import load_flow_from_entrypoint

    entrypoint = str(entry["entrypoint"])
    try:
        path = str(root / entrypoint) if ".py:" in entrypoint else entrypoint
        description = load_flow_from_entrypoint(path).description
    except Exception:  # `ops validate` reports an entrypoint that does not load
        return entry
    return {**entry, "description": description or entrypoint}


def all_deployments(project: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """prefect.yaml's deployments, then the team's flows'."""
    return [*(project.get("deployments") or []), *team_deployments(project, root)]
