"""Who owns a task tag limit: one project per tag, recorded on the server beside the limit.

Tag limits are server-wide, so two repositories that declare the same tag share one limit.
Prefect stores no owner with a limit: reconcile records it in a Prefect variable,
tag-limit-owner-<tag>, holding {"tag", "project", "limit"}. The sharing rule:

- The project that creates a limit owns it, and only the owner changes its value.
- Another project that declares the same tag with the same value shares it and changes nothing.
- Another project that declares a different value is refused, with both values and the owner
  named: agree on one value and change it in the owner's repository.
- A limit with no owner recorded (made by hand, or before reconcile recorded owners) is claimed
  when it already has the declared value, and refused otherwise.

Each record also names the environment the limit is for, and a global limit reconcile creates
gets one too (global-limit-owner-<name>): `reconcile --prune` deletes only the limits this
project owns in that environment and no longer declares.
"""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectNotFound

OWNER_PREFIX = "tag-limit-owner-"
GLOBAL_OWNER_PREFIX = "global-limit-owner-"


@dataclass(frozen=True)
class Owner:
    project: str
    limit: int


def owner_variable(tag: str, prefix: str = OWNER_PREFIX) -> str:
    """A variable name for the tag: variables allow lowercase letters, digits, - and _ only."""
    return prefix + re.sub(r"[^a-z0-9-]", "_", tag.lower())


def read_owner(client: SyncPrefectClient, tag: str) -> Owner | None:
    variable = client.read_variable_by_name(owner_variable(tag))
    value: Any = variable.value if variable else None
    if not isinstance(value, dict) or value.get("tag") != tag:
        return None
    return Owner(project=str(value["project"]), limit=int(value["limit"]))


def record_owner(
    client: SyncPrefectClient, tag: str, project: str, limit: int, environment: str = ""
) -> None:
    value = {"tag": tag, "project": project, "limit": limit, "environment": environment}
    save_record(client, owner_variable(tag), value, project)


def record_global_owner(
    client: SyncPrefectClient, name: str, project: str, environment: str
) -> None:
    value = {"name": name, "project": project, "environment": environment}
    save_record(client, owner_variable(name, GLOBAL_OWNER_PREFIX), value, project)


def save_record(client: SyncPrefectClient, name: str, value: dict[str, Any], project: str) -> None:
    if client.read_variable_by_name(name) is None:
        client.create_variable(VariableCreate(name=name, value=value, tags=[f"project:{project}"]))
    else:
        client.update_variable(VariableUpdate(name=name, value=value))


def owned_limits(
    client: SyncPrefectClient, project: str, environment: str
) -> tuple[list[str], list[str]]:
    """The tag limits and the global limits this project's reconcile recorded as its own in
    `environment`, by their names on the server."""
    tags, names = [], []
    for variable in client.read_variables():
        value: Any = variable.value
        if not isinstance(value, dict) or f"project:{project}" not in (variable.tags or []):
            continue
        if value.get("project") != project or value.get("environment") != environment:
            continue
        if variable.name.startswith(OWNER_PREFIX) and value.get("tag"):
            tags.append(str(value["tag"]))
        elif variable.name.startswith(GLOBAL_OWNER_PREFIX) and value.get("name"):
            names.append(str(value["name"]))
    return sorted(tags), sorted(names)


def forget_owner(client: SyncPrefectClient, name: str, prefix: str = OWNER_PREFIX) -> None:
    with suppress(ObjectNotFound):
        client.delete_variable_by_name(owner_variable(name, prefix))


def refusal(tag: str, project: str, limit: int, current: int, owner: Owner | None) -> str:
    """Why reconcile will not change a tag limit it does not own, and what to do instead."""
    if owner is None:
        return (
            f"tag limit '{tag}' is {current} on the server with no owner recorded (made by hand "
            f"or by another tool); project '{project}' declares {limit}. Set it to {limit} or "
            f"delete it (prefect concurrency-limit delete {tag}), then reconcile again."
        )
    return (
        f"tag limit '{tag}' is owned by project '{owner.project}' at {current}; project "
        f"'{project}' declares {limit}. A shared tag has one limit: declare {current} in "
        f"config/orchestration.yaml, or change it in '{owner.project}', which owns it."
    )
