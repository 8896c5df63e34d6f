"""`python -m <package>.ops.promote --env ENV [--to COMMIT]`: what `make deploy` and
`make rollback` run.

- The first environment deploys HEAD. For a container runtime, the commit's image is built
  and pushed once (ops/image.py) and deployed by its digest.
- Every later environment deploys only what the one before it runs and has run: HEAD must be
  on the default branch (`git merge-base --is-ancestor`), each of the previous environment's
  deployments must run this commit, and for each one no trigger starts a run of that version
  must have Completed there, labelled by its own code with this commit (the smoke runs CI
  makes after each deploy; _internal/provenance.py). Both are read from
  the previous environment's Prefect API, which only its deploy and its workers write, never
  from a variable: the deploying job's own API when environments share one, else the previous
  environment's, with read credentials (ops/topology.py). The image is the previous
  environment's, by digest: nothing is built. Where this environment's registry is another
  one (copier's environment_registries), that digest is first copied into it (ops/image.py
  promote(), ops/registry_copy.py).
- `--to COMMIT` (make rollback) redeploys an earlier commit that this environment itself
  completed a run of (however long ago; on a shared API a run in another environment does
  not count): its image by the digest that run's version records, which this environment's
  registry received when it was promoted (nothing is built or copied), or for the process
  runtime the commit itself, which the worker clones. It deploys that commit's own
  prefect.yaml, config/ and flows.yaml, from a checkout of it (rollback_tree): HEAD's could
  name parameters, entrypoints or job variables the old image does not have. No gate
  applies.

Each deployment's version is `<commit>[@<digest>]` (ops/versions.py). Then the environment is
reconciled as `ops reconcile` does it, with its preflight.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

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
from .._internal.provenance import recorded_commit
from .deployments import REPOSITORY_VAR, deploy_environment, repository_url
from .flows import environment_order
from .preflight import api_refusal, check_api, preflight
from .reconcile import reconcile
from .state import Deployment, DesiredState, read_state
from .topology import evidence_client
from .versions import VERSION_VAR, Version, git, image_tag, resolve_commit

# Runs read back per request when looking for a version, the newest first: the gate reads one
# page (smoke runs are recent), rollback pages on until it finds the commit.
RUNS_SEARCHED = 200


def promotion_order(root: Path) -> list[str]:
    """The environments in prefect.yaml's order, which is the promotion order."""
    return environment_order(read_yaml(root / "prefect.yaml"))


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


def only_completed(flow_run_filter: FlowRunFilter) -> FlowRunFilter:
    flow_run_filter.state = FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.COMPLETED])
    )
    return flow_run_filter


def completed_runs(
    client: SyncPrefectClient,
    flow_run_filter: FlowRunFilter,
    *,
    offset: int = 0,
    limit: int = RUNS_SEARCHED,
) -> list[FlowRun]:
    return client.read_flow_runs(
        flow_run_filter=only_completed(flow_run_filter),
        sort=FlowRunSort.START_TIME_DESC,
        limit=limit,
        offset=offset,
    )


def counterparts(
    state: DesiredState, previous: DesiredState
) -> list[tuple[Deployment, Deployment | None]]:
    """Each of this environment's deployments with the previous environment's deployment of the
    same flow (the first with the first, when a flow has several), or None."""
    left = {
        d.flow_name: [p for p in previous.deployments if p.flow_name == d.flow_name]
        for d in state.deployments
    }
    return [(d, left[d.flow_name].pop(0) if left[d.flow_name] else None) for d in state.deployments]


