"""Command line: `python -m fleet update --to REF REPO...` (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from rich.console import Console

from fleet import repo as g
from fleet.adopt import BRANCH as ADOPT_BRANCH
from fleet.adopt import AdoptError, adopt
from fleet.interrupt import Stopper
from fleet.progress import progress
from fleet.report import exit_code, summary, write_reports
from fleet.status import print_status
from fleet.update import Options, default_branch, run_fleet


def add_repo_arguments(command: argparse.ArgumentParser, what: str) -> None:
    """REPO... and --repos-file, which every command reads the same way (read_repos_file)."""
    command.add_argument("repos", nargs="*", metavar="REPO", help=what)
    command.add_argument(
        "--repos-file", type=Path, metavar="FILE", help="one REPO per line, # comments"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fleet",
        description="Roll a Copier template version out to many generated repositories.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    update = commands.add_parser(
        "update",
        help="update repos to a template ref, each on a new branch",
        description=(
            "Update each REPO (local path, updated in place, or git URL, cloned under the "
            "report dir) to template REF on a new branch. Exit 0 when every repo is updated or "
            "already current, 1 otherwise, 2 on usage errors."
        ),
    )
    add_repo_arguments(update, "local path or git URL")
    update.add_argument("--to", required=True, metavar="REF", help="template tag/branch/commit")
    update.add_argument(
        "--template", metavar="SRC", help="template source overriding the answers' _src_path"
    )
    update.add_argument("--branch", metavar="NAME", help="default: template-update/REF")
    update.add_argument(
        "--jobs", "-j", type=_positive_int, default=os.cpu_count() or 1, metavar="N"
    )
    update.add_argument("--report", type=Path, default=Path("fleet-report"), metavar="DIR")
    checks = update.add_mutually_exclusive_group()
    checks.add_argument(
        "--check",
        metavar="CMD",
        help="shell command run in each updated repo (default: "
        "`make check` when the Makefile has a check target)",
    )
    checks.add_argument("--no-checks", action="store_true", help="run no checks")
    update.add_argument(
        "--check-timeout", type=float, default=1800.0, metavar="SECONDS", help="default 1800"
    )
    update.add_argument(
        "--trust", action="store_true", help="pass --trust to copier (tasks, migrations)"
    )
    update.add_argument(
        "--push",
        action="store_true",
        help="push each committed update branch and print the link that opens its PR/MR",
    )
    update.add_argument(
        "--lock-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a repo another fleet run holds (default: refuse at once)",
    )
    status = commands.add_parser(
        "status",
        help="inventory: template release, answers, dirty, open update branches (read-only)",
        description=(
            "Report each REPO's template release and how many releases it is behind, its "
            "answers, whether it is dirty or has an open update branch, and conflicts left by "
            "an update. Changes nothing and renders nothing."
        ),
    )
    add_repo_arguments(status, "local path")
    status.add_argument(
        "--format", choices=("markdown", "json"), default="markdown", help="default: markdown"
    )
    status.add_argument(
        "--template", metavar="SRC", help="where to read releases (default: each _src_path)"
    )
    adopt = commands.add_parser(
        "adopt",
        help="bring an existing Prefect 3 repository under the template, on a new branch",
        description=(
            "Render the template around the repository at PATH on branch adopt/copier-prefect "
            "(the default branch is left as it is): its flows and deployments are kept, and "
            "ADOPTION.md says what was inferred and moved. Exit 0 when adopted, 1 when refused."
        ),
    )
    adopt.add_argument("path", type=Path, metavar="PATH")
    adopt.add_argument(
        "--data", action="append", default=[], metavar="KEY=VALUE", help="answer (repeatable)"
    )
    adopt.add_argument("--template", metavar="SRC", help="default: this fleet's template")
    adopt.add_argument("--vcs-ref", metavar="REF", help="template ref (default: its HEAD)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "adopt":
        return _adopt(args, parser)
    repos = list(args.repos)
    if args.repos_file:
        try:
            repos += read_repos_file(args.repos_file)
        except OSError as exc:
            parser.error(f"--repos-file: {exc}")
    repos = _dedupe(repos)
    if not repos:
        parser.error("no repositories given")
    if args.command == "status":
        return print_status(repos, args.format, _absolute_if_local(args.template))
    return _update(args, repos)


def _update(args: argparse.Namespace, repos: list[str]) -> int:
    report_dir = args.report.resolve()
    options = Options(
        to_ref=args.to,
        branch=args.branch or default_branch(args.to),
        report_dir=report_dir,
        template=_absolute_if_local(args.template),
        check=args.check,
        run_checks=not args.no_checks,
        check_timeout=args.check_timeout,
        trust=args.trust,
        lock_wait=args.lock_wait,
        push=args.push,
    )
    console = Console()
    stopper = Stopper()
    with stopper.handling_signals(), progress(len(repos), console) as on_done:
        results = run_fleet(repos, options, args.jobs, on_done, stopper)
    _, md_path = write_reports(results, report_dir)
    for r in results:
        if r.pull_request:
            print(f"pull request for {r.repo}: {r.pull_request}", flush=True)
    code = exit_code(results)
    if stopper.signum is not None:
        code = 128 + stopper.signum  # the shell convention for "stopped by a signal"
    print(f"{summary(results)} — report: {md_path} — exit {code}", flush=True)
    return code


def _adopt(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    data = {}
    for item in args.data:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--data {item!r}: expected KEY=VALUE")
        data[key] = value
    try:
        report = adopt(args.path.resolve(), data, _absolute_if_local(args.template), args.vcs_ref)
    except AdoptError as error:
        print(f"refused: {error} (nothing changed)", flush=True)
        return 1
    print(f"adopted on branch {ADOPT_BRANCH}: read {report}", flush=True)
    return 0


def read_repos_file(path: Path) -> list[str]:
    repos = []
    for raw in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            repos.append(line)
    return repos


def _dedupe(repos: list[str]) -> list[str]:
    # Two workers on one checkout would fight over its branch and index.
    seen: set[str] = set()
    unique = []
    for spec in repos:
        key = spec if g.is_url(spec) else str(Path(spec).expanduser().resolve())
        if key not in seen:
            seen.add(key)
            unique.append(spec)
    return unique


def _absolute_if_local(src: str | None) -> str | None:
    # Copier stores _src_path as given: a relative path breaks every later update, and Renovate
    # reads only a git URL, so a local template is recorded as git+file:///absolute/path.
    if src is None or g.is_url(src) or not Path(src).expanduser().exists():
        return src
    return g.git_url(src)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value
