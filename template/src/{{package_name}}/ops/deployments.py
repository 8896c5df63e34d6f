"""Compare prefect.yaml's deployments of one environment with those on the server.

`prefect deploy` stays the only writer of deployments: reconcile works out which deployments
it would change and runs it for those alone, so an unchanged environment is never redeployed.
The desired fields are resolved the way `prefect deploy` resolves them (prefect 3.9,
prefect/cli/deploy/_core.py): block and variable references, then `{{ $ENV }}` placeholders,
then the fields it sends. Flow code is not compared: a process worker runs the checkout's code,
and a container runtime's image is a job variable, which is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events.schemas.automations import Automation as ServerAutomation
from prefect.exceptions import ObjectNotFound
from prefect.utilities.annotations import NotSet
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.utilities.callables import parameter_schema
from prefect.utilities.templating import (
    apply_values,
    find_placeholders,
    resolve_block_document_references,
    resolve_variables,
)

from .automations import automation_fields
from .prefect_private import (
    initialize_deployment_triggers,
    schedule_config_to_deployment_schedule,
)
from .state import Deployment, DesiredState, load_flow
from .versions import VERSION_VAR, head_version

# Build and push step outputs (such as a built image's tag) exist only while `prefect deploy`
# runs: a field that uses one cannot be compared, so it always counts as changed.
UNRESOLVED = "unresolved"
# The repository a process worker clones (prefect.yaml's git_clone step reads it).
REPOSITORY_VAR = "DEPLOY_REPOSITORY"
# Set while ops runs `prefect deploy`: prefect.yaml's first build step (kubernetes:
# ops/hand_deploy.py) tells a deploy by hand, which leaves deploy/team/ files out, from ours.
DEPLOY_TOOL_VAR, DEPLOY_TOOL = "PIPELINE_DEPLOY_TOOL", "ops"


def repository_url(root: Path, environ: Mapping[str, str]) -> str:
    """Where a process worker clones this repository from: DEPLOY_REPOSITORY, else the URL the
    CI platform running this deploy gives (never with a credential in it), else this
    checkout's path, which a worker on the same machine clones without credentials."""
    if explicit := environ.get(REPOSITORY_VAR):
        return explicit
    if environ.get("GITHUB_SERVER_URL") and environ.get("GITHUB_REPOSITORY"):
        url = f"{environ['GITHUB_SERVER_URL']}/{environ['GITHUB_REPOSITORY']}.git"
    elif project_url := environ.get("CI_PROJECT_URL"):  # GitLab
        url = f"{project_url}.git"
    elif origin := environ.get("BITBUCKET_GIT_HTTP_ORIGIN"):  # given as http://bitbucket.org/...
        url = "https://" + origin.split("://", 1)[-1] + ".git"
    elif uri := environ.get("BUILD_REPOSITORY_URI"):  # Azure Pipelines' Build.Repository.Uri
        url = uri
    else:
        return str(root)
    # Azure's URI names the organisation as a user (https://org@dev.azure.com/...): the worker's
    # own credential must answer for the host, so the URL carries no user or password.
    parts = urlsplit(url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=host))


