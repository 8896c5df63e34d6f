"""`python -m <package>.ops.smoke --env ENV [--parameters JSON] [--timeout S]`: run ENV's
deployment once, as its worker runs it, and wait for `Completed`.

CI runs it after each deploy: a run that fails, crashes or does not finish in time exits
non-zero and stops the promotion. The run is tagged `smoke` and keeps the deployment's
version, which is what the next environment's promotion gate looks for (ops/promote.py).

What a smoke run is, per environment and per deployment, lives in config/orchestration.yaml
under `smoke:`: its parameters (a small, safe run; --parameters overrides them) and whether its
completion may start the downstream deployments. By default it never does: the run is named
smoke-<env>, and each downstream trigger in prefect.yaml ignores runs so named.

Exit codes: 0 Completed; 1 failed, crashed, stuck or misconfigured; 2 bad --parameters; 3 queued
behind another run of the deployment (its one-run-at-a-time limit), which is no failure of the
deploy, already applied: smoke it again once that run has finished.
"""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment

from .._internal.config import ConfigError, read_yaml
from .state import Deployment, DesiredState, load_flow, read_state

SMOKE_TAG = "smoke"
# The name prefix each downstream trigger in prefect.yaml filters out ("!smoke-*").
ISOLATED_PREFIX = "smoke-"
# A smoke run its environment lets start the downstream deployments: not matched by that filter.
DOWNSTREAM_PREFIX = "smoke+downstream-"
QUEUED_EXIT = 3
# A run of the deployment in one of these holds its one-run-at-a-time slot.
HOLDING = [StateType.PENDING, StateType.RUNNING, StateType.PAUSED]


class SmokeQueued(ConfigError):
    """The smoke run waits behind another run of its deployment."""


@dataclass(frozen=True)
class SmokeSpec:
    """config/orchestration.yaml's smoke run of one deployment in one environment."""

    parameters: dict[str, Any]
    trigger_downstream: bool = False

    def run_name(self, environment: str) -> str:
        prefix = DOWNSTREAM_PREFIX if self.trigger_downstream else ISOLATED_PREFIX
        return prefix + environment


def pipeline_deployment(state: DesiredState) -> Deployment:
    """The environment's own pipeline: its first deployment that no trigger starts (the
    downstream ones run after it by themselves)."""
    for deployment in state.deployments:
        if not deployment.spec.get("triggers"):
            return deployment
    raise ConfigError(f"'{state.environment}' has no deployment without a trigger to run.")


def smoke_spec(root: Path, environment: str, deployment: Deployment) -> SmokeSpec:
    """smoke.<env> of config/orchestration.yaml for this deployment's flow; no parameters and
    no downstream runs where it declares nothing."""
    where = f"config/orchestration.yaml: smoke.{environment}"
    section = (read_yaml(root / "config" / "orchestration.yaml").get("smoke") or {}).get(
        environment
    ) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping (parameters, trigger_downstream).")
    parameters = (section.get("parameters") or {}).get(deployment.flow_name) or {}
    if not isinstance(parameters, dict):
        raise ConfigError(f"{where}.parameters.{deployment.flow_name} must be a mapping.")
    accepted = set(inspect.signature(load_flow(deployment.entrypoint, root).fn).parameters)
    if unknown := sorted(set(parameters) - accepted):
        raise ConfigError(
            f"{where}.parameters.{deployment.flow_name} has {', '.join(unknown)}, which the "
            f"flow does not take (it takes {', '.join(sorted(accepted)) or 'none'}): change "
            "the smoke parameters, or add the parameter to the flow."
        )
    downstream = section.get("trigger_downstream", False)
    if not isinstance(downstream, bool):
        raise ConfigError(f"{where}.trigger_downstream must be true or false, not {downstream!r}.")
    return SmokeSpec(parameters=parameters, trigger_downstream=downstream)


def queued_behind(flow_run: FlowRun) -> list[FlowRun]:
    """The other runs of the smoke run's deployment that hold its slot, oldest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[flow_run.deployment_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=HOLDING)),
            ),
            limit=20,
        )
    return sorted(
        (run for run in runs if run.id != flow_run.id), key=lambda run: str(run.start_time)
    )


def unfinished(flow_run: FlowRun, where: str, timeout: float, pool: str) -> ConfigError:
    """Why a run is not final after the timeout: queued behind another run, or stuck."""
    state = flow_run.state
    ahead = queued_behind(flow_run)
    if state is not None and (state.name == "AwaitingConcurrencySlot" or ahead):
        blocking = ", ".join(f"{run.name} ({run.id}, {run.state_name})" for run in ahead)
        return SmokeQueued(
            f"{where} is queued ({state.name}) behind {blocking or 'another run'} of the "
            f"deployment after {timeout:.0f} s: the deploy is applied; the smoke run starts "
            "when that run ends. Smoke again then, or wait longer (--timeout)."
        )
    return ConfigError(
        f"{where} did not finish within {timeout:.0f} s (state "
        f"{state.name if state else 'none'}): is a worker polling {pool}?"
    )


def smoke(
    state: DesiredState,
    parameters: dict[str, Any] | None,
    timeout: float,
    root: Path | None = None,
) -> FlowRun:
    """Run the environment's pipeline and return the finished run; SmokeQueued if it still
    waits behind another run, ConfigError if it is not Completed in time."""
    deployment = pipeline_deployment(state)
    spec = smoke_spec(root or Path.cwd(), state.environment, deployment)
    flow_run = run_deployment(
        deployment.full_name,
        parameters=spec.parameters if parameters is None else parameters,
        timeout=timeout,
        poll_interval=2,
        tags=[SMOKE_TAG],
        flow_run_name=spec.run_name(state.environment),
        as_subflow=False,
    )
    outcome = flow_run.state
    version = flow_run.deployment_version
    where = f"smoke run {flow_run.id} of {deployment.full_name} (version {version})"
    if outcome is None or not outcome.is_final():
        raise unfinished(flow_run, where, timeout, deployment.work_pool)
    if not outcome.is_completed():
        raise ConfigError(f"{where} ended {outcome.name}: {outcome.message or 'no message'}")
    print(f"{where}: Completed.")
    return flow_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoke", description=__doc__)
    parser.add_argument("--env", required=True, help="the environment, as in config/<env>.yaml")
    parser.add_argument(
        "--parameters",
        default=None,
        help="the run's parameters, as JSON (default: smoke.<env> in config/orchestration.yaml)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    args = parser.parse_args(argv)
    try:
        parameters = None if args.parameters is None else json.loads(args.parameters)
        if parameters is not None and not isinstance(parameters, dict):
            raise ConfigError(f"--parameters must be a JSON object, not {args.parameters!r}.")
        smoke(read_state(args.env, args.root), parameters, args.timeout, args.root)
    except json.JSONDecodeError as error:
        parser.exit(2, f"smoke: --parameters is not JSON: {error}\n")
    except SmokeQueued as queued:
        parser.exit(QUEUED_EXIT, f"smoke: {queued}\n")
    except ConfigError as error:
        parser.exit(1, f"smoke: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
