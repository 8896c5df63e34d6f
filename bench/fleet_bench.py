"""Benchmark the fleet command against `copier update` run by hand in a sequential loop.

    python -m bench.fleet_bench [--repos N] [--template PATH] [--old REF] [--new REF]
                                [--jobs J] [--vary KEY=V1,V2,...] [--trust]

Renders N repos from the old ref with varied answers and team edits (every fifth repo edits a
line the template changes, so it conflicts; two in five make an unrelated edit), copies them,
then times (a) `python -m fleet update --no-checks` over one set and (b) a loop doing
`git switch -c` + `copier update` + conflict scan + commit, one repo after another, over the
other. Both use the same copier command line and share one warmed bytecode cache, so the ratio
measures orchestration, not Python start-up. Defaults to the tiny template of fleet.testing.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from fleet import repo as g
from fleet import testing as fx
from fleet.update import copier_update_command, default_branch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_VARY = {"project_name": ["pipeline-{i}"], "owner": ["data-team", "ml-team", "platform"]}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for key, value in fx.GIT_IDENTITY.items():
        os.environ.setdefault(key, value)
    with TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(tmp)
        _share_bytecode_cache(root / "pycache")
        if args.template:
            template, vary = str(Path(args.template).resolve()), _parse_vary(args.vary)
        else:
            template, vary = str(fx.build_template(root / "template")), FIXTURE_VARY
        print(
            f"fleet bench: {args.repos} repos, {template} {args.old} -> {args.new}, "
            f"jobs {args.jobs}, {os.cpu_count()} CPUs",
            flush=True,
        )

        start = time.monotonic()
        fleet_repos = _render_fleet(root, template, vary, args)
        loop_repos = [root / "loop" / p.name for p in fleet_repos]
        for src, dest in zip(fleet_repos, loop_repos, strict=True):
            shutil.copytree(src, dest, symlinks=True)
        print(f"rendered and copied in {time.monotonic() - start:.1f} s", flush=True)

        load_before = os.getloadavg()[0]
        cpu0 = _children_cpu()
        fleet_wall, fleet_times, fleet_clean = _time_fleet(root, fleet_repos, args)
        cpu1 = _children_cpu()
        loop_wall, loop_times, loop_clean = _time_loop(loop_repos, args)
        cpu2 = _children_cpu()
        load_after = os.getloadavg()[0]

    n = args.repos
    rows = [
        ("total wall (s)", f"{fleet_wall:.1f}", f"{loop_wall:.1f}"),
        ("per-repo median (s)", f"{_median(fleet_times):.2f}", f"{_median(loop_times):.2f}"),
        (
            "updated without conflict",
            f"{fleet_clean}/{n} ({fleet_clean / n:.0%})",
            f"{loop_clean}/{n} ({loop_clean / n:.0%})",
        ),
        ("CPU, all processes (s)", f"{cpu1 - cpu0:.1f}", f"{cpu2 - cpu1:.1f}"),
    ]
    print(f"\n{'':26}{'fleet':>14}{'loop':>14}")
    for label, a, b in rows:
        print(f"{label:26}{a:>14}{b:>14}")
    print(f"ratio fleet/loop (wall): {fleet_wall / loop_wall:.2f}")
    print("(fleet per-repo times overlap, so its median includes waiting for shared CPUs)")
    # Other work on the machine skews wall times; CPU seconds show whether the work differed.
    print(f"1-min load average: {load_before:.1f} before, {load_after:.1f} after")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_bench", description=__doc__)
    parser.add_argument("--repos", type=int, default=50, metavar="N")
    parser.add_argument("--template", metavar="PATH", help="default: fleet.testing's template")
    parser.add_argument("--old", default="v1", metavar="REF", help="ref the repos start from")
    parser.add_argument("--new", default="v2", metavar="REF", help="ref to update to")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="J")
    parser.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="answer cycled over repos; `{i}` is the repo number (repeatable)",
    )
    parser.add_argument("--trust", action="store_true", help="for templates with tasks")
    return parser


def _share_bytecode_cache(prefix: Path) -> None:
    # Without it, a venv lacking .pyc files recompiles copier in every process, seconds each,
    # drowning the orchestration being measured. Warmed once, used by both sides.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(prefix))
    subprocess.run(
        [sys.executable, "-c", "import copier._cli, fleet.cli"], cwd=REPO_ROOT, check=True
    )


def _parse_vary(items: list[str]) -> dict[str, list[str]]:
    vary = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep:
            raise SystemExit(f"--vary expects KEY=V1,V2: {item!r}")
        vary[key] = values.split(",")
    return vary


def _render_fleet(
    root: Path, template: str, vary: dict[str, list[str]], args: argparse.Namespace
) -> list[Path]:
    repos = []
    for i in range(args.repos):
        data: dict[str, Any] = {k: v[i % len(v)].format(i=i) for k, v in vary.items()}
        repo = fx.render_repo(
            template, root / "fleet" / f"repo-{i:03}", ref=args.old, data=data, trust=args.trust
        )
        if i % 5 == 0:
            newer = fx.render_repo(
                template, root / "newer" / repo.name, ref=args.new, data=data, trust=args.trust
            )
            _edit_a_changed_line(repo, newer)
        elif i % 5 in (1, 2):
            _edit_elsewhere(repo)
        repos.append(repo)
    return repos


def _edit_a_changed_line(repo: Path, newer: Path) -> None:
    """Team edit on the first line the new template changes, so the update conflicts."""
    fallback: tuple[Path, list[str], int] | None = None
    for path in sorted(p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts):
        rel = path.relative_to(repo)
        if rel.as_posix() == g.ANSWERS_FILE or not (newer / rel).is_file():
            continue
        try:
            old = path.read_text().splitlines(keepends=True)
            new = (newer / rel).read_text().splitlines(keepends=True)
        except UnicodeDecodeError:
            continue
        for tag, i1, _, _, _ in difflib.SequenceMatcher(None, old, new).get_opcodes():
            if tag in ("replace", "delete"):
                return _commit_line_edit(repo, path, old, i1)
            if tag == "insert" and fallback is None and old:
                fallback = (path, old, max(i1 - 1, 0))
    if fallback:
        _commit_line_edit(repo, *fallback)


def _commit_line_edit(repo: Path, path: Path, lines: list[str], index: int) -> None:
    line = lines[index]
    lines[index] = line.rstrip("\r\n") + " (team edit)" + line[len(line.rstrip("\r\n")) :]
    path.write_text("".join(lines))
    fx.run_git(repo, "commit", "--quiet", "-am", "team: local change")


def _edit_elsewhere(repo: Path) -> None:
    (repo / "TEAM_NOTES.md").write_text("Owned by the team, unknown to the template.\n")
    readme = repo / "README.md"
    if readme.is_file():
        readme.write_text(readme.read_text() + "\nTeam note: on-call rota in the wiki.\n")
    fx.run_git(repo, "add", "-A")
    fx.run_git(repo, "commit", "--quiet", "-m", "team: notes")


def _time_fleet(
    root: Path, repos: list[Path], args: argparse.Namespace
) -> tuple[float, list[float], int]:
    report = root / "fleet-report"
    command = [
        sys.executable, "-m", "fleet", "update", "--to", args.new, "--no-checks",
        "--jobs", str(args.jobs), "--report", str(report), *(["--trust"] if args.trust else []),
        *map(str, repos),
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    print(f"(a) fleet: {proc.stdout.strip().splitlines()[-1]}", flush=True)
    records = json.loads((report / "report.json").read_text())
    clean = sum(r["status"] == "updated" for r in records)
    return wall, [r["seconds"] for r in records], clean


def _time_loop(repos: list[Path], args: argparse.Namespace) -> tuple[float, list[float], int]:
    times, clean = [], 0
    command = copier_update_command(args.new, trust=args.trust)
    start = time.monotonic()
    for repo in repos:
        t0 = time.monotonic()
        g.git(repo, "switch", "--quiet", "-c", default_branch(args.new))
        proc = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
        if proc.returncode == 0 and not g.find_conflicts(repo):
            g.commit_all(repo, f"chore: update template to {args.new}")
            clean += 1
        times.append(time.monotonic() - t0)
    wall = time.monotonic() - start
    print(f"(b) loop: {clean} of {len(repos)} updated without conflict", flush=True)
    return wall, times, clean


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
