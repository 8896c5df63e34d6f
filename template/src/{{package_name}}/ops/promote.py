"""`python -m <package>.ops.promote --env ENV [--to COMMIT]`: what `make deploy` and
`make rollback` run.

- The first environment deploys HEAD. For a container runtime, the commit's image is built
  and pushed once (ops/image.py) and deployed by its digest.
- Every later environment deploys only what the one before it runs and has run: HEAD must be
  on the default branch (`git merge-base --is-ancestor`), the previous environment's
  deployment must run this commit, and a run of that version must have Completed there (the
  smoke run CI makes after each deploy). Both are read from the previous environment's
  Prefect API, which only its deploys write, never from a variable: with one API for every
  environment (`api_topology: shared` in config/orchestration.yaml) this process's own; with
  one per environment (`per-environment`) the previous environment's, with the read
  credential in PREFECT_API_URL_<ENV>, PREFECT_API_KEY_<ENV> or PREFECT_API_AUTH_STRING_<ENV>
  and PREFECT_API_SSL_CERT_FILE_<ENV> (README.md, "Topologies"). The image is the previous
  environment's, by digest: nothing is built.
- `--to COMMIT` (make rollback) redeploys an earlier commit's image, by the digest recorded in
  the version of a Completed run of this project: nothing is built, no gate applies.

Each deployment's version is `<commit>[@<digest>]` (ops/versions.py). Then the environment is
reconciled as `ops reconcile` does it, with its preflight.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings

from .._internal.config import ConfigError, read_yaml
from .api_access import (
    ApiAccess,
    check_access,
    current_access,
    environment_access,
    named_api_errors,
)
from .deployments import deploy_environment
from .preflight import preflight
from .reconcile import reconcile
from .smoke import pipeline_deployment
from .state import ENV_TAG_PREFIX, DesiredState, read_state
from .versions import VERSION_VAR, Version, git, image_tag, resolve_commit

# Runs read back when looking for a version: the newest first, enough for weeks of deploys.
RUNS_SEARCHED = 200
TOPOLOGIES = ("shared", "per-environment")


def api_topology(root: Path) -> str:
    """config/orchestration.yaml's api_topology: one API for every environment, or one each."""
    topology = read_yaml(root / "config" / "orchestration.yaml").get("api_topology", "shared")
    if topology not in TOPOLOGIES:
        raise ConfigError(
            f"config/orchestration.yaml: api_topology is '{topology}', not one of "
            f"{', '.join(TOPOLOGIES)}."
        )
    return topology


def evidence_access(root: Path, previous: str) -> ApiAccess | None:
    """Where the previous environment's evidence is read: None for this process's own API
    (one API for all), else the previous environment's own API and read credential."""
    if api_topology(root) == "shared":
        return None
    return environment_access(previous)


def promotion_order(root: Path) -> list[str]:
    """The environments in prefect.yaml's order, which is the promotion order."""
    order: list[str] = []
    for spec in read_yaml(root / "prefect.yaml").get("deployments") or []:
        for tag in spec.get("tags") or []:
            name = tag.removeprefix(ENV_TAG_PREFIX)
            if tag.startswith(ENV_TAG_PREFIX) and name not in order:
                order.append(name)
    return order


def previous_environment(environment: str, root: Path) -> str | None:
    order = promotion_order(root)
    if environment not in order:
        raise ConfigError(f"prefect.yaml has no deployment tagged 'env:{environment}'.")
    index = order.index(environment)
    return order[index - 1] if index else None


def check_on_default_branch(root: Path, commit: str, branch: str) -> None:
    for ref in (f"origin/{branch}", branch):
        if git(root, "rev-parse", "--verify", "--quiet", ref).returncode == 0:
            break
    else:
        raise ConfigError(
            f"neither origin/{branch} nor {branch} is known here: fetch the default branch "
            "(CI clones shallow by default) so the promotion can check the commit is on it."
        )
    if git(root, "merge-base", "--is-ancestor", commit, ref).returncode != 0:
        raise ConfigError(
            f"commit {commit[:12]} is not on the default branch ({ref}): only what was merged "
            "is promoted."
        )


def completed_runs(client: SyncPrefectClient, flow_run_filter: FlowRunFilter) -> list[FlowRun]:
    flow_run_filter.state = FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.COMPLETED])
    )
    return client.read_flow_runs(
        flow_run_filter=flow_run_filter, sort=FlowRunSort.START_TIME_DESC, limit=RUNS_SEARCHED
    )


def completed_run_at(
    client: SyncPrefectClient, deployment_id: UUID, version: Version
) -> FlowRun | None:
    """A Completed run of the deployment at exactly this version: the evidence a promotion
    takes from the previous environment. The one place that decides what counts."""
    runs = completed_runs(
        client, FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    )
    return next((run for run in runs if run.deployment_version == str(version)), None)


