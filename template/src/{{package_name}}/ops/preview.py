"""`python -m <package>.ops.preview --request N [--close]`: a pull or merge request's own
deployments, so a reviewer can run the change before it merges.

- Open (again on every push): the first environment's pipeline deployments, named `pr-<N>`,
  on that environment's work pool, every schedule off, tagged `preview` and `env:pr-<N>`, at
  the request's commit (for a container runtime, its image, built and pushed once, by digest;
  a process worker clones that commit).
- Close: delete every deployment tagged `project:<project>` and `env:pr-<N>`, as
  `reconcile --prune` deletes what is no longer declared.
- `--close-merged` closes the request HEAD's merge commit names, and `--prune-days D` the
  previews nobody updated for D days: for CI systems with no event when a request closes.
"""

from __future__ import annotations

import argparse
import re
from copy import deepcopy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags
from prefect.client.schemas.responses import DeploymentResponse
from prefect.settings import get_current_settings

from .._internal.config import ConfigError
from .deployments import deploy_environment
from .preflight import api_refusal, check_api, preflight
from .promote import builds_image, pinned_environment, promotion_order
from .reconcile import delete_deployment, deploy
from .state import ENV_TAG_PREFIX, Deployment, DesiredState, read_state
from .versions import Version, git, resolve_commit

PREVIEW_TAG = "preview"
REQUEST = re.compile(r"^[0-9]+$")
# The request a merge commit names, in each platform's default message.
MERGED_REQUEST = re.compile(
    r"(?:Merge pull request #|\(pull request #|Merged PR |See merge request \S*!)([0-9]+)"
)


def preview_name(request: str) -> str:
    if not REQUEST.match(request):
        raise ConfigError(f"--request must be a request number, not '{request}'.")
    return f"pr-{request}"


def preview_state(state: DesiredState, name: str) -> DesiredState:
    """The first environment's pipeline deployments as the request's: downstream deployments
    stay out, since their triggers follow their own environment's runs."""
    deployments = []
    for deployment in state.deployments:
        if deployment.spec.get("triggers"):
            continue
        spec = deepcopy(deployment.spec)
        tags = [t for t in spec.get("tags") or [] if not t.startswith(ENV_TAG_PREFIX)]
        spec.update(name=name, tags=[*tags, ENV_TAG_PREFIX + name, PREVIEW_TAG], schedules=[])
        deployments.append(replace(deployment, name=name, spec=spec))
    return replace(state, environment=name, deployments=deployments)


def open_preview(root: Path, request: str) -> list[Deployment]:
    first = promotion_order(root)[0]
    state = preview_state(read_state(first, root), preview_name(request))
    api_url = get_current_settings().api.url
    check_api(api_url)
    commit = resolve_commit(root)
    version = Version(commit)
    if builds_image(state):
        from . import image  # container runtimes only

        version = Version(commit, image.publish(state, root, commit[:12]))
    with pinned_environment(version), deploy_environment(root):
        preflight(state, api_url, prebuilt_image=builds_image(state), root=root)
        deploy(
            root,
            [d.deploy_name for d in state.deployments],
            prebuilt_image=builds_image(state),
            deployments=[d.spec for d in state.deployments],
        )
    return state.deployments


def previews(client: SyncPrefectClient, project: str, *tags: str) -> list[DeploymentResponse]:
    tag_filter = DeploymentFilterTags(all_=[f"project:{project}", PREVIEW_TAG, *tags])
    return client.read_deployments(deployment_filter=DeploymentFilter(tags=tag_filter))


def close_previews(
    root: Path, *, request: str | None = None, idle_days: float | None = None
) -> int:
    """Delete the request's previews, or those idle longer than idle_days; how many."""
    state = read_state(promotion_order(root)[0], root)
    check_api(get_current_settings().api.url)
    tags = [ENV_TAG_PREFIX + preview_name(request)] if request else []
    deleted = 0
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        for deployment in previews(client, state.project, *tags):
            idle = now - (deployment.updated or deployment.created or now)
            if idle_days is not None and idle < timedelta(days=idle_days):
                continue
            delete_deployment(client, deployment.id)
            print(f"Deleted preview deployment {deployment.name} ({deployment.id}).")
            deleted += 1
    return deleted


def merged_request(root: Path) -> str | None:
    message = git(root, "log", "-1", "--format=%B").stdout
    found = MERGED_REQUEST.search(message)
    return found.group(1) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="preview", description=__doc__)
    parser.add_argument("--request", help="the pull or merge request's number")
    parser.add_argument("--close", action="store_true", help="delete the request's previews")
    parser.add_argument(
        "--close-merged", action="store_true", help="close the request HEAD's merge names"
    )
    parser.add_argument("--prune-days", type=float, help="also close previews idle this long")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    args = parser.parse_args(argv)
    try:
        if args.close_merged or args.prune_days is not None:
            if args.close_merged and (request := merged_request(args.root)):
                close_previews(args.root, request=request)
            if args.prune_days is not None:
                close_previews(args.root, idle_days=args.prune_days)
        elif not args.request:
            parser.error("--request is required to open or close a preview")
        elif args.close:
            close_previews(args.root, request=args.request)
        else:
            for deployment in open_preview(args.root, args.request):
                print(f"Preview {deployment.full_name} is deployed: schedules off.")
    except ConfigError as error:
        parser.exit(2, f"preview: {error}\n")
    except Exception as error:
        if (refused := api_refusal(error)) is None:
            raise
        parser.exit(2, f"preview: {refused}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
