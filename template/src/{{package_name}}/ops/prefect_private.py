"""Every name ops takes from Prefect's private modules, and only here.

`prefect deploy` reads prefect.yaml with the models and converters of prefect.cli.deploy's
underscore modules; ops reads the same file the same way (validate, plan, the triggers it
compares), so it uses them too rather than a copy that drifts. Prefect may move them in any
release: kept to this module, a Prefect bump that moves one fails here, at import, and
tests/test_prefect_private.py names which, instead of a reconcile failing half-way.
"""

from __future__ import annotations

from prefect.cli.deploy._models import (
    DeploymentConfig,
    PrefectYamlModel,
    RawScheduleConfig,
    WorkPoolConfig,
)
from prefect.cli.deploy._schedules import (
    _schedule_config_to_deployment_schedule as schedule_config_to_deployment_schedule,
)
from prefect.cli.deploy._triggers import (
    _initialize_deployment_triggers as initialize_deployment_triggers,
)

__all__ = [
    "DeploymentConfig",
    "PrefectYamlModel",
    "RawScheduleConfig",
    "WorkPoolConfig",
    "initialize_deployment_triggers",
    "schedule_config_to_deployment_schedule",
]
