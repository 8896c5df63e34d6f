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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate

OWNER_PREFIX = "tag-limit-owner-"


@dataclass(frozen=True)
class Owner:
    project: str
    limit: int


def owner_variable(tag: str) -> str:
    """A variable name for the tag: variables allow lowercase letters, digits, - and _ only."""
    return OWNER_PREFIX + re.sub(r"[^a-z0-9-]", "_", tag.lower())


def read_owner(client: SyncPrefectClient, tag: str) -> Owner | None:
    variable = client.read_variable_by_name(owner_variable(tag))
    value: Any = variable.value if variable else None
    if not isinstance(value, dict) or value.get("tag") != tag:
        return None
    return Owner(project=str(value["project"]), limit=int(value["limit"]))


def record_owner(client: SyncPrefectClient, tag: str, project: str, limit: int) -> None:
    name = owner_variable(tag)
    value = {"tag": tag, "project": project, "limit": limit}
    if client.read_variable_by_name(name) is None:
        client.create_variable(VariableCreate(name=name, value=value, tags=[f"project:{project}"]))
    else:
        client.update_variable(VariableUpdate(name=name, value=value))


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
