"""Warm copier processes: each imports copier once and updates many repositories in turn.

A `copier update` process per repository spends a large share of its time importing copier and
compiling the template's Jinja sources (three renders per update, each compiling every file
again: old version, new version, and the questions). A worker keeps both for the whole run:
copier is imported once, and compiled templates are memoised by source text across renders
(`_share_compiled_templates`), so each distinct template file is compiled once per worker;
copier.yml is parsed once per distinct content (`_share_template_configs`), each template ref
is cloned once and copied for later renders (`_reuse_clones`), and the per-file
`git config core.fileMode` lookups become one per update (`_skip_file_mode_lookups`). These
patch copier's private functions, which is why copier is pinned (pyproject.toml); the bench
checks that the fleet's trees equal the loop's, byte for byte.

Why processes and not threads: copier changes the process-wide working directory and
environment while it works, so two updates can never share a process at the same time. One
worker serves one repository at a time; the fleet runs `--jobs` of them.

Protocol: one JSON job per line on stdin, one JSON reply per line on the worker's original
stdout. Everything else the update prints (copier, migrations it runs) goes to stderr, which
the fleet points at a log file and quotes on failure.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

from fleet.interrupt import Interrupted, Stopper

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _share_compiled_templates() -> None:
    """Memoise jinja2's compile step on the source and everything that shapes the code."""
    import jinja2

    original = jinja2.Environment.compile
    cache: dict[tuple[Any, ...], Any] = {}

    def compile_once(
        self: jinja2.Environment,
        source: Any,  # noqa: ANN401 (jinja2's own signature: str or an AST)
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> Any:  # noqa: ANN401
        if not isinstance(source, str):
            return original(self, source, name, filename, raw, defer_init)
        # The filename only labels tracebacks; copier renders from a fresh clone each time, so
        # keying on it would defeat the cache. Filters and tests are looked up by name at
        # render time, so their names (not their functions) shape the code.
        key = (source, name, raw, defer_init, _signature(self))
        if key not in cache:
            cache[key] = original(self, source, name, filename, raw, defer_init)
        else:
            # Extensions may keep state that their preprocess hook resets on every parse
            # (copier's `yield` tag does): run the hooks, skip only the costly parse and codegen.
            self.preprocess(source, name, filename)
        return cache[key]

    jinja2.Environment.compile = compile_once  # type: ignore[method-assign]


def _share_template_configs() -> None:
    """Parse each distinct copier.yml once: copier reloads it for every render (four times an
    update), in pure-Python YAML. Callers get a deep copy, so nothing they change is shared."""
    from copier import _template

    original = _template.load_template_config
    cache: dict[bytes, Any] = {}

    def load_once(conf_path: Path, quiet: bool = False) -> Any:  # noqa: ANN401
        text = conf_path.read_bytes()
        if b"!include" in text:  # its result depends on other files too
            return original(conf_path, quiet)
        if text not in cache:
            cache[text] = original(conf_path, quiet)
        return copy.deepcopy(cache[text])

    _template.load_template_config = load_once


def _reuse_clones(scratch: Path) -> None:
    """Clone each template ref once per worker; later renders get a copy of that clone.

    copier clones the template afresh for every render (five clones an update, each about ten
    git processes); a copy of a finished clone is the same repository for a few syscalls.
    `HEAD` is never reused: for a local template copier folds uncommitted changes into it.
    """
    from copier import _template

    original = _template.clone
    clones: dict[tuple[str, str], Path] = {}
    lock = threading.Lock()

    def clone_once(url: str, ref: str = "HEAD", location: str | None = None) -> str:
        if ref == "HEAD" or location is None:
            return original(url, ref, location)
        with lock:
            if (url, ref) not in clones:
                pristine = scratch / f"clone-{len(clones)}"
                pristine.mkdir()
                original(url, ref, str(pristine))
                clones[url, ref] = pristine
        # Hard links: copier only reads a template clone, and git never rewrites an object.
        shutil.copytree(
            clones[url, ref], location, symlinks=True, dirs_exist_ok=True, copy_function=_link
        )
        return location

    _template.clone = clone_once


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _skip_file_mode_lookups(per_job: dict[str, str | None]) -> None:
    """Ask git for a destination's core.fileMode once per update, not once per rendered file.

    copier runs `git config core.fileMode` after writing each file (for Windows-style
    checkouts, where it must fix the index's executable bits); that is about 80 processes per
    update. The answer is read once per destination and job, and the original method (which
    does the real work) only runs when the setting is `false`.
    """
    from copier import _main

    original = _main.Worker._sync_git_index_executable_bit

    def sync_if_needed(self: Any, dst_relpath: Path, src_mode: int) -> None:  # noqa: ANN401
        root = str(self.subproject.local_abspath)
        if root not in per_job:
            proc = subprocess.run(
                ["git", "config", "--type=bool", "--get", "core.fileMode"],
                cwd=root,
                capture_output=True,
                text=True,
                check=False,
            )
            per_job[root] = proc.stdout.strip() if proc.returncode == 0 else None
        if per_job[root] == "false":
            original(self, dst_relpath, src_mode)

    _main.Worker._sync_git_index_executable_bit = sync_if_needed


def _signature(env: Any) -> tuple[Any, ...]:  # noqa: ANN401
    return (
        type(env),
        env.block_start_string,
        env.block_end_string,
        env.variable_start_string,
        env.variable_end_string,
        env.comment_start_string,
        env.comment_end_string,
        env.line_statement_prefix,
        env.line_comment_prefix,
        env.trim_blocks,
        env.lstrip_blocks,
        env.newline_sequence,
        env.keep_trailing_newline,
        env.optimized,
        env.autoescape if isinstance(env.autoescape, bool) else id(env.autoescape),
        tuple(
            sorted(f"{type(e).__module__}.{type(e).__qualname__}" for e in env.extensions.values())
        ),
        tuple(sorted(env.filters)),
        tuple(sorted(env.tests)),
    )


def serve() -> int:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # copier's and its migrations' output must not corrupt the replies
    _share_compiled_templates()
    _share_template_configs()
    file_modes: dict[str, str | None] = {}
    _skip_file_mode_lookups(file_modes)
    scratch = Path(tempfile.mkdtemp(prefix="fleet-clones-"))
    _reuse_clones(scratch)
    import copier  # the one import this process exists to pay once

    home = Path.cwd()
    for line in sys.stdin:
        job = json.loads(line)
        file_modes.clear()  # a repository's git config may change between runs
        try:
            copier.run_update(
                job["path"],
                vcs_ref=job["to_ref"],
                defaults=True,
                skip_answered=True,
                overwrite=True,
                conflict="inline",
                quiet=True,
                unsafe=job["trust"],
            )
            reply: dict[str, Any] = {"ok": True}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            os.chdir(home)
        sys.stderr.flush()
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


class CopierWorker:
    """The fleet's handle on one worker process (its own session, so killable as a group)."""

    def __init__(self, env: dict[str, str], log: Path, stopper: Stopper) -> None:
        self.log = log
        self._stderr = log.open("ab")
        self._stopper = stopper
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.worker"],
            cwd=_PACKAGE_ROOT,  # importable wherever the fleet itself was started from
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            start_new_session=True,
        )
        stopper.register(self.proc.pid)

    def update(self, path: Path, to_ref: str, *, trust: bool) -> tuple[bool, str]:
        """Run one update; (ok, error text). Raises Interrupted when the worker was killed."""
        assert self.proc.stdin and self.proc.stdout
        start = self.log.stat().st_size
        job = {"path": str(path), "to_ref": to_ref, "trust": trust}
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            # Killed: by the stopper (interrupt), or crashed on its own.
            self.close()
            if self._stopper.stopping:
                raise Interrupted
            return False, f"copier worker died: {self._log_since(start)}"
        reply = json.loads(line)
        if reply["ok"]:
            return True, ""
        return False, f"{reply['error']}\n{self._log_since(start)}".strip()

    def _log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stopper.unregister(self.proc.pid)
        self._stderr.close()


class WorkerPool:
    """Up to `size` warm workers, started on first use and lent to one repository at a time."""

    def __init__(self, size: int, factory: Callable[[int], CopierWorker]) -> None:
        self._size = size
        self._factory = factory
        self._idle: SimpleQueue[CopierWorker] = SimpleQueue()
        self._all: list[CopierWorker] = []
        self._lock = threading.Lock()

    def borrow(self) -> CopierWorker:
        while True:
            try:
                worker = self._idle.get_nowait()
            except Empty:
                with self._lock:
                    if len(self._all) < self._size:
                        worker = self._factory(len(self._all))
                        self._all.append(worker)
                        return worker
                worker = self._idle.get()
            if worker.alive:
                return worker
            with self._lock:  # a dead worker is replaced on the next borrow
                self._all.remove(worker)

    def give_back(self, worker: CopierWorker) -> None:
        self._idle.put(worker)

    def close(self) -> None:
        with self._lock:
            workers = list(self._all)
        for worker in workers:
            worker.close()


if __name__ == "__main__":
    raise SystemExit(serve())
