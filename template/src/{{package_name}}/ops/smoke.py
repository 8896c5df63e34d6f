"""`python -m <package>.ops.smoke --env ENV [--parameters JSON] [--timeout S]`: run each of
ENV's deployments once, as its worker runs it, and wait for `Completed`.

CI runs it after each deploy. Every deployment no trigger starts is run (all at once, each
tagged `smoke`, keeping the deployment's version: what the next environment's promotion gate
looks for, ops/promote.py); every triggered one must exist on the server with the triggers
prefect.yaml or flows.yaml declare, pointing at an upstream deployment this environment has.
A run that fails, crashes or does not finish in time, or a triggered deployment missing or
pointing elsewhere, exits 1 and stops the promotion. A run still waiting at the deadline behind
another run of its deployment (the environment's one-run-at-a-time limit, or a scheduled run)
exits 3: the deploy is applied, and the smoke run stays queued and runs after it. A run whose
pod cannot pull its image (the Kubernetes worker's pod event, diagnosed ImagePullError, or
failing that the error it logs to the run, which stays Pending while Kubernetes retries the
pull) exits 1 at once, "image pull failed" with the registry's answer where the worker logged
it, rather than at the deadline asking whether a worker polls the pool.

The parameters are config/orchestration.yaml's `smoke:` ones (a small, safe run, per
environment), unless --parameters gives a JSON object of each flow's parameters, by flow name
(`{"<flow>": {"batch_size": 10}}`); a flow it does not name runs with its deployment's own. An
object that names no flow is the parameters of the environment's first deployment, as before
there were several. Smoke runs are named smoke-<env>, and every downstream trigger excludes
runs so named (prefect.yaml, ops/flows.py): a smoke run never starts a downstream deployment.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.exceptions import ObjectNotFound

from .._internal.config import ConfigError, read_yaml
from .._internal.provenance import recorded_commit
from .deployments import deployed_triggers, trigger_automations
from .preflight import api_refusal
from .state import Deployment, DesiredState, read_state
from .versions import Version

SMOKE_TAG = "smoke"
# Smoke runs' names start with it; downstream triggers match runs whose name does not.
SMOKE_RUN_PREFIX = "smoke-"
POLL_SECONDS = 2
# The exit code of a smoke run still queued at the deadline: not a failed deploy.
QUEUED_EXIT_CODE = 3


class SmokeQueuedError(ConfigError):
    """A smoke run is still waiting behind other runs of its deployment at the deadline."""


def declared_parameters(environment: str, root: Path) -> dict[str, Any]:
    """config/orchestration.yaml's smoke parameters for `environment`, by flow name."""
    declared = read_yaml(root / "config" / "orchestration.yaml").get("smoke") or {}
    shared = declared.get("parameters") or {}
    own = (declared.get("environments") or {}).get(environment) or {}
    if not isinstance(shared, dict) or not isinstance(own, dict):
        raise ConfigError(
            "config/orchestration.yaml: smoke.parameters and each smoke.environments entry "
            "must map flow names to their parameters."
        )
    return {**shared, **own}


def untriggered(state: DesiredState) -> list[Deployment]:
    """The deployments no trigger starts: the ones a smoke run starts by hand."""
    found = [d for d in state.deployments if not d.spec.get("triggers")]
    if not found:
        raise ConfigError(f"'{state.environment}' has no deployment without a trigger to run.")
    return found


def triggered(state: DesiredState) -> list[Deployment]:
    return [d for d in state.deployments if d.spec.get("triggers")]


def parameters_by_deployment(
    state: DesiredState, given: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each untriggered deployment's smoke parameters, by its full name."""
    runs = untriggered(state)
    flows = {d.flow_name for d in runs}
    named = [key for key in given if key in flows]
    if given and not named:
        return {runs[0].full_name: given}  # the single-flow form
    if len(named) != len(given):
        others = ", ".join(sorted(set(given) - flows))
        raise ConfigError(
            f"the smoke parameters name flows ({', '.join(named)}) and also {others}, which is no "
            f"flow of '{state.environment}' without a trigger ({', '.join(sorted(flows))})."
        )
    for key in named:
        if not isinstance(given[key], dict):
            raise ConfigError(f"smoke parameters: those of '{key}' must be a JSON object.")
    return {d.full_name: given.get(d.flow_name, {}) for d in runs}


# The event a Kubernetes worker's observer (prefect-kubernetes 0.8, observer.py) emits for each
# phase of a flow run's pod, related to the run; a pod in ErrImagePull or ImagePullBackOff has
# its diagnosis (diagnostics.py) on the event's resource. The run itself stays Pending.
POD_EVENT_PREFIX = "prefect.kubernetes.pod."
DIAGNOSIS_LABEL, IMAGE_PULL_ERROR = "kubernetes.diagnosis", "ImagePullError"
# How the same observer begins the error it logs to the run: the registry's answer is only
# there, and it is all an observer that replicates no pod events leaves.
IMAGE_PULL_FAILED = "Image pull failed for container"


def image_pull_event(client: SyncPrefectClient, flow_run: FlowRun) -> Event | None:
    """The worker's latest pod event for the run if it diagnosed an image pull error."""
    page = client.read_events(
        filter=EventFilter(
            event=EventNameFilter(prefix=[POD_EVENT_PREFIX]),
            related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run.id}"]),
        ),
        limit=20,
    )
    return next(
        (e for e in page.events if e.resource.get(DIAGNOSIS_LABEL) == IMAGE_PULL_ERROR), None
    )


