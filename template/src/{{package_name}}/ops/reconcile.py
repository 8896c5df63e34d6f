"""Bring a Prefect server to the state this repository declares for one environment.

Plan first, then apply: every change is listed before it is made, a dry run stops after the
plan, and a second run finds nothing to do. Only objects named in config/ and prefect.yaml are
created or updated; --prune also deletes this environment's deployments and automations that
are no longer declared, found by their project:<name> and env:<env> tags, and the limits this
project recorded as its own in this environment. Limits are per environment (<name>-<env>,
_internal/config.py). Other projects' objects are never touched: a task tag limit, server-wide,
has one owning project and is shared or refused by the rule in ops/ownership.py, never
overwritten.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.blocks.core import Block
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.exceptions import ObjectNotFound

from .._internal.config import read_yaml
from .alerts import Target, desired_target, secret_name
from .automations import desired_automation, diff_automation, project_automations
from .deployments import (
    deploy_environment,
    diff_deployment,
    flow_names,
    project_deployments,
)
from .flows import all_deployments, team_deployments
from .ownership import (
    GLOBAL_OWNER_PREFIX,
    forget_owner,
    owned_limits,
    read_owner,
    record_global_owner,
    record_owner,
    refusal,
)
from .prefect_cli import run_prefect
from .results import desired_block, fields_of, saved_fields, undeclared_warning
from .state import DesiredState


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str  # create | update | delete
    detail: str
    # None for deployments: `prefect deploy` applies all of them in one call.
    apply: Callable[[], None] | None = None
    deploy_name: str = ""

    def __str__(self) -> str:
        return f"{self.action:<7} {self.kind:<12} {self.name}  {self.detail}".rstrip()


def plan_work_pools(client: SyncPrefectClient, state: DesiredState) -> list[Change]:
    changes = []
    for name, template in state.work_pools.items():
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            create = WorkPoolCreate(
                name=name, type=state.work_pool_type, base_job_template=template
            )
            changes.append(
                Change(
                    "work pool",
                    name,
                    "create",
                    f"type {state.work_pool_type}",
                    lambda create=create: client.create_work_pool(create),
                )
            )
            continue
        if pool.type != state.work_pool_type:
            raise SystemExit(
                f"work pool '{name}' exists with type '{pool.type}', not "
                f"'{state.work_pool_type}': delete it or rename the pool in prefect.yaml."
            )
        if pool.base_job_template != template:
            update = WorkPoolUpdate(base_job_template=template)
            changes.append(
                Change(
                    "work pool",
                    name,
                    "update",
                    "base job template",
                    lambda name=name, update=update: client.update_work_pool(name, update),
                )
            )
    return changes


def plan_tag_limits(client: SyncPrefectClient, state: DesiredState) -> list[Change]:
    """Create or update the limits this project owns; share, claim or refuse the others."""
    changes = []
    for tag, limit in state.tag_limits.items():
        try:
            current = client.read_concurrency_limit_by_tag(tag).concurrency_limit
        except ObjectNotFound:
            current = None
        owner = read_owner(client, tag)
        ours = current is None or (owner is not None and owner.project == state.project)
        if not ours and current != limit:
            raise SystemExit(refusal(tag, state.project, limit, current, owner))
        if not ours and owner is not None:
            continue  # shared with its owner, at the same value
        if current is None:
            detail = f"limit {limit}"
        elif current != limit:
            detail = f"{current} -> {limit}"
        elif owner is None:
            detail = f"owner -> {state.project}"  # unowned, and already the declared value
        else:
            continue
        changes.append(
            Change(
                "tag limit",
                tag,
                "create" if current is None else "update",
                detail,
                lambda tag=tag, limit=limit: set_tag_limit(client, tag, limit, state),
            )
        )
    return changes


def set_tag_limit(client: SyncPrefectClient, tag: str, limit: int, state: DesiredState) -> None:
    client.create_concurrency_limit(tag, limit)  # creates or updates
    record_owner(client, tag, state.project, limit, state.environment)


def create_global_limit(
    client: SyncPrefectClient, create: GlobalConcurrencyLimitCreate, state: DesiredState
) -> None:
    client.create_global_concurrency_limit(create)
    record_global_owner(client, create.name, state.project, state.environment)


def plan_limit_pruning(
    client: SyncPrefectClient, state: DesiredState, *, prune: bool
) -> list[Change]:
    """Deletions of the limits this project owns in this environment and no longer declares
    (a renamed or removed limit); with prune only, else a note for each."""
    tags, names = owned_limits(client, state.project, state.environment)
    declared_globals = {want.name for want in state.global_limits}
    stale = [("tag limit", tag) for tag in tags if tag not in state.tag_limits]
    stale += [("global limit", name) for name in names if name not in declared_globals]
    changes = []
    for kind, name in stale:
        if not prune:
            print(f"  note: {kind} {name} is not in config/orchestration.yaml (--prune deletes it)")
            continue
        delete = delete_tag_limit if kind == "tag limit" else delete_global_limit
        changes.append(
            Change(
                kind,
                name,
                "delete",
                "not in config/orchestration.yaml",
                lambda delete=delete, name=name: delete(client, name),
            )
        )
    return changes


def delete_tag_limit(client: SyncPrefectClient, tag: str) -> None:
    with suppress(ObjectNotFound):  # deleted by hand meanwhile
        client.delete_concurrency_limit_by_tag(tag)
    forget_owner(client, tag)


def delete_global_limit(client: SyncPrefectClient, name: str) -> None:
    with suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(name)
    forget_owner(client, name, GLOBAL_OWNER_PREFIX)


def plan_global_limits(client: SyncPrefectClient, state: DesiredState) -> list[Change]:
    changes = []
    for want in state.global_limits:
        try:
            have = client.read_global_concurrency_limit_by_name(want.name)
        except ObjectNotFound:
            create = GlobalConcurrencyLimitCreate(
                name=want.name, limit=want.limit, slot_decay_per_second=want.slot_decay_per_second
            )
            changes.append(
                Change(
                    "global limit",
                    want.name,
                    "create",
                    f"limit {want.limit}",
                    lambda create=create: create_global_limit(client, create, state),
                )
            )
            continue
        if (have.limit, have.slot_decay_per_second) != (want.limit, want.slot_decay_per_second):
            update = GlobalConcurrencyLimitUpdate(
                limit=want.limit, slot_decay_per_second=want.slot_decay_per_second
            )
            changes.append(
                Change(
                    "global limit",
                    want.name,
                    "update",
                    f"limit {have.limit} -> {want.limit}, "
                    f"decay {have.slot_decay_per_second} -> {want.slot_decay_per_second}",
                    lambda name=want.name, update=update: client.update_global_concurrency_limit(
                        name, update
                    ),
                )
            )
    return changes


def plan_result_storage(state: DesiredState) -> list[Change]:
    """The environment's results block, when config/<env>.yaml declares one; a warning when
    it declares none and the runtime's flow runs take their disk with them."""
    if not state.result_storage:
        if warning := undeclared_warning(state.environment, state.work_pool_type):
            print(f"  warning: {warning}", file=sys.stderr)
        return []
    slug, block = desired_block(state.project, state.environment, state.result_storage)
    return block_change(slug, block, "results of the cached tasks")


