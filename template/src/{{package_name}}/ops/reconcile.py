"""Bring a Prefect server to the state this repository declares for one environment.

Plan first, then apply: every change is listed before it is made, a dry run stops after the
plan, and a second run finds nothing to do. Only objects named in config/ and prefect.yaml are
touched; other projects' pools, limits and deployments are left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.exceptions import ObjectNotFound

from .state import DesiredState


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str  # create | update | deploy
    detail: str
    apply: Callable[[], None]

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
    changes = []
    for tag, limit in state.tag_limits.items():
        try:
            current = client.read_concurrency_limit_by_tag(tag).concurrency_limit
        except ObjectNotFound:
            current = None
        if current != limit:
            changes.append(
                Change(
                    "tag limit",
                    tag,
                    "create" if current is None else "update",
                    f"{current} -> {limit}" if current is not None else f"limit {limit}",
                    lambda tag=tag, limit=limit: client.create_concurrency_limit(tag, limit),
                )
            )
    return changes


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
                    lambda create=create: client.create_global_concurrency_limit(create),
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


def deploy(root: Path, names: list[str]) -> None:
    """Run `prefect deploy`, which resolves prefect.yaml's templating and steps itself."""
    args = [sys.executable, "-m", "prefect", "--no-prompt", "deploy"]
    for name in names:
        args += ["--name", name]
    env = {**os.environ, "PROJECT_DIR": os.environ.get("PROJECT_DIR") or str(root)}
    subprocess.run(args, cwd=root, env=env, check=True)


def reconcile(state: DesiredState, root: Path, *, dry_run: bool, skip_deploy: bool) -> int:
    """Print the plan and apply it unless dry_run; returns the number of changes."""
    with get_client(sync_client=True) as client:
        changes = (
            plan_work_pools(client, state)
            + plan_tag_limits(client, state)
            + plan_global_limits(client, state)
        )
        # `prefect deploy --name flow/deployment` matches the entrypoint's function name, not
        # the flow's name: select by deployment name, which is the environment's own.
        names = sorted({d.name for d in state.deployments})
        print(f"Plan for '{state.environment}' ({len(changes)} change(s) before deploy):")
        for change in changes:
            print(f"  {change}")
        if not changes:
            print("  work pools and limits are up to date")
        if not skip_deploy:
            print(f"  deploy  {', '.join(names)}")
        if dry_run:
            print("Dry run: nothing applied.")
            return len(changes)
        for change in changes:
            change.apply()
    if not skip_deploy:
        deploy(root, names)
    print(f"Applied {len(changes)} change(s) to '{state.environment}'.")
    return len(changes)