def image_pull_log(client: SyncPrefectClient, flow_run: FlowRun) -> str | None:
    """The worker's error about the run's image, if it logged one."""
    logs = client.read_logs(
        log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]),
            level=LogFilterLevel(ge_=logging.ERROR),
        ),
        limit=20,
    )
    return next((log.message for log in logs if log.message.startswith(IMAGE_PULL_FAILED)), None)


def image_pull_failure(client: SyncPrefectClient, flow_run: FlowRun) -> str | None:
    """What the worker reported about the run's image: its pod event's diagnosis, with the
    error it logged where there is one; the logged error alone without an event."""
    event, logged = image_pull_event(client, flow_run), image_pull_log(client, flow_run)
    if event is None:
        return logged
    resource = event.resource
    pod = f"pod {resource.name} in {resource.get('kubernetes.namespace')}"
    return f"{event.event} of {pod}, diagnosis {IMAGE_PULL_ERROR}" + (
        f": {logged}" if logged else ""
    )


def wait_for(
    client: SyncPrefectClient, flow_run: FlowRun, deadline: float
) -> tuple[FlowRun, str | None]:
    """The flow run once final, once its image could not be pulled (with the worker's error),
    or as it stands at the deadline."""
    while True:
        flow_run = client.read_flow_run(flow_run.id)
        if flow_run.state and flow_run.state.is_final():
            return flow_run, None
        pending = flow_run.state is not None and flow_run.state.is_pending()
        if pending and (failure := image_pull_failure(client, flow_run)):
            return flow_run, failure
        if time.monotonic() >= deadline:
            return flow_run, None
        time.sleep(POLL_SECONDS)


ACTIVE_STATES = ["RUNNING", "PENDING", "CANCELLING"]


def queued_behind(client: SyncPrefectClient, flow_run: FlowRun) -> list[FlowRun]:
    """The other runs of the flow run's deployment it waits behind: the ones active now."""
    if flow_run.deployment_id is None:
        return []
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[flow_run.deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(s) for s in ACTIVE_STATES])
            )
        ),
        limit=20,
    )
    return [run for run in runs if run.id != flow_run.id]


def outcome_problem(
    deployment: Deployment,
    flow_run: FlowRun,
    timeout: float,
    ahead: list[FlowRun] | None = None,
    image_pull: str | None = None,
) -> str | None:
    outcome = flow_run.state
    where = (
        f"smoke run {flow_run.id} of {deployment.full_name} (version {flow_run.deployment_version})"
    )
    if image_pull:
        return (
            f"{where}: image pull failed, the worker's pod cannot pull its image (a pull "
            f"secret or the image's tag): {image_pull}"
        )
    if outcome is None or not outcome.is_final():
        if outcome is not None and (outcome.is_scheduled() or outcome.is_pending()) and ahead:
            names = ", ".join(
                f"{run.name} ({run.id}, {run.state.name if run.state else 'no state'})"
                for run in ahead
            )
            return (
                f"{where} is queued behind {names} after {timeout:.0f} s (state "
                f"{outcome.name}): the deploy is applied; it runs when they finish."
            )
        return (
            f"{where} did not finish within {timeout:.0f} s (state "
            f"{outcome.name if outcome else 'none'}): is a worker polling {deployment.work_pool}?"
        )
    if not outcome.is_completed():
        return f"{where} ended {outcome.name}: {outcome.message or 'no message'}"
    version = Version.parse(flow_run.deployment_version)
    ran = recorded_commit(flow_run)
    if version is not None and ran != version.commit:
        # Completed, but not as evidence: the worker ran other code than the deployment names.
        return (
            f"{where} Completed but recorded running {ran[:12] if ran else 'no commit'}, not "
            f"{version.commit[:12]}: does its flow declare on_running=[record_commit], and "
            "does its worker run the deployed code?"
        )
    print(f"{where}: Completed.")
    return None


