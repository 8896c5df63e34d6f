"""`copier copy` of the default answers against copier's own floor, side by side in one run.

The floor is copier rendering a one-file template from a local git repository
(bench.foundation_bench.one_file_template). The budget's reference is this repository with its
Jinja replaced by plain files: the default copy's own files, byte for byte at the same paths, as
plain files of a template with the template's copier settings and no questions beyond the one
those settings name, in a repository that also holds everything this one holds beside its
Jinja (tests/, bench/, fleet/, hooks/, the README...). That is what copier itself costs for this
output from this repository: it checks the whole repository out, renders every path part and
runs a git command per written file. Printed beside it: the same files alone in a repository
(the reference before 2026-12-08), and as many plain files in 8 flat folders with one question.
Copies alternate between the five so machine load weighs on all alike; the script prints each
median and the ratios, the CPU time of the defaults and of the reference beside their wall time
(what load on shared cores does not move), with --phases where a copy of the defaults and of
the reference spend their time, and with --copier-caches what they would cost if copier kept
what it compiles (a diagnostic of copier, not of the template).

    .venv/bin/python -m bench.render_bench [--copies 15] [--phases | --processes]
        [--copier-caches] [--budget 1.15]

Exits 1 when the defaults cost more than --budget times the reference (issue 26: 1.15x, as whole
`copier copy` processes: `make bench` runs it with --processes).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import ParamSpec, TypeVar

import copier
import jinja2
import yaml
from copier import _main

from bench.foundation_bench import one_file_template
from tests import rendering
from tests.rendering import git, snapshot_template

# copier's Worker steps a copy spends its time in (private API: only for --phases).
# The template's copier settings the same-files reference keeps: they change copier's walk
# (where files live, which are skipped or excluded, the suffix, whitespace), not the answers.
SAME_SETTINGS = (
    "_min_copier_version",
    "_subdirectory",
    "_answers_file",
    "_templates_suffix",
    "_envops",
    "_skip_if_exists",
    "_exclude",
)
PHASES = ("_ask", "_render_template", "_render_file", "_sync_git_index_executable_bit")
P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def timed_phases(totals: dict[str, float]) -> Iterator[None]:
    """Add the seconds spent in each of copier's PHASES to totals while active."""
    originals = {name: getattr(_main.Worker, name) for name in PHASES}

    def timed(name: str, method: Callable[P, R]) -> Callable[P, R]:
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start

        return wrapper

    for name, method in originals.items():
        setattr(_main.Worker, name, timed(name, method))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(_main.Worker, name, method)


def plain_files_template(directory: Path, count: int) -> Path:
    """One question and `count` plain files in a few folders, like a repository's layout."""
    directory.mkdir(parents=True)
    (directory / "copier.yml").write_text("name:\n  type: str\n  default: floor\n")
    for i in range(count):
        folder = directory / f"folder{i % 8}"
        folder.mkdir(exist_ok=True)
        (folder / f"file{i}.txt").write_text("plain\n")
    return committed(directory, "plain files")


def same_files_template(
    directory: Path, template: Path, rendered: Path, with_repository: bool = True
) -> Path:
    """The default copy's files, byte for byte at the same paths, as plain files of a template
    with the template's own copier settings: what copier costs for this output with no
    questions' Jinja. Copier's work per path part grows with the tree's depth, and a flat
    tree of as many files is shallower (issue 26 asks for "a plain template with the same
    files"). The answers the settings name (package_name) are plain defaults.

    with_repository keeps the template repository's own files beside them (all but
    copier.yml, the subdirectory and the Jinja copier.yml and the templates load): copier
    clones and checks out a template's whole repository before it renders anything, 1 to 2 ms
    a file on these machines, so a plain template that came with this repository's tests would
    pay that too; without them the reference is the files alone."""
    settings = yaml.safe_load((template / "copier.yml").read_text())
    kept = {key: value for key, value in settings.items() if key in SAME_SETTINGS}
    answers = rendering.answers_of(rendered)
    kept["package_name"] = {"type": "str", "default": answers["package_name"]}
    directory.mkdir(parents=True)
    (directory / "copier.yml").write_text(yaml.safe_dump(kept, sort_keys=False))
    answers_file = rendered / settings["_answers_file"]
    for source in rendered.rglob("*"):
        if source.is_file() and source != answers_file:
            target = directory / settings["_subdirectory"] / source.relative_to(rendered)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    if with_repository:
        for name in git("ls-files", "-z", cwd=template).split("\0"):
            relative = Path(name)
            if not name or not repository_file(relative, settings["_subdirectory"]):
                continue
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(template / relative, target)
    return committed(directory, "the default copy's files")