def evidence_problem(
    client: SyncPrefectClient, name: str, previous: str, commit: str, *, smoked: bool
) -> tuple[Version | None, str | None]:
    """The version the previous environment's deployment `name` runs, or what is missing: the
    deployment, this commit on it, and (for one no trigger starts) a Completed run of it."""
    try:
        deployment = client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None, f"{name} does not exist: deploy '{previous}' first."
    version = Version.parse(deployment.version)
    if version is None or version.commit != commit:
        return None, (
            f"'{previous}' runs {deployment.version or 'no recorded version'}, not "
            f"{commit[:12]} ({name}): deploy this commit to '{previous}' and smoke-run it "
            "there first."
        )
    if not smoked:
        return version, None  # started by its trigger: smoke runs never start it
    runs = completed_runs(
        client, FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]))
    )
    at_version = [run for run in runs if run.deployment_version == str(version)]
    if not at_version:
        return None, (
            f"no run of {name} at version {version} has Completed: smoke-run it "
            f"(make smoke ENV={previous}) before promoting."
        )
    # The deployment's version is what CI wrote; the run's label is what its code said it ran.
    if not any(recorded_commit(run) == commit for run in at_version):
        found = sorted({recorded_commit(run) or "none" for run in at_version})
        return None, (
            f"no Completed run of {name} at version {version} recorded running {commit[:12]} "
            f"(recorded: {', '.join(c[:12] for c in found)}): smoke-run it "
            f"(make smoke ENV={previous}) on a worker that runs the deployed code."
        )
    return version, None


def gate(
    client: SyncPrefectClient, state: DesiredState, previous: str, commit: str, root: Path
) -> Version:
    """The version of commit the previous environment runs in every deployment this one will
    have, each smoke-run there unless a trigger starts it; else ConfigError listing what is
    missing."""
    previous_state = read_state(previous, root)
    problems, versions = [], []
    for deployment, counterpart in counterparts(state, previous_state):
        if counterpart is None:
            problems.append(
                f"'{previous}' declares no deployment of flow {deployment.flow_name}: "
                f"{deployment.full_name} has nothing to be promoted from."
            )
            continue
        smoked = not counterpart.spec.get("triggers")
        version, problem = evidence_problem(
            client, counterpart.full_name, previous, commit, smoked=smoked
        )
        if problem:
            problems.append(problem)
        elif version is not None:
            versions.append(version)
    if not problems and len({str(v) for v in versions}) > 1:
        found = ", ".join(sorted({str(v) for v in versions}))
        problems.append(f"'{previous}' runs several versions of {commit[:12]} ({found}).")
    if problems:
        raise ConfigError("\n  ".join([f"'{previous}' is not ready to promote:", *problems]))
    return versions[0]