def upstreams(deployment: Deployment) -> list[str]:
    """The deployments (flow/name) whose runs a triggered deployment's triggers match."""
    names = []
    for trigger in deployment.spec.get("triggers") or []:
        related = trigger.get("match_related") or []
        related = [related] if isinstance(related, dict) else related
        by_role = {r.get("prefect.resource.role"): r.get("prefect.resource.name") for r in related}
        if by_role.get("flow") and by_role.get("deployment"):
            names.append(f"{by_role['flow']}/{by_role['deployment']}")
    return names


def trigger_problems(client: SyncPrefectClient, state: DesiredState) -> list[str]:
    """What is wrong with the environment's triggered deployments on the server."""
    declared = {d.full_name for d in state.deployments}
    problems = []
    for deployment in triggered(state):
        for upstream in upstreams(deployment):
            if upstream not in declared:
                problems.append(
                    f"{deployment.full_name} is triggered by runs of {upstream}, which "
                    f"'{state.environment}' does not deploy."
                )
        try:
            current = client.read_deployment_by_name(deployment.full_name)
        except ObjectNotFound:
            problems.append(
                f"{deployment.full_name} does not exist: deploy '{state.environment}' first."
            )
            continue
        wanted = trigger_automations(deployment.name, deployment.spec["triggers"], current.id)
        if deployed_triggers(client, current.id) != wanted:
            problems.append(
                f"{deployment.full_name}'s triggers on the server differ from those declared: "
                f"make reconcile ENV={state.environment}."
            )
        else:
            sources = ", ".join(upstreams(deployment)) or "its triggers"
            print(f"{deployment.full_name}: deployed, started by {sources}.")
    return problems


def smoke(state: DesiredState, parameters: dict[str, Any], timeout: float) -> list[FlowRun]:
    """Run every untriggered deployment at once and check the triggered ones; the finished
    runs, or ConfigError listing every problem."""
    by_deployment = parameters_by_deployment(state, parameters)
    deadline = time.monotonic() + timeout
    started = [
        (
            deployment,
            run_deployment(
                deployment.full_name,
                parameters=by_deployment[deployment.full_name],
                timeout=0,
                tags=[SMOKE_TAG],
                # Downstream triggers skip runs so named (prefect.yaml, ops/flows.py).
                flow_run_name=f"{SMOKE_RUN_PREFIX}{state.environment}",
                as_subflow=False,
            ),
        )
        for deployment in untriggered(state)
    ]
    with get_client(sync_client=True) as client:
        finished = [(d, *wait_for(client, run, deadline)) for d, run in started]
        waiting = {
            run.id: queued_behind(client, run)
            for _, run, pull in finished
            if not pull and run.state and (run.state.is_scheduled() or run.state.is_pending())
        }
        problems = [
            p
            for d, run, pull in finished
            if (p := outcome_problem(d, run, timeout, waiting.get(run.id), pull))
        ]
        problems += trigger_problems(client, state)
    # A run waiting behind others has exactly one problem, that it is queued: when those are
    # all the problems, nothing failed.
    queued = [run_id for run_id, ahead in waiting.items() if ahead]
    if problems and len(queued) == len(problems):
        raise SmokeQueuedError(
            "\n  ".join([f"'{state.environment}''s smoke runs are queued:", *problems])
        )
    if problems:
        raise ConfigError("\n  ".join([f"'{state.environment}' failed its smoke test:", *problems]))
    return [run for _, run, _ in finished]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smoke", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", required=True, help="the environment, as in config/<env>.yaml")
    parser.add_argument(
        "--parameters",
        default="",
        help="the runs' parameters, as JSON (default: config/orchestration.yaml's smoke:)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the runs")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    args = parser.parse_args(argv)
    try:
        if args.parameters.strip():
            parameters = json.loads(args.parameters)
        else:
            parameters = declared_parameters(args.env, args.root)
        if not isinstance(parameters, dict):
            raise ConfigError(f"--parameters must be a JSON object, not {args.parameters!r}.")
        smoke(read_state(args.env, args.root), parameters, args.timeout)
    except json.JSONDecodeError as error:
        parser.exit(2, f"smoke: --parameters is not JSON: {error}\n")
    except SmokeQueuedError as error:
        parser.exit(QUEUED_EXIT_CODE, f"smoke: {error}\n")
    except ConfigError as error:
        parser.exit(1, f"smoke: {error}\n")
    except Exception as error:
        if (refused := api_refusal(error)) is None:
            raise
        parser.exit(2, f"smoke: {refused}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
