"""The desired orchestrator state of one environment, read from config/, prefect.yaml and
flows.yaml."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.workers.base import BaseWorker

from .._internal.config import ConfigError, environment_limits, limit_name, read_yaml
from .flows import ENV_TAG_PREFIX, all_deployments, environment_order

if TYPE_CHECKING:
    from prefect.flows import Flow

PROJECT_TAG_PREFIX = "project:"


@dataclass(frozen=True)
class GlobalLimit:
    name: str
    limit: int
    slot_decay_per_second: float = 0.0


@dataclass(frozen=True)
class Deployment:
    flow_name: str
    name: str
    work_pool: str
    entrypoint: str = ""
    # The deployment's entry in prefect.yaml, anchors merged, templating not yet applied.
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    @property
    def deploy_name(self) -> str:
        """The name `prefect deploy --name` selects it by: <entrypoint function>/<name>."""
        return f"{self.entrypoint.rpartition(':')[2]}/{self.name}"


@dataclass(frozen=True)
class Automation:
    """An automation of config/orchestration.yaml, as it applies to one environment."""

    key: str
    name: str
    spec: dict[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True)
class DesiredState:
    environment: str
    project: str
    work_pool_type: str
    work_pools: dict[str, dict[str, Any]]
    tag_limits: dict[str, int]
    global_limits: list[GlobalLimit]
    deployments: list[Deployment] = field(default_factory=list)
    automations: list[Automation] = field(default_factory=list)
    # prefect.yaml's top level: the build, push and pull steps deployments inherit.
    project_file: dict[str, Any] = field(default_factory=dict, repr=False)
    # config/<env>.yaml's result_storage: the storage block of its results, or None for a
    # local directory (ops/results.py).
    result_storage: dict[str, Any] | None = None
    # config/orchestration.yaml's alerts: the secret and kind of the alerts target (ops/alerts.py).
    alerts: dict[str, Any] = field(default_factory=dict)
    # config/<env>.yaml's alerts_required, by default whether it is the last environment: a
    # deploy of it without an alerts target is refused (ops/preflight.py).
    alerts_required: bool = False

    @property
    def project_tag(self) -> str:
        return PROJECT_TAG_PREFIX + self.project

    @property
    def environment_tag(self) -> str:
        return ENV_TAG_PREFIX + self.environment


def default_base_job_template(work_pool_type: str) -> dict[str, Any]:
    worker = BaseWorker.get_worker_class_from_type(work_pool_type)
    if worker is None:
        raise ConfigError(
            f"no worker for work pool type '{work_pool_type}' is installed in this environment."
        )
    return worker.get_default_base_job_template()


def base_job_template(orchestration: dict[str, Any], root: Path) -> dict[str, Any]:
    """The pools' base job template: config/orchestration.yaml's, else the worker's default."""
    pool_type = orchestration.get("work_pool_type") or "process"
    template = orchestration.get("base_job_template") or default_base_job_template(pool_type)
    if isinstance(template, str):  # a JSON file, as `prefect work-pool create` takes it
        template = json.loads((root / template).read_text(encoding="utf-8"))
    return template


@cache
def load_flow(entrypoint: str, root: Path) -> Flow[..., Any]:
    """The flow object of an entrypoint; imported once per process, as `prefect deploy` does.

    A module path (package.flows.etl:etl) imports from the installed package; a file path is
    resolved against the repository's root.
    """
    from prefect.flows import load_flow_from_entrypoint

    if ".py:" in entrypoint:
        return load_flow_from_entrypoint(str(root / entrypoint))
    return load_flow_from_entrypoint(entrypoint)


def flow_name_of(entrypoint: str, root: Path) -> str:
    """The @flow(name=...) of an entrypoint."""
    return load_flow(entrypoint, root).name