def block_change(slug: str, block: Block, detail: str, *, secrets: bool = False) -> list[Change]:
    """Saving block under slug (`<type>/<name>`), unless the server holds it as it is; with
    secrets, a change of a secret value counts too (ops/results.py fields_of)."""
    saved = saved_fields(slug, secrets=secrets)
    if saved == fields_of(block, secrets=secrets):
        return []
    name = slug.partition("/")[2]
    return [
        Change(
            "block",
            slug,
            "create" if saved is None else "update",
            detail,
            lambda: block.save(name, overwrite=True),
        )
    ]


def plan_alerts_target(state: DesiredState) -> tuple[list[Change], Target | None]:
    """The environment's alerts target block, from its secret; a warning when it has none."""
    target, warning = desired_target(state)
    if target is None:
        # A deploy is refused before this (ops/preflight.py); a plan says it would be.
        if state.alerts_required:
            warning += f" config/{state.environment}.yaml requires one: a deploy is refused."
        print(f"  warning: {warning}", file=sys.stderr)
        return [], None
    # The detail names the secret, never its value.
    detail = f"alerts target, from the secret '{secret_name(state)}'"
    return block_change(target.slug, target.block, detail, secrets=True), target


def plan_deployments(
    client: SyncPrefectClient, state: DesiredState, root: Path, *, prune: bool
) -> tuple[list[Change], int]:
    """Changes to this environment's deployments, and how many are already up to date."""
    changes, unchanged = [], 0
    for deployment in state.deployments:
        action, fields = diff_deployment(client, deployment, state, root)
        if action == "unchanged":
            unchanged += 1
            continue
        changes.append(
            Change(
                "deployment",
                deployment.full_name,
                action,
                ", ".join(fields),
                deploy_name=deployment.deploy_name,
            )
        )
    declared = {d.full_name for d in state.deployments}
    existing = project_deployments(client, state)
    flows = flow_names(client, existing)
    for current in existing:
        name = f"{flows[current.flow_id]}/{current.name}"
        if name in declared:
            continue
        if not prune:
            undeclared = "is not in prefect.yaml or flows.yaml"
            print(f"  note: deployment {name} {undeclared} (--prune deletes it)")
            continue
        changes.append(
            Change(
                "deployment",
                name,
                "delete",
                "not in prefect.yaml or flows.yaml",
                lambda current=current: delete_deployment(client, current.id),
            )
        )
    return changes, unchanged


def delete_deployment(client: SyncPrefectClient, deployment_id: UUID) -> None:
    # The automations its triggers created go with it.
    client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
    client.delete_deployment(deployment_id)


