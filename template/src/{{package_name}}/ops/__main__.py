"""`python -m <package>.ops reconcile --env ENV [--dry-run] [--prune]` | `validate`."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from prefect.settings import get_current_settings

from .._internal.config import ConfigError
from .deployments import deploy_environment
from .preflight import preflight
from .promote import builds_image, head_version, pinned_environment
from .reconcile import reconcile
from .state import read_state
from .validate import validate
from .versions import resolve_commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("reconcile", help="apply one environment's declared state")
    run.add_argument("--env", required=True, help="the environment, as in config/<env>.yaml")
    run.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    run.add_argument(
        "--skip-deploy", action="store_true", help="pools, limits and automations: no deployments"
    )
    run.add_argument(
        "--prune",
        action="store_true",
        help="also delete this environment's deployments and automations no longer declared",
    )
    run.add_argument(
        "--prebuilt-image",
        action="store_true",
        help="deploy the image already pushed for IMAGE_TAG: skip prefect.yaml's build and push",
    )
    run.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    check = commands.add_parser("validate", help="check prefect.yaml and config/, offline")
    check.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    args = parser.parse_args(argv)
    if args.command == "validate":
        problems = validate(args.root)
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    try:
        state = read_state(args.env, args.root)
    except ConfigError as error:
        parser.exit(2, f"ops: {error}\n")
    # A container runtime's image is built and pushed once here, then every deployment is
    # deployed with it pinned by digest: `prefect deploy` would build and push it once for each.
    # A plan compares with the image the registry already has for the commit, if any.
    pin_image = builds_image(state) and not (args.skip_deploy or args.prebuilt_image)
    build_once = pin_image and not args.dry_run
    try:
        if not args.dry_run:
            with deploy_environment(args.root):
                preflight(
                    state,
                    get_current_settings().api.url,
                    prebuilt_image=args.prebuilt_image,
                    root=args.root,
                )
        image: AbstractContextManager[None] = nullcontext()
        if pin_image:
            commit = resolve_commit(args.root)
            version = head_version(state, args.root, commit, build=build_once)
            image = pinned_environment(version)
        with image:
            reconcile(
                state,
                args.root,
                dry_run=args.dry_run,
                skip_deploy=args.skip_deploy,
                prune=args.prune,
                prebuilt_image=args.prebuilt_image or build_once,
            )
    except ConfigError as error:
        parser.exit(2, f"ops: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