def repository_file(relative: Path, subdirectory: str) -> bool:
    """Whether a file of the template's repository is neither its questions nor its Jinja."""
    return not (
        relative == Path("copier.yml")
        or relative.parts[0] == subdirectory
        or relative.suffix == ".jinja"
    )


@contextmanager
def copier_caches() -> Iterator[None]:
    """While active, copier keeps what it compiles (private API: a diagnostic only).

    Two caches copier 9.19 does not have: Jinja's bytecode cache for the templates it loads,
    keyed by their path in the template (copier clones each copy into a new directory, so
    Jinja's own key, which holds the absolute file name, would never match; the cache still
    checks each source's checksum), and one compile per distinct string per copy (a path part,
    the answers file's path, a question's type, label, default or validator). Copier's yield
    extension resets its context when it compiles a string, so a cached string resets it too.
    """
    from copier._jinja_ext import get_yield_context

    class ByTemplatePath(jinja2.FileSystemBytecodeCache):
        def get_cache_key(self, name: str, filename: str | None = None) -> str:
            return super().get_cache_key(name, None)

    original = _main.Worker.__dict__["jinja_env"]
    with tempfile.TemporaryDirectory() as directory:
        bytecode = ByTemplatePath(directory)

        def jinja_env(worker: _main.Worker) -> jinja2.Environment:
            env = original.func(worker)
            env.bytecode_cache = bytecode
            compiled: dict[str, jinja2.Template] = {}
            from_string = env.from_string

            def cached_from_string(
                source: str | jinja2.nodes.Template, *args: object, **kwargs: object
            ) -> jinja2.Template:
                if args or kwargs or not isinstance(source, str):
                    return from_string(source, *args, **kwargs)
                context = get_yield_context(env)
                context.yield_name = context.yield_iterable = None
                if source not in compiled:
                    compiled[source] = from_string(source)
                return compiled[source]

            env.from_string = cached_from_string  # type: ignore[method-assign]
            return env

        patched = cached_property(jinja_env)
        patched.__set_name__(_main.Worker, "jinja_env")
        _main.Worker.jinja_env = patched  # type: ignore[method-assign, assignment]
        try:
            yield
        finally:
            _main.Worker.jinja_env = original  # type: ignore[method-assign]


