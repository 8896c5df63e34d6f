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
from fleet import safety
from fleet.interrupt import Interrupted, Stopper
from fleet.push import push_branch
from fleet.report import Checks, RepoResult, Status, prepare_dir
from fleet.worker import CopierWorker, WorkerPool

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
    lock_wait: float = 0.0
    push: bool = False

    @property
    def workdir(self) -> Path:
        """Where URL repos are cloned."""
        return self.report_dir / "repos"


@dataclass
class Context:
    """What the repositories of one run share: ref lookups, warm copier workers, the stopper."""

    options: Options
    resolver: g.RefResolver
    workers: WorkerPool
    stopper: Stopper


def default_branch(to_ref: str) -> str:
    return f"template-update/{to_ref}"


def copier_update_command(to_ref: str, *, trust: bool = False) -> list[str]:
    """The `copier update` a person would run by hand (the bench's loop runs it)."""
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
    stopper: Stopper | None = None,
) -> list[RepoResult]:
    """Update every repo, `jobs` at a time; results come back in input order.

    Once `stopper` is stopped, repositories not yet started come back `interrupted` untouched
    and running ones are restored (see `_update_locked`); every repository gets a result.
    """
    stopper = stopper or Stopper()
    size = max(1, min(jobs, len(repos)))
    prepare_dir(options.report_dir)  # git-ignored before anything is written into it
    logs = options.report_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = _copier_env(options.report_dir / ".pycache")
    pool = WorkerPool(
        size, lambda n: CopierWorker(env, logs / f"copier-worker-{os.getpid()}-{n}.log", stopper)
    )
    ctx = Context(options, g.RefResolver(), pool, stopper)
    results: list[RepoResult | None] = [None] * len(repos)
    try:
        with ThreadPoolExecutor(max_workers=size) as threads:
            futures = {threads.submit(update_repo, spec, ctx): i for i, spec in enumerate(repos)}
            for future in as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                on_done(result)
    finally:
        pool.close()
    return [r for r in results if r is not None]


def update_repo(spec: str, ctx: Context) -> RepoResult:
    """Never raises: one broken repo must not stop the fleet."""
    result = RepoResult(repo=spec, to_ref=ctx.options.to_ref)
    start = time.monotonic()
    try:
        if ctx.stopper.stopping:
            result.status = Status.INTERRUPTED
            result.message = "not started: the run was interrupted; a rerun updates it"
        else:
            result.status = _update(spec, ctx, result)
    except Interrupted:
        result.status = Status.INTERRUPTED
        result.message = "stopped before its update began: unchanged; a rerun updates it"
    except Exception as exc:
        result.status = Status.ERROR
        result.message = result.message or f"{type(exc).__name__}: {exc}"
    result.seconds = round(time.monotonic() - start, 3)
    return result


def _update(spec: str, ctx: Context, result: RepoResult) -> Status:
    path = _locate(spec, ctx.options.workdir)
    result.path = str(path)
    top = g.toplevel(path)
    if top is None:
        result.message = "not a git repository"
        return Status.ERROR
    gitdir = safety.git_dir(top)
    try:
        with safety.repo_lock(gitdir, ctx.options.lock_wait):
            return _update_locked(path, top, gitdir, ctx, result)
    except safety.Locked as exc:
        result.message = str(exc)
        return Status.SKIPPED_LOCKED