def plan_automations(
    client: SyncPrefectClient,
    state: DesiredState,
    *,
    prune: bool,
    target: Target | None = None,
) -> tuple[list[Change], int]:
    changes, unchanged = [], 0
    existing = project_automations(client, state)
    for automation in state.automations:
        desired = desired_automation(client, automation, state, target)
        current = existing.get(automation.name)
        # Built again when applied: a target block saved just before then has its id.
        applied = partial(desired_automation, client, automation, state, target)
        action, fields = diff_automation(desired, current)
        if action == "unchanged":
            unchanged += 1
        elif current is None:
            changes.append(
                Change(
                    "automation",
                    automation.name,
                    "create",
                    f"on {', '.join(sorted(getattr(desired.trigger, 'expect', [])))}",
                    lambda applied=applied: client.create_automation(applied()),
                )
            )
        else:
            changes.append(
                Change(
                    "automation",
                    automation.name,
                    "update",
                    ", ".join(fields),
                    lambda i=current.id, applied=applied: client.update_automation(i, applied()),
                )
            )
    declared = {a.name for a in state.automations}
    for name, current in sorted(existing.items()):
        if name in declared:
            continue
        if not prune:
            print(f"  note: automation {name} is not in config/ (--prune deletes it)")
            continue
        changes.append(
            Change(
                "automation",
                name,
                "delete",
                "not in config/orchestration.yaml",
                lambda i=current.id: client.delete_automation(i),
            )
        )
    return changes, unchanged


@contextmanager
def prefect_file(
    root: Path, prebuilt_image: bool, deployments: list[dict[str, Any]] | None = None
) -> Iterator[list[str]]:
    """`prefect deploy` arguments for the project file: prefect.yaml itself, or a copy with the
    team's flows of flows.yaml added, without its build and push steps when CI has already
    built and pushed the image for IMAGE_TAG, and with other deployments (a request's
    previews) instead when given."""
    team = team_deployments(read_yaml(root / "prefect.yaml"), root) if deployments is None else []
    if not prebuilt_image and deployments is None and not team:
        yield []
        return
    project = yaml.safe_load((root / "prefect.yaml").read_text(encoding="utf-8"))
    if prebuilt_image:
        project.update(build=None, push=None)
    project["deployments"] = (
        deployments if deployments is not None else all_deployments(project, root)
    )
    with tempfile.NamedTemporaryFile(
        "w", dir=root, prefix=".prefect-prebuilt-", suffix=".yaml", encoding="utf-8"
    ) as copy:
        yaml.safe_dump(project, copy, sort_keys=False)
        copy.flush()
        yield ["--prefect-file", copy.name]


def deploy(
    root: Path,
    names: list[str],
    *,
    prebuilt_image: bool = False,
    deployments: list[dict[str, Any]] | None = None,
) -> None:
    """Run `prefect deploy` for these deployments: it resolves prefect.yaml's steps itself.
    In this process (ops/prefect_cli.py), so it deploys to the API this process talks to."""
    args = ["--no-prompt", "deploy"]
    for name in names:
        args += ["--name", name]
    project_file = prefect_file(root, prebuilt_image, deployments)
    with deploy_environment(root), project_file as file_args:
        code, output = run_prefect(args + file_args, root)
    if code != 0:
        print(output, file=sys.stderr)
        raise SystemExit(
            f"prefect deploy exited {code}: pools, limits and automations are "
            "applied, deployments may be in part, nothing was deleted. Fix and run it again."
        )
    print(f"Deployed {', '.join(names)}.")


def reconcile(
    state: DesiredState,
    root: Path,
    *,
    dry_run: bool,
    skip_deploy: bool,
    prune: bool = False,
    prebuilt_image: bool = False,
) -> int:
    """Print the plan, then apply it unless dry_run; returns the number of changes.

    Order: work pools, limits and the results block (deployments need them), automations,
    deployments, deletions last, so a failure part-way never leaves a deployment without its
    pool.
    """
    print(f"Plan for '{state.environment}':")
    with get_client(sync_client=True) as client, deploy_environment(root):
        changes = (
            plan_work_pools(client, state)
            + plan_tag_limits(client, state)
            + plan_global_limits(client, state)
            + plan_result_storage(state)
            + plan_limit_pruning(client, state, prune=prune)
        )
        # Before the automations, which send to it.
        target_changes, target = plan_alerts_target(state)
        changes += target_changes
        automation_changes, unchanged = plan_automations(client, state, prune=prune, target=target)
        changes += automation_changes
        if not skip_deploy:
            deployment_changes, unchanged_deployments = plan_deployments(
                client, state, root, prune=prune
            )
            changes += deployment_changes
            unchanged += unchanged_deployments
        for change in changes:
            print(f"  {change}")
        if not changes:
            print(f"No changes: '{state.environment}' is up to date.")
            return 0
        if unchanged:
            print(f"  ({unchanged} deployment(s) and automation(s) unchanged)")
        if dry_run:
            print(f"Dry run: {len(changes)} change(s) planned, nothing applied.")
            return len(changes)
        for change in changes:
            if change.apply is not None and change.action != "delete":
                change.apply()
        if to_deploy := [c.deploy_name for c in changes if c.deploy_name]:
            deploy(root, to_deploy, prebuilt_image=prebuilt_image)
        for change in changes:
            if change.apply is not None and change.action == "delete":
                change.apply()
    print(f"Applied {len(changes)} change(s) to '{state.environment}'.")
    return len(changes)
