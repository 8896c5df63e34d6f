"""The automations config/orchestration.yaml declares, as the server should hold them.

Each one is named <project>/<env>/<key>, tagged project:<project> and env:<env> (so reconcile
finds its own and never another project's), and scoped to this project's flow runs in the
environment: reconcile adds the related-resource match on both tags to an event trigger, or
with `scope: work-pools` a match on the names of the environment's work pools (their events
carry no tags). An action `block_document: alerts` sends to the environment's alerts target
(ops/alerts.py), or does nothing while it has none.
"""

from __future__ import annotations

import json
from copy import deepcopy
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.events.schemas.automations import Automation as ServerAutomation
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

from .._internal.config import ConfigError
from .alerts import TARGET_REFERENCE, Target, notification_text
from .state import Automation, DesiredState

# Keys of config/orchestration.yaml's automation entries that are ours, not Prefect's.
LOCAL_KEYS = {"environments", "scope"}
# What `scope:` narrows an event trigger to: this project's flow runs in the environment (tags),
# or the environment's work pools (by name: pool events carry no tags).
SCOPES = ("flow-runs", "work-pools")
# The target's id in a plan made before its block is saved: the automation then differs from
# any saved one, and its apply resolves the real id once the block exists.
UNSAVED = UUID(int=0)


def scoped_trigger(
    trigger: dict[str, Any], state: DesiredState, scope: str = "flow-runs"
) -> dict[str, Any]:
    trigger = deepcopy(trigger)
    if trigger.get("type", "event") != "event":
        return trigger  # compound and sequence triggers: scope their event triggers yourself
    if scope == "work-pools":
        match = dict(trigger.get("match") or {})
        match["prefect.resource.name"] = sorted(state.work_pools)
        return {**trigger, "match": match}
    related = trigger.get("match_related") or []
    related = [related] if isinstance(related, dict) else list(related)
    related += [
        {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{tag}"}
        for tag in (state.project_tag, state.environment_tag)
    ]
    return {**trigger, "match_related": related}


def target_id(client: SyncPrefectClient, target: Target) -> UUID:
    try:
        block = client.read_block_document_by_name(
            name=target.name, block_type_slug=target.block_type
        )
    except ObjectNotFound:
        return UNSAVED
    return block.id


def resolve_action(
    client: SyncPrefectClient,
    action: dict[str, Any],
    automation: Automation,
    state: DesiredState,
    target: Target | None,
) -> dict[str, Any]:
    """`block_document: <block-type-slug>/<name>` stands for the block's id, which differs
    from one server to the next; `block_document: alerts` for the environment's target."""
    action = dict(action)
    reference = action.pop("block_document", None)
    if reference is None:
        return action
    if reference == TARGET_REFERENCE:
        if target is None:
            return {"type": "do-nothing"}  # records the firing; reconcile warned
        resolved = notification_text(action, state)
        return {**resolved, "block_document_id": str(target_id(client, target))}
    block_type, _, name = str(reference).partition("/")
    try:
        block = client.read_block_document_by_name(name=name, block_type_slug=block_type)
    except ObjectNotFound:
        raise ConfigError(
            f"automation '{automation.key}': block '{reference}' does not exist on this server. "
            "Create it first (README.md, 'Alerts')."
        ) from None
    return {**action, "block_document_id": str(block.id)}


def desired_automation(
    client: SyncPrefectClient,
    automation: Automation,
    state: DesiredState,
    target: Target | None = None,
) -> AutomationCore:
    spec = {k: v for k, v in automation.spec.items() if k not in LOCAL_KEYS}
    scope = str(automation.spec.get("scope") or "flow-runs")
    if scope not in SCOPES:
        raise ConfigError(
            f"config/orchestration.yaml: automation '{automation.key}': scope '{scope}' is "
            f"none of {', '.join(SCOPES)}."
        )
    spec["trigger"] = scoped_trigger(spec["trigger"], state, scope)
    spec["actions"] = [
        resolve_action(client, action, automation, state, target)
        for action in spec.get("actions") or []
    ]
    try:
        return AutomationCore.model_validate(
            {
                **spec,
                "name": automation.name,
                "tags": sorted({state.project_tag, state.environment_tag, *spec.get("tags", [])}),
            }
        )
    except ValidationError as error:
        raise ConfigError(
            f"config/orchestration.yaml: automation '{automation.key}' is invalid:\n{error}"
        ) from None


def plain(value: Any) -> Any:
    """value with sets as sorted lists: a trigger's `expect` is a set, whose order changes from
    one process to the next (string hashing is randomised), so dumping it as is would report
    a change that is not one."""
    if isinstance(value, set | frozenset):
        return sorted((plain(item) for item in value), key=str)
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def automation_fields(automation: AutomationCore) -> dict[str, Any]:
    """What reconcile compares: everything but the ids the server assigns."""
    dumped = automation.model_dump(exclude={"id", "owner_resource"})
    return json.loads(json.dumps(plain(dumped), default=str))


def canonical(automation: AutomationCore) -> str:
    return json.dumps(automation_fields(automation), sort_keys=True)


def project_automations(
    client: SyncPrefectClient, state: DesiredState
) -> dict[str, ServerAutomation]:
    """This project's automations in this environment, by name."""
    wanted = {state.project_tag, state.environment_tag}
    return {a.name: a for a in client.read_automations() if wanted <= set(a.tags)}


def diff_automation(
    desired: AutomationCore, current: ServerAutomation | None
) -> tuple[str, list[str]]:
    """("create" | "update" | "unchanged", the top-level fields that differ)."""
    if current is None:
        return "create", []
    have = json.loads(canonical(current))
    want = json.loads(canonical(desired))
    changed = [
        key
        for key in want
        if json.dumps(want[key], sort_keys=True) != json.dumps(have.get(key), sort_keys=True)
    ]
    return ("update" if changed else "unchanged"), changed
