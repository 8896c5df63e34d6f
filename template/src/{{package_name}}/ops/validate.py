"""Check prefect.yaml, flows.yaml and config/ before anything reaches a server.

Prefect's own model parses prefect.yaml but ignores unknown keys (a typo such as `entrypiont`
passes), so key names are checked here against the model's fields, and job_variables against
the variables of the worker's base job template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.schemas.schedules import CronSchedule
from prefect.events.schemas.automations import AutomationCore
from pydantic import BaseModel, ValidationError

from .._internal.config import ConfigError, environment_limits, environment_names, read_yaml
from .alerts import BLOCKS
from .automations import LOCAL_KEYS, SCOPES
from .flow_checks import check_entrypoint, flow_problems
from .flows import environment_order
from .prefect_private import DeploymentConfig, PrefectYamlModel, WorkPoolConfig
from .results import declaration_problems
from .state import TEAM_JOB_VARIABLES, base_job_template, team_job_variables

EXTRA_TOP_LEVEL_KEYS = {"definitions"}


def allowed_keys(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def unknown_keys(data: dict[str, Any], model: type[BaseModel], where: str) -> list[str]:
    extra = set(data) - allowed_keys(model)
    return [f"{where}: unknown key '{key}'" for key in sorted(extra)]


def check_deployment(spec: dict[str, Any], variables: set[str]) -> list[str]:
    where = f"deployment '{spec.get('name', '?')}'"
    problems = unknown_keys(spec, DeploymentConfig, where)
    problems += check_entrypoint(spec.get("entrypoint", ""), where)
    pool = spec.get("work_pool") or {}
    problems += unknown_keys(pool, WorkPoolConfig, f"{where} work_pool")
    for key in sorted(set(pool.get("job_variables") or {}) - variables):
        problems.append(f"{where}: job variable '{key}' is not in the work pool's template")
    for schedule in spec.get("schedules") or []:
        try:
            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
        except (KeyError, ValidationError) as error:
            problems.append(f"{where}: schedule {schedule} is invalid: {error}")
    return problems


def check_automations(orchestration: dict[str, Any], environments: list[str]) -> list[str]:
    """Automations parse as Prefect's model; a named block is only looked up by reconcile."""
    problems = []
    for key, spec in (orchestration.get("automations") or {}).items():
        where = f"config/orchestration.yaml: automation '{key}'"
        if not isinstance(spec, dict):
            problems.append(f"{where} must be a mapping")
            continue
        for env in sorted(set(spec.get("environments") or []) - set(environments)):
            problems.append(f"{where} names environment '{env}', which has no config/{env}.yaml")
        if spec.get("scope", "flow-runs") not in SCOPES:
            problems.append(f"{where}: scope '{spec['scope']}' is none of {', '.join(SCOPES)}")
        actions = [
            {k: v for k, v in action.items() if k != "block_document"}
            | ({"block_document_id": str(UUID(int=0))} if "block_document" in action else {})
            for action in spec.get("actions") or []
        ]
        fields = {k: v for k, v in spec.items() if k not in LOCAL_KEYS}
        try:
            AutomationCore.model_validate({**fields, "name": key, "actions": actions})
        except ValidationError as error:
            problems.append(f"{where} is invalid: {error}")
    return problems


def check_environment_entries(orchestration: dict[str, Any], environments: list[str]) -> list[str]:
    """Per-environment limits and smoke parameters name known environments and limits."""
    problems = []
    smoke = orchestration.get("smoke") or {}
    for section, entries in [
        ("environment_limits", orchestration.get("environment_limits") or {}),
        ("smoke.environments", smoke.get("environments") or {}),
    ]:
        for env in sorted(set(entries) - set(environments)):
            problems.append(
                f"config/orchestration.yaml: {section} names environment '{env}', which has no "
                f"config/{env}.yaml"
            )
    for env in environments:
        try:
            environment_limits(env, orchestration)
        except (ConfigError, TypeError, ValueError) as error:
            problems.append(str(error))
    return problems


def check_alerts(orchestration: dict[str, Any]) -> list[str]:
    kind = (orchestration.get("alerts") or {}).get("kind") or "auto"
    if kind == "auto" or kind in BLOCKS:
        return []
    return [f"config/orchestration.yaml: alerts kind '{kind}' is none of auto, {', '.join(BLOCKS)}"]


def validate(root: Path) -> list[str]:
    """Every problem found, as one line each; empty when all is well."""
    project = read_yaml(root / "prefect.yaml")
    problems = unknown_keys(
        {k: v for k, v in project.items() if k not in EXTRA_TOP_LEVEL_KEYS},
        PrefectYamlModel,
        "prefect.yaml",
    )
    try:
        PrefectYamlModel.model_validate(project)
    except ValidationError as error:
        problems.append(f"prefect.yaml does not match Prefect's model: {error}")
    orchestration = read_yaml(root / "config" / "orchestration.yaml")
    problems += check_automations(orchestration, environment_names(root / "config"))
    problems += check_environment_entries(orchestration, environment_names(root / "config"))
    problems += check_alerts(orchestration)
    template = base_job_template(orchestration, root)
    variables = set(template["variables"]["properties"])
    deployed_envs = set(environment_order(project))
    for spec in project.get("deployments") or []:
        problems += check_deployment(spec, variables)
    try:
        team = team_job_variables(root)
    except ConfigError as error:
        problems.append(str(error))
        team = {}
    for env, overrides in team.items():
        where = f"{TEAM_JOB_VARIABLES} '{env}'"
        if env not in environment_names(root / "config"):
            problems.append(f"{where}: no such environment (no config/{env}.yaml)")
        for key in sorted(set(overrides) - variables):
            problems.append(f"{where}: job variable '{key}' is not in the work pool's template")
    for env in sorted(set(environment_names(root / "config")) - deployed_envs):
        problems.append(f"config/{env}.yaml has no deployment tagged 'env:{env}' in prefect.yaml")
    for env in environment_names(root / "config"):
        declared = read_yaml(root / "config" / f"{env}.yaml").get("result_storage")
        problems += declaration_problems(env, declared)
    problems += flow_problems(project, root)
    if project.get("build"):
        from .image import platform_problems  # container runtimes only

        problems += platform_problems(project, root, environment_names(root / "config"))
    return list(dict.fromkeys(problems))