def rollback_version(
    client: SyncPrefectClient, state: DesiredState, commit: str, *, page: int = RUNS_SEARCHED
) -> Version:
    """The newest version of commit that completed a run of this project's deployments in
    state's environment (the runs carry their deployment's tags), however old. Only this
    environment's runs count, also when environments share one API: a commit only an earlier
    environment ran never passed this one's gate, and its image may not be in this
    environment's registry (nothing is copied on a rollback). Completed runs are read a page
    at a time, the newest first, until one ran commit or none is left. Prefect 3.9 filters
    flow runs by neither deployment version nor label, so the search is by offset, bounded by
    the count of Completed runs when it starts (runs completing meanwhile only shift pages:
    older ones are read twice, never skipped)."""
    tags = FlowRunFilterTags(all_=[state.project_tag, state.environment_tag])
    runs_filter = only_completed(FlowRunFilter(tags=tags))
    total = client.count_flow_runs(flow_run_filter=runs_filter)
    offset = 0
    while offset <= total:
        runs = completed_runs(client, runs_filter, offset=offset, limit=page)
        for run in runs:
            version = Version.parse(run.deployment_version)
            if version is not None and version.commit == commit:
                return version
        if len(runs) < page:
            break
        offset += page
    raise ConfigError(
        f"no Completed run of {state.project} in '{state.environment}' at commit "
        f"{commit[:12]} among its {total} Completed runs there: '{state.environment}' never "
        "ran it, so there is no version of it known to have worked here; nothing was deployed."
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
        version = rollback_version(client, state, commit)
        if builds_image(state) and not version.digest:
            raise ConfigError(f"version {version} records no image digest to roll back to.")
        return version
    commit = resolve_commit(root)
    previous = previous_environment(state.environment, root)
    if previous is None:
        return head_version(state, root, commit)
    check_on_default_branch(root, commit, default_branch)
    if not builds_image(state):
        return previous_version(client, state, root, previous, commit)
    from . import image  # container runtimes only

    environments = [previous, state.environment]
    if problems := image.platform_problems(state.project_file, root, environments):
        raise ConfigError(problems[-1])
    version = previous_version(client, state, root, previous, commit)
    image.promote(state, root, previous, version)  # into this environment's registry
    return version


def previous_version(
    client: SyncPrefectClient, state: DesiredState, root: Path, previous: str, commit: str
) -> Version:
    """The gate's version of commit, read from wherever the previous environment's evidence
    lives (ops/topology.py)."""
    with evidence_client(client, previous) as reader:
        return gate(reader, state, previous, commit, root)


def head_version(state: DesiredState, root: Path, commit: str, *, build: bool = True) -> Version:
    """commit's version as the first environment deploys it: for a container runtime with the
    digest of its image, built and pushed once (ops/image.py) unless the registry has it.
    Without build, the digest only when the registry has the image (what a plan compares)."""
    if not builds_image(state):
        return Version(commit)
    from . import image  # container runtimes only

    tag = image_tag(commit)
    if not build:
        return Version(commit, image.pushed_digest(state, root, tag) or "")
    return Version(commit, image.publish(state, root, tag))


@contextmanager
def rollback_tree(root: Path, commit: str) -> Iterator[Path]:
    """A checkout of commit (`git worktree add --detach`, outside the repository), removed
    afterwards: a rollback deploys that commit's own prefect.yaml, config/ and flows.yaml
    with its image, since HEAD's may name parameters, entrypoints or job variables the old
    image lacks. Process workers still clone this repository (DEPLOY_REPOSITORY), at commit.
    This process's code is HEAD's: a flow named by a module path is imported from the
    installed package to read its parameter schema, so the schema sent is HEAD's flow's."""
    parent = Path(tempfile.mkdtemp(prefix="rollback-"))
    tree = parent / "tree"
    added = git(root, "worktree", "add", "--detach", "--quiet", str(tree), commit)
    if added.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        raise ConfigError(
            f"could not check out {commit[:12]} to deploy its prefect.yaml: "
            f"{added.stderr.strip()}; nothing was deployed."
        )
    saved = os.environ.get(REPOSITORY_VAR)
    os.environ[REPOSITORY_VAR] = saved or repository_url(root, os.environ)
    try:
        yield tree
    finally:
        if saved is None:
            os.environ.pop(REPOSITORY_VAR, None)
        else:
            os.environ[REPOSITORY_VAR] = saved
        git(root, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(parent, ignore_errors=True)
        git(root, "worktree", "prune")


def deploy(environment: str, root: Path, *, to: str | None, default_branch: str) -> Version:
    state = read_state(environment, root)
    api_url = get_current_settings().api.url
    check_api(api_url)  # before any read: an empty URL would read a temporary local API
    with get_client(sync_client=True) as client:
        version = choose_version(client, state, root, to=to, default_branch=default_branch)
    print(f"Deploying '{environment}' at version {version}.")
    tree = rollback_tree(root, version.commit) if to else nullcontext(root)
    with tree as source, pinned_environment(version), deploy_environment(source):
        if source != root:
            print(f"From {version.commit[:12]}'s own prefect.yaml and config/.")
            state = read_state(environment, source)
        prebuilt = builds_image(state)
        preflight(state, api_url, prebuilt_image=prebuilt, root=source)
        reconcile(state, source, dry_run=False, skip_deploy=False, prebuilt_image=prebuilt)
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
    except Exception as error:
        if (refused := api_refusal(error)) is None:
            raise
        parser.exit(2, f"promote: {refused}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
