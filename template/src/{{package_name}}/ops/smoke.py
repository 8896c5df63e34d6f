"""`python -m <package>.ops.smoke --env ENV [--parameters JSON] [--timeout S]`: run ENV's
deployment once, as its worker runs it, and wait for `Completed`.

CI runs it after each deploy: a run that fails, crashes or does not finish in time exits
non-zero and stops the promotion. The run is tagged `smoke` and keeps the deployment's
version, which is what the next environment's promotion gate looks for (ops/promote.py).
Pass a smaller parameter set where a full run takes too long.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import get_current_settings

from .._internal.config import ConfigError
from .api_access import named_api_errors
from .preflight import check_api
from .state import Deployment, DesiredState, read_state

SMOKE_TAG = "smoke"


def pipeline_deployment(state: DesiredState) -> Deployment:
    """The environment's own pipeline: its first deployment that no trigger starts (the
    downstream ones run after it by themselves)."""
    for deployment in state.deployments:
        if not deployment.spec.get("triggers"):
            return deployment
    raise ConfigError(f"'{state.environment}' has no deployment without a trigger to run.")


def smoke(state: DesiredState, parameters: dict[str, Any], timeout: float) -> FlowRun:
    """Run the environment's pipeline and return the finished run; ConfigError if it is not
    Completed in time."""
    deployment = pipeline_deployment(state)
    flow_run = run_deployment(
        deployment.full_name,
        parameters=parameters,
        timeout=timeout,
        poll_interval=2,
        tags=[SMOKE_TAG],
        flow_run_name=f"smoke-{state.environment}",
        as_subflow=False,
    )
    outcome = flow_run.state
    version = flow_run.deployment_version
    where = f"smoke run {flow_run.id} of {deployment.full_name} (version {version})"
    if outcome is None or not outcome.is_final():
        raise ConfigError(
            f"{where} did not finish within {timeout:.0f} s (state "
            f"{outcome.name if outcome else 'none'}): is a worker polling {deployment.work_pool}?"
        )
    if not outcome.is_completed():
        raise ConfigError(f"{where} ended {outcome.name}: {outcome.message or 'no message'}")
    print(f"{where}: Completed.")
    return flow_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoke", description=__doc__)
    parser.add_argument("--env", required=True, help="the environment, as in config/<env>.yaml")
    parser.add_argument("--parameters", default="{}", help="the run's parameters, as JSON")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    args = parser.parse_args(argv)
    try:
        parameters = json.loads(args.parameters)
        if not isinstance(parameters, dict):
            raise ConfigError(f"--parameters must be a JSON object, not {args.parameters!r}.")
        state = read_state(args.env, args.root)
        check_api(get_current_settings().api.url)
        with named_api_errors():
            smoke(state, parameters, args.timeout)
    except json.JSONDecodeError as error:
        parser.exit(2, f"smoke: --parameters is not JSON: {error}\n")
    except ConfigError as error:
        parser.exit(1, f"smoke: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
