"""The one place the ops code reaches into Prefect's private modules.

reconcile compares a deployment with what `prefect deploy` would send, using the functions
`prefect deploy` itself resolves schedules and triggers with; validate checks prefect.yaml's
key names against Prefect's own model of it; ops runs the `prefect` CLI in its own process.
None of these is public API, so any Prefect release may move them: they are looked up here
alone, by the table below, and tests/test_prefect_internals.py fails naming each one that is
gone. After a Prefect bump that moves one, find its new module in the installed prefect
(`grep -rn "def NAME\\|class NAME" .venv/lib/*/site-packages/prefect`) and change its row.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import prefect

# Each private name the ops code uses, and the module it lives in (prefect 3.9).
PRIVATE = {
    "_schedule_config_to_deployment_schedule": "prefect.cli.deploy._schedules",
    "_initialize_deployment_triggers": "prefect.cli.deploy._triggers",
    "DeploymentConfig": "prefect.cli.deploy._models",
    "PrefectYamlModel": "prefect.cli.deploy._models",
    "WorkPoolConfig": "prefect.cli.deploy._models",
    "app": "prefect.cli",
}


class PrefectMoved(ImportError):
    """A private name the ops code uses is no longer where this Prefect release keeps it."""


def private(name: str) -> Any:
    """PRIVATE's name, imported from its module; PrefectMoved saying what to do if it moved."""
    module = PRIVATE[name]
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise PrefectMoved(
            f"prefect {prefect.__version__} has no {module}.{name} ({error}): it moved in this "
            f"release. Point its row in ops/prefect_internals.py at its new module, or keep "
            f"the Prefect release before it (README.md, 'Upgrading Prefect')."
        ) from None


def cli_app() -> Any:
    """The `prefect` executable's entry point (imported when first used: typer is slow)."""
    return private("app")


schedule_config_to_deployment_schedule = private("_schedule_config_to_deployment_schedule")
initialize_deployment_triggers = private("_initialize_deployment_triggers")
DeploymentConfig = private("DeploymentConfig")
PrefectYamlModel = private("PrefectYamlModel")
WorkPoolConfig = private("WorkPoolConfig")