def committed(directory: Path, message: str) -> Path:
    git("init", "-q", "-b", "main", cwd=directory)
    git("add", "-A", cwd=directory)
    git("commit", "-q", "-m", message, cwd=directory)
    return directory


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def copy_seconds(template: Path, destination: Path, process: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds of one copy. CPU is user and system time of this process and of the
    processes it waited for (copier, its `git` calls): on shared cores a copy's wall time also
    holds the time it waited for a core, its CPU time does not."""
    start, cpu_start = time.perf_counter(), time.process_time() + children_cpu_seconds()
    if process:
        # What a person waits for: a `copier copy` process, start-up and imports included.
        command = ["copy", "--defaults", "--vcs-ref", "HEAD", "--quiet", "--trust"]
        subprocess.run(
            [sys.executable, "-m", "copier", *command, str(template), str(destination)],
            check=True,
        )
    else:
        copier.run_copy(
            str(template), destination, defaults=True, vcs_ref="HEAD", quiet=True, unsafe=True
        )
    cpu = time.process_time() + children_cpu_seconds() - cpu_start
    return time.perf_counter() - start, cpu


def phase_line(name: str, totals: dict[str, float], copies: int) -> str:
    mean = {phase: seconds / copies for phase, seconds in totals.items()}
    walk = mean["_render_template"] - mean["_render_file"]
    files = mean["_render_file"] - mean["_sync_git_index_executable_bit"]
    return (
        f"per copy of {name} (mean): questions and validators {mean['_ask']:.3f} s, file "
        f"rendering {files:.3f} s, copier's git call per file "
        f"{mean['_sync_git_index_executable_bit']:.3f} s, path rendering and the rest of the walk "
        f"{walk:.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=15)
    parser.add_argument("--budget", type=float, default=1.15)
    parser.add_argument("--phases", action="store_true", help="break both copies down")
    parser.add_argument(
        "--processes", action="store_true", help="time `copier copy` processes, not calls"
    )
    parser.add_argument(
        "--copier-caches",
        action="store_true",
        help="what the copies cost if copier kept what it compiles (in-process only)",
    )
    args = parser.parse_args()
    if args.processes and (args.phases or args.copier_caches):
        parser.error(
            "--phases and --copier-caches patch copier in this process: not with --processes"
        )
    with (
        tempfile.TemporaryDirectory() as tmp,
        copier_caches() if args.copier_caches else nullcontext(),
    ):
        work = Path(tmp)
        template = snapshot_template(work / "template")
        floor_template = one_file_template(work / "floor-template")
        # One untimed copy each: imports and the first Jinja environment are not the render.
        copy_seconds(template, work / "warm-full")
        written = sum(1 for path in (work / "warm-full").rglob("*") if path.is_file())
        plain_template = plain_files_template(work / "plain-template", written)
        same_template = same_files_template(
            work / "same-template", template, work / "warm-full", with_repository=False
        )
        repo_template = same_files_template(work / "repo-template", template, work / "warm-full")
        references = (
            ("floor", floor_template),
            ("plain", plain_template),
            ("same", same_template),
            ("repo", repo_template),
        )
        for name, source in references:
            copy_seconds(source, work / f"warm-{name}")
        files, repo_files = tracked_files(template), tracked_files(repo_template)
        runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
        phases: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for i in range(args.copies):
            with timed_phases(phases["full"]) if args.phases else nullcontext():
                runs["full"].append(copy_seconds(template, work / f"full-{i}", args.processes))
            for name, source in references:
                with timed_phases(phases[name]) if args.phases else nullcontext():
                    runs[name].append(copy_seconds(source, work / f"{name}-{i}", args.processes))
    full_s, floor_s, plain_s, same_s, repo_s = (
        statistics.median(wall for wall, _ in runs[name])
        for name in ("full", "floor", "plain", "same", "repo")
    )
    full_cpu, repo_cpu = (
        statistics.median(cpu for _, cpu in runs[name]) for name in ("full", "repo")
    )
    if args.copier_caches:
        print(
            "copier patched to keep what it compiles (--copier-caches): not copier 9.19's figures"
        )
    print(
        f"copier copy, median of {args.copies} alternating: defaults {full_s:.3f} s, "
        f"one-file template {floor_s:.3f} s, {written} plain files in 8 folders {plain_s:.3f} s, "
        f"the same files alone {same_s:.3f} s, the same files in this repository "
        f"({repo_files} files against the template's {files}) {repo_s:.3f} s"
    )
    print(
        f"ratio to the one-file floor {full_s / floor_s:.2f}x; to {written} plain files in 8 "
        f"folders {full_s / plain_s:.2f}x; to the same files alone {full_s / same_s:.2f}x; to "
        f"the same files in this repository {full_s / repo_s:.2f}x (the budget's)"
    )
    print(
        f"CPU (user and system, copier and its git calls): defaults {full_cpu:.3f} s, the same "
        f"files in this repository {repo_cpu:.3f} s, {full_cpu / repo_cpu:.2f}x"
    )
    if args.phases:
        print(phase_line("the defaults", phases["full"], args.copies))
        print(phase_line("the same files in this repository", phases["repo"], args.copies))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"budget {args.budget}x of the same files in this repository; load average at the end "
        f"{load}"
    )
    if full_s / repo_s > args.budget:
        raise SystemExit(1)


def tracked_files(repository: Path) -> int:
    return len(git("ls-files", cwd=repository).splitlines())


if __name__ == "__main__":
    main()
