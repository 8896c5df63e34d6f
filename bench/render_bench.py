"""`copier copy` of the default answers against copier's own floor, side by side in one run.

The floor is copier rendering a one-file template from a local git repository
(bench.foundation_bench.one_file_template). A second reference is a template of as many plain
files as the default copy writes, one question, no Jinja in them: what copier itself costs per
file (it renders every path part and runs a git command per written file). Copies alternate
between the three so machine load weighs on all alike; the script prints each median and the
ratios, and with --phases where the template's own copy spends its time.

    .venv/bin/python -m bench.render_bench [--copies 15] [--phases | --processes] [--budget 1.15]

Exits 1 when the defaults cost more than --budget times the plain-file template (issue 26:
1.15x, as whole `copier copy` processes: `make bench` runs it with --processes).
"""

from __future__ import annotations

import argparse
import os
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
from copier import _main

from bench.foundation_bench import one_file_template
from tests.rendering import git, snapshot_template

# copier's Worker steps a copy spends its time in (private API: only for --phases).
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
    git("init", "-q", "-b", "main", cwd=directory)
    git("add", "-A", cwd=directory)
    git("commit", "-q", "-m", "plain files", cwd=directory)
    return directory


def copy_seconds(template: Path, destination: Path, process: bool = False) -> float:
    start = time.perf_counter()
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
    return time.perf_counter() - start


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
        copy_seconds(floor_template, work / "warm-floor")
        copy_seconds(plain_template, work / "warm-plain")
        full, floor, plain = [], [], []
        phases: dict[str, float] = defaultdict(float)
        for i in range(args.copies):
            with timed_phases(phases) if args.phases else nullcontext():
                full.append(copy_seconds(template, work / f"full-{i}", args.processes))
            floor.append(copy_seconds(floor_template, work / f"floor-{i}", args.processes))
            plain.append(copy_seconds(plain_template, work / f"plain-{i}", args.processes))
    full_s, floor_s, plain_s = (statistics.median(t) for t in (full, floor, plain))
    print(
        f"copier copy, median of {args.copies} alternating: defaults {full_s:.3f} s, "
        f"one-file template {floor_s:.3f} s, {written} plain files {plain_s:.3f} s"
    )
    print(
        f"ratio to the one-file floor {full_s / floor_s:.2f}x "
        f"({written} plain files alone: {plain_s / floor_s:.2f}x); "
        f"ratio to the {written}-plain-file template {full_s / plain_s:.2f}x"
    )
    if args.phases:
        mean = {name: seconds / args.copies for name, seconds in phases.items()}
        rendering = mean["_render_template"] - mean["_render_file"]
        print(
            f"per copy of the defaults (mean): questions and validators {mean['_ask']:.3f} s, "
            f"file rendering {mean['_render_file'] - mean['_sync_git_index_executable_bit']:.3f}"
            f" s, copier's git call per file {mean['_sync_git_index_executable_bit']:.3f} s, "
            f"path rendering and the rest of the walk {rendering:.3f} s"
        )
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"budget {args.budget}x of the plain-file template; load average at the end {load}")
    if full_s / plain_s > args.budget:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
