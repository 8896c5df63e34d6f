"""The desired orchestrator state of one environment, read from config/ and prefect.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.workers.base import BaseWorker

from .._internal.config import ConfigError, read_yaml

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

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


@dataclass(frozen=True)
class DesiredState:
    environment: str
    project: str
    work_pool_type: str
    work_pools: dict[str, dict[str, Any]]
    tag_limits: dict[str, int]
    global_limits: list[GlobalLimit]
    deployments: list[Deployment] = field(default_factory=list)

    @property
    def project_tag(self) -> str:
        return PROJECT_TAG_PREFIX + self.project


def default_base_job_template(work_pool_type: str) -> dict[str, Any]:
    worker = BaseWorker.get_worker_class_from_type(work_pool_type)
    if worker is None:
        raise ConfigError(
            f"no worker for work pool type '{work_pool_type}' is installed in this environment."
        )
    return worker.get_default_base_job_template()


def flow_name_of(entrypoint: str, root: Path) -> str:
    """The @flow(name=...) of an entrypoint, read from the source without importing it."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(root / entrypoint)).name


def read_state(environment: str, root: Path) -> DesiredState:
    orchestration = read_yaml(root / "config" / "orchestration.yaml")
    project = read_yaml(root / "prefect.yaml")
    deployments = [
        Deployment(
            flow_name=flow_name_of(spec["entrypoint"], root),
            name=spec["name"],
            work_pool=spec["work_pool"]["name"],
        )
        for spec in project.get("deployments") or []
        if f"env:{environment}" in (spec.get("tags") or [])
    ]
    if not deployments:
        raise ConfigError(f"prefect.yaml has no deployment tagged 'env:{environment}'.")
    pool_type = orchestration.get("work_pool_type") or "process"
    template = orchestration.get("base_job_template") or default_base_job_template(pool_type)
    return DesiredState(
        environment=environment,
        project=project["name"],
        work_pool_type=pool_type,
        work_pools={d.work_pool: template for d in deployments},
        tag_limits={str(k): int(v) for k, v in (orchestration.get("tag_limits") or {}).items()},
        global_limits=[
            GlobalLimit(name=name, **spec)
            for name, spec in (orchestration.get("global_limits") or {}).items()
        ],
        deployments=deployments,
    )