def _update_locked(path: Path, top: Path, gitdir: Path, ctx: Context, result: RepoResult) -> Status:
    options = ctx.options
    marker = safety.read_marker(gitdir)
    if marker and g.current_branch(top) == marker.update_branch:
        # An earlier run died mid-update (it could not restore): its changes are ours to drop.
        safety.restore(top, gitdir, marker)
        result.message = f"resumed: an earlier run was cut short on {marker.update_branch}"
    elif marker:
        safety.finish(gitdir)  # someone moved on from that branch by hand: not ours any more
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
    if ctx.resolver.same_commit(src, answers.commit, options.to_ref):
        return Status.SKIPPED_CURRENT

    result.branch = options.branch
    if not g.is_valid_branch_name(top, options.branch):
        result.message = f"invalid branch name {options.branch!r}"
        return Status.ERROR
    if g.branch_exists(top, options.branch):
        base = safety.leftover_base(top, options.branch)
        if base is None:
            return Status.SKIPPED_BRANCH_EXISTS
        # Empty: nothing on it to lose. Recreated from where the repository stands.
        if g.current_branch(top) == options.branch:
            g.git(top, "switch", "--quiet", base)
        g.git(top, "branch", "--quiet", "-D", options.branch)
    before = safety.Before(
        branch=g.current_branch(top),
        commit=g.head_commit(top),
        update_branch=options.branch,
        to_ref=options.to_ref,
    )
    ctx.stopper.check()
    safety.begin(top, gitdir, before)
    try:
        status = _apply(path, top, ctx, result, answers.src_path)
    except Interrupted:
        return _interrupted(top, gitdir, before, ctx, result)
    except Exception:
        _restore_after_error(top, gitdir, before, result)
        raise
    if status is Status.ERROR:
        _restore_after_error(top, gitdir, before, result)
        return status
    safety.finish(gitdir)
    if options.push and status in (Status.UPDATED, Status.CHECKS_FAILED):
        try:
            result.pull_request = push_branch(top, options.branch, before.branch)
        except g.GitError as exc:
            result.message = f"committed on {options.branch}, but the push failed: {exc}"
            return Status.ERROR
    return status


def _apply(path: Path, top: Path, ctx: Context, result: RepoResult, src_path: str | None) -> Status:
    """Branch, update, commit, check: every step may raise Interrupted."""
    options = ctx.options
    g.git(top, "switch", "--quiet", "-c", options.branch)
    if options.template and options.template != src_path:
        g.repoint_answers(path, options.template)
        g.commit_all(top, f"chore: point template source to {options.template}")
    ctx.stopper.check()

    worker = ctx.workers.borrow()
    try:
        ok, error = worker.update(path, options.to_ref, trust=options.trust)
    finally:
        ctx.workers.give_back(worker)
    if not ok:
        result.message = f"copier update failed: {_tail(error, 15)}"
        return Status.ERROR
    ctx.stopper.check()

    result.conflicts = g.find_conflicts(top)
    if result.conflicts:
        return Status.UPDATED_WITH_CONFLICTS
    g.commit_all(top, f"chore: update template to {options.to_ref}")

    command = options.check if options.check is not None else _default_check(path)
    if options.run_checks and command:
        result.checks = run_checks(command, path, options.check_timeout, ctx.stopper)
        if ctx.stopper.stopping:
            raise Interrupted  # the check was killed: it says nothing about the update
        if result.checks.returncode != 0:
            return Status.CHECKS_FAILED
    return Status.UPDATED


def _interrupted(
    top: Path, gitdir: Path, before: safety.Before, ctx: Context, result: RepoResult
) -> Status:
    name = signal.Signals(ctx.stopper.signum or signal.SIGTERM).name
    where = before.branch or f"detached {before.commit[:12]}"
    result.checks = None
    result.conflicts = []
    try:
        safety.restore(top, gitdir, before)
    except Exception as exc:
        result.message = (
            f"stopped by {name}; could not restore ({exc}). Left: on {before.update_branch} with "
            f"a partial update; the next fleet run restores {where} and updates it again"
        )
        return Status.INTERRUPTED
    result.branch = None
    result.message = f"stopped by {name}; restored to {where} as it was: a rerun updates it"
    return Status.INTERRUPTED


def _restore_after_error(
    top: Path, gitdir: Path, before: safety.Before, result: RepoResult
) -> None:
    # A failed update leaves nothing half-done behind: a rerun starts clean.
    try:
        safety.restore(top, gitdir, before)
        result.branch = None
    except Exception as exc:
        result.message = f"{result.message or ''} (and restoring failed: {exc})".strip()


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


def run_checks(command: str, cwd: Path, timeout: float, stopper: Stopper | None = None) -> Checks:
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
        if stopper:
            stopper.register(proc.pid)
        returncode: int | None
        try:
            output, _ = proc.communicate(timeout=timeout)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            output += f"\n[fleet] killed after {timeout:g} s"
            returncode = None
        finally:
            if stopper:
                stopper.unregister(proc.pid)
    return Checks(
        command=command,
        returncode=returncode,
        seconds=round(time.monotonic() - start, 3),
        tail=_tail(output, TAIL_LINES),
    )


def _tail(text: str, lines: int) -> str:
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    return tail[-TAIL_CHARS:]
