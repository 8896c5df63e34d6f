"""Command line: `python -m fleet update --to REF REPO...` (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from rich.console import Console

from fleet import repo as g
from fleet.progress import progress
from fleet.report import exit_code, summary, write_reports
from fleet.update import Options, default_branch, run_fleet


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
    update.add_argument("repos", nargs="*", metavar="REPO", help="local path or git URL")
    update.add_argument(
        "--repos-file", type=Path, metavar="FILE", help="one REPO per line, # comments"
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    repos = list(args.repos)
    if args.repos_file:
        try:
            repos += read_repos_file(args.repos_file)
        except OSError as exc:
            parser.error(f"--repos-file: {exc}")
    repos = _dedupe(repos)
    if not repos:
        parser.error("no repositories given")

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
    )
    console = Console()
    with progress(len(repos), console) as on_done:
        results = run_fleet(repos, options, args.jobs, on_done)
    _, md_path = write_reports(results, report_dir)
    code = exit_code(results)
    print(f"{summary(results)} — report: {md_path} — exit {code}", flush=True)
    return code


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
    # Copier stores _src_path as given, and a relative one breaks every later update.
    if src is None or g.is_url(src) or not Path(src).expanduser().exists():
        return src
    return str(Path(src).expanduser().resolve())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value