def gate(client: SyncPrefectClient, state: DesiredState, previous: str, commit: str) -> Version:
    """The previous environment's version of commit, if it runs it and has run it; else
    ConfigError saying what is missing."""
    name = pipeline_deployment(state).flow_name + "/" + previous
    try:
        deployment = client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise ConfigError(f"{name} does not exist: deploy '{previous}' first.") from None
    version = Version.parse(deployment.version)
    if version is None or version.commit != commit:
        raise ConfigError(
            f"'{previous}' runs {deployment.version or 'no recorded version'}, not {commit[:12]}:"
            f" deploy this commit to '{previous}' and smoke-run it there first."
        )
    if completed_run_at(client, deployment.id, version) is None:
        raise ConfigError(
            f"no run of {name} at version {version} has Completed: smoke-run it "
            f"(make smoke ENV={previous}) before promoting."
        )
    return version


def rollback_version(client: SyncPrefectClient, state: DesiredState, commit: str) -> Version:
    """The version of commit that completed a run of this project, in any environment."""
    runs = completed_runs(client, FlowRunFilter(tags=FlowRunFilterTags(all_=[state.project_tag])))
    for run in runs:
        version = Version.parse(run.deployment_version)
        if version is not None and version.commit == commit:
            return version
    raise ConfigError(
        f"no Completed run of {state.project} at commit {commit[:12]} among the last "
        f"{RUNS_SEARCHED}: there is no image of it known to have worked."
    )


def builds_image(state: DesiredState) -> bool:
    return bool(state.project_file.get("build"))


def pinned(version: Version, image_tag: str) -> dict[str, str]:
    """The deploy variables that make prefect.yaml name exactly this version."""
    variables = {VERSION_VAR: str(version)}
    if version.digest:
        # A tag with a digest: the runtime pulls the digest; the tag stays readable.
        variables["IMAGE_TAG"] = f"{image_tag}@{version.digest}"
    return variables


@contextmanager
def pinned_environment(version: Version) -> Iterator[None]:
    """os.environ with the deploy variables of this version, as it was afterwards."""
    variables = pinned(version, version.commit[:12])
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def choose_version(
    client: SyncPrefectClient,
    state: DesiredState,
    root: Path,
    *,
    to: str | None,
    default_branch: str,
) -> Version:
    if to:
        commit = resolve_commit(root, to)
        if not builds_image(state):
            raise ConfigError(
                "a process worker runs its own checkout: roll back by checking out "
                f"{commit[:12]} there, then make reconcile."
            )
        version = rollback_version(client, state, commit)
        if not version.digest:
            raise ConfigError(f"version {version} records no image digest to roll back to.")
        return version
    commit = resolve_commit(root)
    previous = previous_environment(state.environment, root)
    if previous is not None:
        check_on_default_branch(root, commit, default_branch)
        return previous_gate(client, state, root, previous, commit)
    return head_version(state, root, commit)


def previous_gate(
    client: SyncPrefectClient, state: DesiredState, root: Path, previous: str, commit: str
) -> Version:
    """gate() on the API the previous environment's evidence lives on."""
    access = evidence_access(root, previous)
    if access is None:
        return gate(client, state, previous, commit)
    check_access(access)  # names PREFECT_API_URL_<ENV> and its credential, never a value
    with access.client() as evidence, named_api_errors(access):
        return gate(evidence, state, previous, commit)


def head_version(state: DesiredState, root: Path, commit: str, *, build: bool = True) -> Version:
    """commit's version as the first environment deploys it: for a container runtime with the
    digest of its image, built and pushed once (ops/image.py) unless the registry has it.
    Without build, the digest only when the registry has the image (what a plan compares)."""
    if not builds_image(state):
        return Version(commit)
    from . import image  # container runtimes only

    tag = image_tag(commit)
    if not build:
        return Version(commit, image.pushed_digest(state, tag) or "")
    return Version(commit, image.publish(state, root, tag))


def deploy(environment: str, root: Path, *, to: str | None, default_branch: str) -> Version:
    state = read_state(environment, root)
    api_url = get_current_settings().api.url
    # Before any read: an empty URL would read a temporary local API, a refused credential
    # would fail mid-way with a traceback.
    check_access(current_access())
    with get_client(sync_client=True) as client, named_api_errors():
        version = choose_version(client, state, root, to=to, default_branch=default_branch)
    print(f"Deploying '{environment}' at version {version}.")
    with pinned_environment(version), deploy_environment(root), named_api_errors():
        preflight(state, api_url, prebuilt_image=builds_image(state), root=root)
        reconcile(state, root, dry_run=False, skip_deploy=False, prebuilt_image=builds_image(state))
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promote", description=__doc__)
    parser.add_argument("--env", required=True, help="the environment, as in config/<env>.yaml")
    parser.add_argument("--to", help="roll back to this commit's image (make rollback)")
    parser.add_argument(
        "--default-branch",
        default=os.environ.get("DEFAULT_BRANCH") or "main",
        help="the branch every promoted commit must be on (default: $DEFAULT_BRANCH or main)",
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    args = parser.parse_args(argv)
    try:
        deploy(args.env, args.root, to=args.to, default_branch=args.default_branch)
    except ConfigError as error:
        parser.exit(2, f"promote: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
