"""Per-repo result records and the report.json / report.md writers."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path


class Status(StrEnum):
    UPDATED = "updated"
    UPDATED_WITH_CONFLICTS = "updated-with-conflicts"
    CHECKS_FAILED = "checks-failed"
    SKIPPED_DIRTY = "skipped-dirty"
    SKIPPED_CURRENT = "skipped-current"
    SKIPPED_BRANCH_EXISTS = "skipped-branch-exists"
    SKIPPED_NOT_A_COPIER_REPO = "skipped-not-a-copier-repo"
    SKIPPED_LOCKED = "skipped-locked"
    INTERRUPTED = "interrupted"
    ERROR = "error"


# Every other status leaves a repo needing a human, so it fails the run.
SUCCESS_STATUSES = frozenset({Status.UPDATED, Status.SKIPPED_CURRENT})


@dataclass
class Checks:
    command: str
    returncode: int | None  # None: killed on timeout
    seconds: float
    tail: str


@dataclass
class RepoResult:
    repo: str
    to_ref: str
    status: Status = Status.ERROR
    path: str | None = None
    from_commit: str | None = None
    branch: str | None = None
    conflicts: list[str] = field(default_factory=list)
    checks: Checks | None = None
    seconds: float = 0.0
    message: str | None = None
    pull_request: str | None = None  # with --push: the link that opens the PR/MR


def exit_code(results: list[RepoResult]) -> int:
    return 0 if all(r.status in SUCCESS_STATUSES for r in results) else 1


def summary(results: list[RepoResult]) -> str:
    counts = Counter(r.status for r in results)
    return ", ".join(f"{counts[s]} {s}" for s in Status if counts[s])


def prepare_dir(directory: Path) -> None:
    """Create the report folder, ignored by git from inside (it may sit in a fleet repo)."""
    directory.mkdir(parents=True, exist_ok=True)
    ignore = directory / ".gitignore"
    # Never in a repository's own top level (`--report .`): `*` there would hide the repository.
    if not ignore.exists() and not (directory / ".git").exists():
        # `*` ignores the folder itself too: a run from inside a repository it updates (the
        # default folder is ./fleet-report) must not make that repository dirty next time.
        ignore.write_text("# Written by python -m fleet: reports, logs, clones.\n*\n")


def write_reports(results: list[RepoResult], directory: Path) -> tuple[Path, Path]:
    """Write report-<UTC time>.json and .md; never over an earlier run's files."""
    prepare_dir(directory)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in itertools.count(1):
        stem = f"report-{stamp}" if n == 1 else f"report-{stamp}-{n}"
        json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
        try:
            # Exclusive creation: two runs finishing in the same second get distinct names.
            with json_path.open("x") as f:
                f.write(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        except FileExistsError:
            continue
        if md_path.exists():
            json_path.unlink()
            continue
        md_path.write_text(render_markdown(results))
        return json_path, md_path
    raise AssertionError("unreachable")


def render_markdown(results: list[RepoResult]) -> str:
    refs = sorted({r.to_ref for r in results})
    lines = [
        f"# Template rollout to {', '.join(f'`{ref}`' for ref in refs)}",
        "",
        f"{len(results)} repositories: {summary(results)}.",
        "",
        "| Repo | Status | From | Branch | Conflicts | Checks | Seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [
            r.repo,
            f"**{r.status}**" if r.status not in SUCCESS_STATUSES else str(r.status),
            r.from_commit or "",
            r.branch or "",
            str(len(r.conflicts)) if r.conflicts else "",
            _checks_cell(r.checks),
            f"{r.seconds:.1f}",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")

    details = [r for r in results if r.conflicts or r.checks or r.message or r.pull_request]
    if details:
        lines += ["", "## Details"]
    for r in details:
        lines += ["", f"### {r.repo}", "", f"- Status: `{r.status}`"]
        if r.path:
            lines.append(f"- Worktree: `{r.path}`")
        if r.message:
            lines.append(f"- Message: {r.message}")
        if r.pull_request:
            lines.append(f"- Pushed `{r.branch}`; open the pull request: <{r.pull_request}>")
        if r.conflicts:
            lines.append(f"- Conflicts, left uncommitted on `{r.branch}`; resolve, then commit:")
            lines += [f"  - `{path}`" for path in r.conflicts]
        if r.checks:
            lines += [
                f"- Checks: `{r.checks.command}` -> {_checks_cell(r.checks)}"
                f" in {r.checks.seconds:.1f} s",
                "",
                *_fenced(r.checks.tail),
            ]
    return "\n".join(lines) + "\n"


def _checks_cell(checks: Checks | None) -> str:
    if checks is None:
        return ""
    if checks.returncode is None:
        return "timed out"
    return "passed" if checks.returncode == 0 else f"exit {checks.returncode}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fenced(text: str) -> list[str]:
    # The tail is arbitrary tool output: the fence must be longer than any backtick run in it.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text.rstrip("\n"), fence]