@contextmanager
def deploy_environment(root: Path) -> Iterator[dict[str, str]]:
    """os.environ as `prefect deploy` sees it: DEPLOY_REPOSITORY defaults to the repository's
    URL in CI or its path here (repository_url), DEPLOY_VERSION to its HEAD commit, and
    DEPLOY_TOOL_VAR says the deploy is ours."""
    defaults = {
        REPOSITORY_VAR: repository_url(root, os.environ),
        VERSION_VAR: head_version(root),
        DEPLOY_TOOL_VAR: DEPLOY_TOOL,
    }
    # An unset CI variable arrives as an empty string: treat it as unset.
    added = [name for name, value in defaults.items() if value and not os.environ.get(name)]
    for name in added:
        os.environ[name] = defaults[name]
    try:
        yield dict(os.environ)
    finally:
        for name in added:
            os.environ.pop(name, None)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def has_unresolved(value: Any) -> bool:
    if value is NotSet:
        return True
    if isinstance(value, dict):
        return any(has_unresolved(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unresolved(v) for v in value)
    return isinstance(value, str) and any(
        not p.name.startswith("ctx.") for p in find_placeholders(value)
    )


def trigger_automations(name: str, specs: list[dict[str, Any]], deployment_id: UUID) -> list[str]:
    """The automations `prefect deploy` creates for a deployment's triggers, canonicalised."""
    templated = []
    for spec in deepcopy(specs):
        # As prefect deploy does: trigger parameters (event templates) are left for the server.
        parameters = spec.pop("parameters", None)
        spec = apply_values(spec, {}, warn_on_notset=False)
        if parameters is not None:
            spec["parameters"] = parameters
        templated.append(spec)
    automations = []
    for trigger in initialize_deployment_triggers(name, templated):
        trigger.set_deployment_id(deployment_id)
        automations.append(canonical(automation_fields(trigger.as_automation())))
    return sorted(automations)


def concurrency(value: Any) -> list[Any]:
    """[limit, collision strategy, grace period] of an int or a mapping."""
    if isinstance(value, dict):
        return [
            value.get("limit"),
            value.get("collision_strategy") or "ENQUEUE",
            value.get("grace_period_seconds"),
        ]
    return [value, "ENQUEUE", None]


def desired_fields(deployment: Deployment, state: DesiredState, root: Path) -> dict[str, Any]:
    """The fields `prefect deploy` would send for this deployment, keyed as compared."""
    spec = deepcopy(deployment.spec)
    pull = spec.get("pull", state.project_file.get("pull")) or []
    spec = run_coro_as_sync(resolve_block_document_references(spec))
    spec = run_coro_as_sync(resolve_variables(spec))
    spec = apply_values(spec, os.environ, remove_notset=False)
    flow = load_flow(deployment.entrypoint, root)
    pool = spec.get("work_pool") or {}
    fields: dict[str, Any] = {
        "entrypoint": spec["entrypoint"],
        # A flow without a docstring has no description: the server may hold "" or None for it.
        "description": spec.get("description") or flow.description or None,
        "version": spec.get("version"),
        "parameters": spec.get("parameters") or {},
        "tags": sorted(spec.get("tags") or []),
        "work_pool": pool.get("name"),
        "work_queue": pool.get("work_queue_name") or "default",
        "job_variables": pool.get("job_variables") or {},
        # Pull steps keep block references: the worker resolves them at run time.
        "pull_steps": apply_values(pull, {}, remove_notset=False),
        "concurrency_limit": concurrency(spec.get("concurrency_limit")),
        "parameter_schema": parameter_schema(flow).model_dump(exclude_unset=True),
    }
    if spec.get("schedules") is not None:
        fields["schedules"] = sorted(
            canonical_schedule(
                schedule_config_to_deployment_schedule(schedule)["schedule"].model_dump(
                    mode="json"
                ),
                schedule.get("active", True),
                schedule.get("parameters") or {},
                schedule.get("slug"),
            )
            for schedule in spec["schedules"]
        )
    for optional in ("paused", "enforce_parameter_schema"):
        if spec.get(optional) is not None:
            fields[optional] = spec[optional]
    for key, value in fields.items():
        if key != "pull_steps" and has_unresolved(value):
            fields[key] = UNRESOLVED
    fields["triggers"] = spec.get("triggers") or []
    return fields


def canonical_schedule(
    schedule: dict[str, Any], active: bool, parameters: dict[str, Any], slug: str | None
) -> str:
    return canonical(
        {"schedule": schedule, "active": active, "parameters": parameters, "slug": slug}
    )


def trigger_owned(automation: ServerAutomation, deployment_id: UUID) -> bool:
    """True for the automations prefect deploy made from this deployment's triggers."""
    return any(
        action.type == "run-deployment"
        and getattr(action, "source", None) == "selected"
        and getattr(action, "deployment_id", None) == deployment_id
        for action in automation.actions
    )


def deployed_triggers(client: SyncPrefectClient, deployment_id: UUID) -> list[str]:
    """The automations the server holds for a deployment's triggers, canonicalised."""
    return sorted(
        canonical(automation_fields(automation))
        for automation in client.read_resource_related_automations(
            f"prefect.deployment.{deployment_id}"
        )
        if trigger_owned(automation, deployment_id)
    )


def current_fields(client: SyncPrefectClient, deployment: DeploymentResponse) -> dict[str, Any]:
    limit = deployment.global_concurrency_limit
    options = deployment.concurrency_options
    return {
        "entrypoint": deployment.entrypoint,
        "description": deployment.description or None,
        "version": deployment.version,
        "parameters": deployment.parameters,
        "tags": sorted(deployment.tags),
        "work_pool": deployment.work_pool_name,
        "work_queue": deployment.work_queue_name,
        "job_variables": deployment.job_variables,
        "pull_steps": deployment.pull_steps or [],
        "concurrency_limit": [
            limit.limit if limit else None,
            options.collision_strategy.value if options else "ENQUEUE",
            options.grace_period_seconds if options else None,
        ],
        "parameter_schema": deployment.parameter_openapi_schema,
        "schedules": sorted(
            canonical_schedule(
                s.schedule.model_dump(mode="json"), s.active, s.parameters or {}, s.slug
            )
            for s in deployment.schedules
        ),
        "paused": deployment.paused,
        "enforce_parameter_schema": deployment.enforce_parameter_schema,
        "triggers": deployed_triggers(client, deployment.id),
    }


def changed_fields(
    desired: dict[str, Any], current: dict[str, Any], deployment: Deployment, deployment_id: UUID
) -> list[str]:
    """The names of the fields that differ; an unresolvable field always counts as changed."""
    desired = {
        **desired,
        "triggers": trigger_automations(deployment.name, desired["triggers"], deployment_id),
    }
    return [
        key
        for key, want in desired.items()
        if want == UNRESOLVED or canonical(want) != canonical(current.get(key))
    ]


def project_deployments(client: SyncPrefectClient, state: DesiredState) -> list[DeploymentResponse]:
    """This project's deployments in this environment: both tags, never another project's."""
    return client.read_deployments(
        deployment_filter=DeploymentFilter(
            tags=DeploymentFilterTags(all_=[state.project_tag, state.environment_tag])
        )
    )


def flow_names(client: SyncPrefectClient, deployments: list[DeploymentResponse]) -> dict[UUID, str]:
    ids = {deployment.flow_id for deployment in deployments}
    return {flow_id: client.read_flow(flow_id).name for flow_id in ids}


def diff_deployment(
    client: SyncPrefectClient, deployment: Deployment, state: DesiredState, root: Path
) -> tuple[str, list[str]]:
    """("create" | "update" | "unchanged", the fields that differ)."""
    desired = desired_fields(deployment, state, root)
    try:
        current = client.read_deployment_by_name(deployment.full_name)
    except ObjectNotFound:
        # Validate the triggers now, so a bad one stops the plan rather than the deploy.
        trigger_automations(deployment.name, desired["triggers"], uuid4())
        return "create", []
    changed = changed_fields(desired, current_fields(client, current), deployment, current.id)
    return ("update" if changed else "unchanged"), changed
