"""Progress output: a rich bar on a terminal, one plain line per repo elsewhere (CI logs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from fleet.report import SUCCESS_STATUSES, RepoResult, Status

_STYLE = {
    Status.UPDATED: "green",
    Status.SKIPPED_CURRENT: "dim",
    Status.UPDATED_WITH_CONFLICTS: "yellow",
    Status.CHECKS_FAILED: "red",
    Status.ERROR: "bold red",
}


def describe(result: RepoResult) -> str:
    extra = ""
    if result.conflicts:
        extra = f" — {len(result.conflicts)} conflicted: {', '.join(result.conflicts)}"
    elif result.status is Status.CHECKS_FAILED and result.checks:
        extra = f" — `{result.checks.command}` exited {result.checks.returncode}"
    elif result.message:
        extra = f" — {result.message.splitlines()[0]}"
    return f"{result.status:<26} {result.repo} ({result.seconds:.1f}s){extra}"


@contextmanager
def progress(total: int, console: Console) -> Iterator[Callable[[RepoResult], None]]:
    """Yield the callback to call once per finished repo (from a single thread)."""
    if not console.is_terminal:
        done = 0

        def plain(result: RepoResult) -> None:
            nonlocal done
            done += 1
            print(f"[{done}/{total}] {describe(result)}", flush=True)

        yield plain
        return

    columns = (
        SpinnerColumn(),
        TextColumn("updating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("updating", total=total)

        def rich_line(result: RepoResult) -> None:
            style = _STYLE.get(result.status, "yellow")
            mark = "✓" if result.status in SUCCESS_STATUSES else "✗"
            bar.console.print(f"[{style}]{mark} {escape(describe(result))}[/]", highlight=False)
            bar.advance(task)

        yield rich_line
