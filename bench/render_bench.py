"""`copier copy` of the default answers against copier's own floor, side by side in one run.

The floor is copier rendering a one-file template from a local git repository
(bench.foundation_bench.one_file_template). The budget's reference is the default copy's own
files, byte for byte at the same paths, as plain files of a template with the template's copier
settings and no questions beyond the one those settings name: what copier itself costs for
this output (it renders every path part and runs a git command per written file). An older
reference, as many plain files in 8 flat folders with one question, is printed beside it.
Copies alternate between the four so machine load weighs on all alike; the script prints each
median and the ratios, the CPU time of the defaults and of the same files beside their wall time
(what load on shared cores does not move), and with --phases where the template's own copy
spends its time.

    .venv/bin/python -m bench.render_bench [--copies 15] [--phases | --processes] [--budget 1.15]

Exits 1 when the defaults cost more than --budget times the same files as plain files (issue 26:
1.15x, as whole `copier copy` processes: `make bench` runs it with --processes).
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
from pathlib import Path
from typing import ParamSpec, TypeVar

import copier
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


def same_files_template(directory: Path, template: Path, rendered: Path) -> Path:
    """The default copy's files, byte for byte at the same paths, as plain files of a template
    with the template's own copier settings: what copier costs for this output with no
    questions' Jinja. Copier's work per path part grows with the tree's depth, and a flat
    tree of as many files is shallower (issue 26 asks for "a plain template with the same
    files"). The answers the settings name (package_name) are plain defaults."""
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
    return committed(directory, "the default copy's files")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=15)
    parser.add_argument("--budget", type=float, default=1.15)
    parser.add_argument("--phases", action="store_true", help="break the template's copy down")
    parser.add_argument(
        "--processes", action="store_true", help="time `copier copy` processes, not calls"
    )
    args = parser.parse_args()
    if args.phases and args.processes:
        parser.error("--phases times copier's steps in this process: not with --processes")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        template = snapshot_template(work / "template")
        floor_template = one_file_template(work / "floor-template")
        # One untimed copy each: imports and the first Jinja environment are not the render.
        copy_seconds(template, work / "warm-full")
        written = sum(1 for path in (work / "warm-full").rglob("*") if path.is_file())
        plain_template = plain_files_template(work / "plain-template", written)
        same_template = same_files_template(work / "same-template", template, work / "warm-full")
        copy_seconds(floor_template, work / "warm-floor")
        copy_seconds(plain_template, work / "warm-plain")
        copy_seconds(same_template, work / "warm-same")
        runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
        phases: dict[str, float] = defaultdict(float)
        for i in range(args.copies):
            with timed_phases(phases) if args.phases else nullcontext():
                runs["full"].append(copy_seconds(template, work / f"full-{i}", args.processes))
            for name, source in (("floor", floor_template), ("plain", plain_template)):
                runs[name].append(copy_seconds(source, work / f"{name}-{i}", args.processes))
            runs["same"].append(copy_seconds(same_template, work / f"same-{i}", args.processes))
    full_s, floor_s, plain_s, same_s = (
        statistics.median(wall for wall, _ in runs[name])
        for name in ("full", "floor", "plain", "same")
    )
    full_cpu, same_cpu = (
        statistics.median(cpu for _, cpu in runs[name]) for name in ("full", "same")
    )
    print(
        f"copier copy, median of {args.copies} alternating: defaults {full_s:.3f} s, "
        f"one-file template {floor_s:.3f} s, {written} plain files in 8 folders {plain_s:.3f} s, "
        f"the same files as plain files {same_s:.3f} s"
    )
    print(
        f"ratio to the one-file floor {full_s / floor_s:.2f}x; to {written} plain files in 8 "
        f"folders {full_s / plain_s:.2f}x; to the same files as plain files "
        f"{full_s / same_s:.2f}x (the budget's)"
    )
    print(
        f"CPU (user and system, copier and its git calls): defaults {full_cpu:.3f} s, the same "
        f"files {same_cpu:.3f} s, {full_cpu / same_cpu:.2f}x"
    )
    if args.phases:
        mean = {name: seconds / args.copies for name, seconds in phases.items()}
        rendering_s = mean["_render_template"] - mean["_render_file"]
        print(
            f"per copy of the defaults (mean): questions and validators {mean['_ask']:.3f} s, "
            f"file rendering {mean['_render_file'] - mean['_sync_git_index_executable_bit']:.3f}"
            f" s, copier's git call per file {mean['_sync_git_index_executable_bit']:.3f} s, "
            f"path rendering and the rest of the walk {rendering_s:.3f} s"
        )
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"budget {args.budget}x of the same files as plain files; load average at the end {load}")
    if full_s / same_s > args.budget:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