def read_automations(
    environment: str, project: str, orchestration: dict[str, Any]
) -> list[Automation]:
    """config/orchestration.yaml's automations that apply to `environment` (all by default)."""
    automations = []
    for key, spec in (orchestration.get("automations") or {}).items():
        if not isinstance(spec, dict) or not isinstance(spec.get("trigger"), dict):
            raise ConfigError(
                f"config/orchestration.yaml: automation '{key}' needs a 'trigger' mapping."
            )
        if environment in (spec.get("environments") or [environment]):
            automations.append(
                Automation(key=key, name=f"{project}/{environment}/{key}", spec=spec)
            )
    return automations


# The team's job variables per environment (kubernetes: flow-run sizes, node selector,
# tolerations, annotations), merged over prefect.yaml's; copier update never changes the file.
TEAM_JOB_VARIABLES = Path("deploy") / "team" / "flow-runs.yaml"


def team_job_variables(root: Path) -> dict[str, dict[str, Any]]:
    """deploy/team/flow-runs.yaml's job variables by environment ({} without the file)."""
    path = root / TEAM_JOB_VARIABLES
    declared = (read_yaml(path) or {}) if path.exists() else {}
    if not isinstance(declared, dict) or not all(
        isinstance(v, dict) for v in declared.values() if v is not None
    ):
        raise ConfigError(f"{TEAM_JOB_VARIABLES}: map each environment to its job variables.")
    return {env: variables or {} for env, variables in declared.items()}


def with_job_variables(spec: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deployment's spec with the team's job variables over its own."""
    if not overrides:
        return spec
    pool = spec.get("work_pool") or {}
    variables = {**(pool.get("job_variables") or {}), **overrides}
    return {**spec, "work_pool": {**pool, "job_variables": variables}}


def alerts_required(environment: str, settings: dict[str, Any], project: dict[str, Any]) -> bool:
    """config/<env>.yaml's alerts_required; unset, whether ENVIRONMENT is the last one of
    prefect.yaml's promotion order (production)."""
    required = settings.get("alerts_required")
    if required is None:
        order = environment_order(project)
        return bool(order) and order[-1] == environment
    if not isinstance(required, bool):
        raise ConfigError(
            f"config/{environment}.yaml: alerts_required is {required!r}; write true or false."
        )
    return required


def read_state(environment: str, root: Path) -> DesiredState:
    orchestration = read_yaml(root / "config" / "orchestration.yaml")
    project = read_yaml(root / "prefect.yaml")
    overrides = team_job_variables(root).get(environment) or {}
    deployments = [
        Deployment(
            flow_name=flow_name_of(spec["entrypoint"], root),
            name=spec["name"],
            work_pool=spec["work_pool"]["name"],
            entrypoint=spec["entrypoint"],
            spec=with_job_variables(spec, overrides),
        )
        for spec in all_deployments(project, root)
        if ENV_TAG_PREFIX + environment in (spec.get("tags") or [])
    ]
    if not deployments:
        raise ConfigError(f"prefect.yaml has no deployment tagged 'env:{environment}'.")
    pool_type = orchestration.get("work_pool_type") or "process"
    template = base_job_template(orchestration, root)
    tag_limits, global_limits = environment_limits(environment, orchestration)
    settings = read_yaml(root / "config" / f"{environment}.yaml")
    return DesiredState(
        environment=environment,
        project=project["name"],
        work_pool_type=pool_type,
        work_pools={d.work_pool: template for d in deployments},
        # The environment's own copies (_internal/config.py, limit_name).
        tag_limits={limit_name(tag, environment): value for tag, value in tag_limits.items()},
        global_limits=[
            GlobalLimit(name=limit_name(name, environment), **spec)
            for name, spec in global_limits.items()
        ],
        deployments=deployments,
        automations=read_automations(environment, project["name"], orchestration),
        project_file={k: v for k, v in project.items() if k != "deployments"},
        result_storage=settings.get("result_storage"),
        alerts=orchestration.get("alerts") or {},
        alerts_required=alerts_required(environment, settings, project),
    )
