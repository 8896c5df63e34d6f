"""`python -m <package>.ops reconcile --env ENV [--dry-run] [--prune]` | `validate`.

A container runtime's image is built and pushed once per commit (ops/image.py), then every
deployment is deployed with it pinned by digest: `prefect deploy` would build and push it once
for each. The build and push start first, beside the import of Prefect and the flows (seconds of
CPU), so the image of a clean commit may reach the registry even when the preflight then
refuses the deploy: the next deploy of that commit reuses it.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from .._internal.config import ConfigError, read_yaml
from .versions import Version, image_tag, resolve_commit


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("reconcile", help="apply one environment's declared state")
    run.add_argument("--env", required=True, help="the environment, as in config/<env>.yaml")
    run.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    run.add_argument(
        "--skip-deploy",
        action="store_true",
        help="pools, limits, results block and automations: no deployments",
    )
    run.add_argument(
        "--prune",
        action="store_true",
        help="also delete this environment's deployments, automations, limits no longer declared",
    )
    run.add_argument(
        "--prebuilt-image",
        action="store_true",
        help="deploy the image already pushed for IMAGE_TAG: skip prefect.yaml's build and push",
    )
    run.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    check = commands.add_parser("validate", help="check prefect.yaml and config/, offline")
    check.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    return parser.parse_args(argv)


def api_answers() -> bool:
    """PREFECT_API_URL is set in the environment and answers: the one check worth making
    before a build starts, as a deploy to nowhere is the likeliest refusal."""
    import httpx  # Prefect's own HTTP client, imported by it anyway

    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url.startswith(("http://", "https://")):
        return False
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=10).is_success
    except httpx.HTTPError:
        return False


def publish_soon(root: Path, environment: str) -> tuple[str, Future[str]] | None:
    """HEAD's commit, and its image building and pushing in a thread; None when prefect.yaml
    builds no image (a process runtime) or the API does not answer yet."""
    if not read_yaml(root / "prefect.yaml").get("build") or not api_answers():
        return None
    from . import image  # container runtimes only

    commit = resolve_commit(root)
    return commit, image.publish_soon(root, image_tag(commit), environment)


def reconcile_environment(args: argparse.Namespace) -> None:
    deploys = not (args.dry_run or args.skip_deploy or args.prebuilt_image)
    publishing = publish_soon(args.root, args.env) if deploys else None
    # Imported once the image build has started: Prefect and the flows take seconds to load.
    from prefect.settings import get_current_settings

    from .deployments import deploy_environment
    from .preflight import preflight
    from .promote import builds_image, head_version, pinned_environment
    from .reconcile import reconcile
    from .state import read_state

    state = read_state(args.env, args.root)
    if not args.dry_run:
        with deploy_environment(args.root):
            preflight(
                state,
                get_current_settings().api.url,
                prebuilt_image=args.prebuilt_image,
                root=args.root,
            )
    pins_image = builds_image(state) and not (args.skip_deploy or args.prebuilt_image)
    image: AbstractContextManager[None] = nullcontext()
    if publishing is not None:
        commit, digest = publishing
        image = pinned_environment(Version(commit, digest.result()))
    elif pins_image:
        # Built now when it could not start early; a plan compares with the image the
        # registry already has for the commit, if any.
        commit = resolve_commit(args.root)
        image = pinned_environment(head_version(state, args.root, commit, build=deploys))
    with image:
        reconcile(
            state,
            args.root,
            dry_run=args.dry_run,
            skip_deploy=args.skip_deploy,
            prune=args.prune,
            prebuilt_image=args.prebuilt_image or (pins_image and deploys),
        )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "validate":
        from .validate import validate

        problems = validate(args.root)
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    try:
        reconcile_environment(args)
    except ConfigError as error:
        print(f"ops: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as error:
        # A credential the API refuses: the setting to fix, not a PrefectHTTPStatusError trace.
        from .preflight import api_refusal

        if (refused := api_refusal(error)) is None:
            raise
        print(f"ops: {refused}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
