"""The per-repo update pipeline, and the thread pool that runs it over a fleet."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from fleet import repo as g
from fleet.report import Checks, RepoResult, Status

TAIL_LINES = 60
TAIL_CHARS = 6000


@dataclass(frozen=True)
class Options:
    to_ref: str
    branch: str
    report_dir: Path
    template: str | None = None
    check: str | None = None  # None: `make check` when the repo's Makefile has that target
    run_checks: bool = True
    check_timeout: float = 1800.0
    trust: bool = False

    @property
    def workdir(self) -> Path:
        """Where URL repos are cloned."""
        return self.report_dir / "repos"


def default_branch(to_ref: str) -> str:
    return f"template-update/{to_ref}"


def copier_update_command(to_ref: str, *, trust: bool = False) -> list[str]:
    # A subprocess, not copier.run_update(): copier chdir()s the whole process while it works,
    # so concurrent in-process updates would race. Same interpreter, so the same copier.
    return [
        sys.executable,
        "-m",
        "copier",
        "update",
        "--vcs-ref",
        to_ref,
        "--defaults",
        "--skip-answered",
        "--conflict",
        "inline",
        *(["--trust"] if trust else []),
        ".",
    ]


def run_fleet(
    repos: list[str],
    options: Options,
    jobs: int,
    on_done: Callable[[RepoResult], None] = lambda _: None,
) -> list[RepoResult]:
    """Update every repo, `jobs` at a time; results come back in input order."""
    resolver = g.RefResolver()
    results: list[RepoResult | None] = [None] * len(repos)
    pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(repos))))
    try:
        futures = {
            pool.submit(update_repo, spec, options, resolver): i for i, spec in enumerate(repos)
        }
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            on_done(result)
    except BaseException:
        # Ctrl-C: start nothing new; the running subprocesses got the same SIGINT.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return [r for r in results if r is not None]


def update_repo(spec: str, options: Options, resolver: g.RefResolver) -> RepoResult:
    """Never raises: one broken repo must not stop the fleet."""
    result = RepoResult(repo=spec, to_ref=options.to_ref)
    start = time.monotonic()
    try:
        result.status = _update(spec, options, resolver, result)
    except Exception as exc:
        result.status = Status.ERROR
        result.message = result.message or f"{type(exc).__name__}: {exc}"
    result.seconds = round(time.monotonic() - start, 3)
    return result


def _update(spec: str, options: Options, resolver: g.RefResolver, result: RepoResult) -> Status:
    path = _locate(spec, options.workdir)
    result.path = str(path)
    top = g.toplevel(path)
    if top is None:
        result.message = "not a git repository"
        return Status.ERROR
    if g.is_dirty(top):
        return Status.SKIPPED_DIRTY

    answers = g.read_answers(path)
    if answers is None:
        return Status.SKIPPED_NOT_A_COPIER_REPO
    result.from_commit = answers.commit
    src = options.template or answers.src_path
    if not answers.commit or not src:
        result.message = f"{g.ANSWERS_FILE} lacks _commit or _src_path: copier cannot update it"
        return Status.ERROR
    if resolver.same_commit(src, answers.commit, options.to_ref):
        return Status.SKIPPED_CURRENT

    result.branch = options.branch
    if not g.is_valid_branch_name(top, options.branch):
        result.message = f"invalid branch name {options.branch!r}"
        return Status.ERROR
    if g.branch_exists(top, options.branch):
        return Status.SKIPPED_BRANCH_EXISTS
    previous_branch, base = g.current_branch(top), g.head_commit(top)
    g.git(top, "switch", "--quiet", "-c", options.branch)
    if options.template and options.template != answers.src_path:
        g.repoint_answers(path, options.template)
        g.commit_all(top, f"chore: point template source to {options.template}")

    proc = subprocess.run(
        copier_update_command(options.to_ref, trust=options.trust),
        cwd=path,
        capture_output=True,
        text=True,
        errors="replace",
        stdin=subprocess.DEVNULL,
        env=_copier_env(options.report_dir / ".pycache"),
        check=False,
    )
    if proc.returncode != 0:
        result.message = f"copier update exited {proc.returncode}: {_tail(proc.stderr, 15)}"
        if not g.is_dirty(top):
            # Nothing written: drop our branch so a rerun starts from scratch.
            restore = [previous_branch] if previous_branch else ["--detach", base]
            g.git(top, "switch", "--quiet", *restore)
            g.git(top, "branch", "--quiet", "-D", options.branch)
            result.branch = None
        return Status.ERROR

    result.conflicts = g.find_conflicts(top)
    if result.conflicts:
        return Status.UPDATED_WITH_CONFLICTS
    g.commit_all(top, f"chore: update template to {options.to_ref}")

    command = options.check if options.check is not None else _default_check(path)
    if options.run_checks and command:
        result.checks = run_checks(command, path, options.check_timeout)
        if result.checks.returncode != 0:
            return Status.CHECKS_FAILED
    return Status.UPDATED


def _copier_env(pycache: Path) -> dict[str, str]:
    env = g.subprocess_env()
    # Common in CI images: a venv without .pyc files (uv's default) plus PYTHONDONTWRITEBYTECODE,
    # so every copier process recompiles copier and its dependencies (seconds each). A private
    # cache prefix lets them share one compilation without writing next to any source file.
    if env.get("PYTHONDONTWRITEBYTECODE") and not env.get("PYTHONPYCACHEPREFIX"):
        del env["PYTHONDONTWRITEBYTECODE"]
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def _locate(spec: str, workdir: Path) -> Path:
    if g.is_url(spec):
        name = re.sub(r"[^\w.-]+", "-", spec.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
        digest = hashlib.sha256(spec.encode()).hexdigest()[:8]  # two forks may share a name
        dest = workdir / f"{name}-{digest}"
        if dest.exists():
            # It may hold an earlier run's conflicted branch: never delete a human's work.
            raise FileExistsError(
                f"{dest} is left from an earlier run: remove it or change --report"
            )
        g.clone(spec, dest)
        return dest
    path = Path(spec).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"no such directory: {path}")
    return path


def _default_check(path: Path) -> str | None:
    for name in ("GNUmakefile", "makefile", "Makefile"):
        makefile = path / name
        if makefile.is_file():
            targets = r"(?m)^(?:[^\s:#=]+[ \t]+)*check(?:[ \t]+[^\s:#=]+)*[ \t]*:(?!=)"
            return (
                "make check" if re.search(targets, makefile.read_text(errors="replace")) else None
            )
    return None


def run_checks(command: str, cwd: Path, timeout: float) -> Checks:
    start = time.monotonic()
    # The operator's own shell command line, run as given; its own session so a timeout can kill
    # everything it started (otherwise a grandchild holding the pipe blocks us forever).
    with subprocess.Popen(  # noqa: S602
        command,
        shell=True,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as proc:
        returncode: int | None
        try:
            output, _ = proc.communicate(timeout=timeout)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            output += f"\n[fleet] killed after {timeout:g} s"
            returncode = None
    return Checks(
        command=command,
        returncode=returncode,
        seconds=round(time.monotonic() - start, 3),
        tail=_tail(output, TAIL_LINES),
    )


def _tail(text: str, lines: int) -> str:
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    return tail[-TAIL_CHARS:]
