"""Benchmark the fleet command against `copier update` run by hand in a sequential loop.

    python -m bench.fleet_bench [--repos N] [--release | --template PATH --old REF --new REF]
                                [--jobs J] [--vary KEY=V1,V2,...] [--trust]

Renders N repos from the old ref with varied answers and team edits, copies them, then times
(a) `python -m fleet update --no-checks` over one set and (b) a loop doing `git switch -c` +
`copier update` + conflict scan + commit, one repo after another, over the other. Both use the
same copier and share one warmed bytecode cache, so Python start-up is not what is measured.

`--release` (the realistic case): the working tree becomes release OLD and bench/release.py
makes NEW from it (README sections, Makefile targets and CI steps changed). Every repository
makes the edits a team typically makes (a README note in the team section, a team.mk target
and CI step, a new flow, a new test, a config value); every fifth also edits a line the release
changes. Each conflict is classified: intended when the team's edit overlaps lines the release
changed (same old lines), false otherwise (e.g. an edit merely next to a changed line).

Without `--template` or `--release`: the tiny template of fleet.testing.
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

from bench import release
from fleet import repo as g
from fleet import testing as fx
from fleet.update import copier_update_command, default_branch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_VARY = {"project_name": ["pipeline-{i}"], "owner": ["data-team", "ml-team", "platform"]}
RELEASE_VARY = {
    "project_name": ["Pipeline {i}"],
    "runtime": ["process", "docker", "kubernetes", "ecs"],
    "secret_backend": ["env", "prefect", "vault"],
    "ci_platform": ["github-actions", "gitlab-ci", "bitbucket-pipelines", "azure-pipelines"],
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for key, value in fx.GIT_IDENTITY.items():
        os.environ.setdefault(key, value)
    with TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(tmp)
        _share_bytecode_cache(root / "pycache")
        if args.release:
            template = str(release.build(root / "template"))
            args.old, args.new, args.trust = release.OLD, release.NEW, True
            vary = _parse_vary(args.vary) or RELEASE_VARY
        elif args.template:
            template, vary = str(Path(args.template).resolve()), _parse_vary(args.vary)
        else:
            template, vary = str(fx.build_template(root / "template")), FIXTURE_VARY
        print(
            f"fleet bench: {args.repos} repos, {template} {args.old} -> {args.new}, "
            f"jobs {args.jobs}, {os.cpu_count()} CPUs",
            flush=True,
        )

        start = time.monotonic()
        fleet_repos, answers = _render_fleet(root, template, vary, args)
        loop_repos = [root / "loop" / p.name for p in fleet_repos]
        for src, dest in zip(fleet_repos, loop_repos, strict=True):
            shutil.copytree(src, dest, symlinks=True)
        print(f"rendered and copied in {time.monotonic() - start:.1f} s", flush=True)

        load_before = os.getloadavg()[0]
        cpu0 = _children_cpu()
        fleet_wall, fleet_times, fleet_conflicts = _time_fleet(root, fleet_repos, args)
        cpu1 = _children_cpu()
        loop_wall, loop_times, loop_conflicts = _time_loop(loop_repos, args)
        cpu2 = _children_cpu()
        load_after = os.getloadavg()[0]
        same = sum(
            fx.worktree_files(a) == fx.worktree_files(b)
            for a, b in zip(fleet_repos, loop_repos, strict=True)
        )
        renders = Renders(root / "newer", template, args)
        fleet_kinds = _classify_all(fleet_repos, fleet_conflicts, answers, renders)
        loop_kinds = _classify_all(loop_repos, loop_conflicts, answers, renders)

    n = args.repos
    fleet_clean = sum(not c for c in fleet_conflicts.values())
    loop_clean = sum(not c for c in loop_conflicts.values())
    rows = [
        ("total wall (s)", f"{fleet_wall:.1f}", f"{loop_wall:.1f}"),
        ("per-repo median (s)", f"{_median(fleet_times):.2f}", f"{_median(loop_times):.2f}"),
        (
            "updated without conflict",
            f"{fleet_clean}/{n} ({fleet_clean / n:.0%})",
            f"{loop_clean}/{n} ({loop_clean / n:.0%})",
        ),
        ("same tree as the other side", f"{same}/{n}", f"{same}/{n}"),
        ("conflicts, intended", str(fleet_kinds["intended"]), str(loop_kinds["intended"])),
        ("conflicts, false", str(fleet_kinds["false"]), str(loop_kinds["false"])),
        ("CPU, all processes (s)", f"{cpu1 - cpu0:.1f}", f"{cpu2 - cpu1:.1f}"),
    ]
    print(f"\n{'':26}{'fleet':>14}{'loop':>14}")
    for label, a, b in rows:
        print(f"{label:26}{a:>14}{b:>14}")
    print(f"ratio fleet/loop (wall): {fleet_wall / loop_wall:.2f}")
    print("(fleet per-repo times overlap, so its median includes waiting for shared CPUs)")
    # Other work on the machine skews wall times; CPU seconds show whether the work differed.
    print(f"1-min load average: {load_before:.1f} before, {load_after:.1f} after")
    for path in fleet_kinds["false paths"]:
        print(f"false conflict: {path}")
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
    parser.add_argument(
        "--release",
        action="store_true",
        help="this working tree as OLD, bench/release.py's next release as NEW (the real case)",
    )
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
) -> tuple[list[Path], dict[str, dict[str, Any]]]:
    repos, answers = [], {}
    for i in range(args.repos):
        data: dict[str, Any] = {k: v[i % len(v)].format(i=i) for k, v in vary.items()}
        repo = fx.render_repo(
            template, root / "fleet" / f"repo-{i:03}", ref=args.old, data=data, trust=args.trust
        )
        answers[repo.name] = data
        if args.release:
            release.typical_team_edits(repo)
        elif i % 5 in (1, 2):
            _edit_elsewhere(repo)
        if i % 5 == 0:
            newer = fx.render_repo(
                template, root / "newer" / repo.name, ref=args.new, data=data, trust=args.trust
            )
            _edit_a_changed_line(repo, newer)
        repos.append(repo)
    return repos, answers


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
    [report_json] = report.glob("report-*.json")
    records = json.loads(report_json.read_text())
    bad = [r for r in records if r["status"] not in ("updated", "updated-with-conflicts")]
    if bad:
        raise SystemExit(f"fleet failed on {len(bad)} repos, first: {bad[0]}")
    conflicts = {Path(r["repo"]).name: r["conflicts"] for r in records}
    return wall, [r["seconds"] for r in records], conflicts


def _time_loop(
    repos: list[Path], args: argparse.Namespace
) -> tuple[float, list[float], dict[str, list[str]]]:
    times, conflicts = [], {}
    command = copier_update_command(args.new, trust=args.trust)
    start = time.monotonic()
    for repo in repos:
        t0 = time.monotonic()
        g.git(repo, "switch", "--quiet", "-c", default_branch(args.new))
        proc = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"copier update failed in {repo}: {proc.stderr[-2000:]}")
        conflicts[repo.name] = g.find_conflicts(repo)
        if not conflicts[repo.name]:
            g.commit_all(repo, f"chore: update template to {args.new}")
        times.append(time.monotonic() - t0)
    wall = time.monotonic() - start
    clean = sum(not c for c in conflicts.values())
    print(f"(b) loop: {clean} of {len(repos)} updated without conflict", flush=True)
    return wall, times, conflicts


class Renders:
    """Fresh renders at the new ref, one per repository that needs one (after the timing)."""

    def __init__(self, root: Path, template: str, args: argparse.Namespace) -> None:
        self.root, self.template, self.args = root, template, args

    def of(self, name: str, data: dict[str, Any]) -> Path:
        dest = self.root / name
        if not dest.exists():
            fx.render_repo(self.template, dest, ref=self.args.new, data=data, trust=self.args.trust)
        return dest


def _classify_all(
    repos: list[Path],
    conflicts: dict[str, list[str]],
    answers: dict[str, dict[str, Any]],
    renders: Renders,
) -> dict[str, Any]:
    kinds: dict[str, Any] = {"intended": 0, "false": 0, "false paths": []}
    for repo in repos:
        for path in conflicts.get(repo.name, []):
            new = renders.of(repo.name, answers[repo.name]) / path
            intended = _team_overlaps_release(repo, path, new)
            kinds["intended" if intended else "false"] += 1
            if not intended:
                kinds["false paths"].append(f"{repo.name}/{path}")
    return kinds


def _team_overlaps_release(repo: Path, path: str, new: Path) -> bool:
    """Did the team change any line (of the first render) that the release also changed?"""
    root = fx.run_git(repo, "rev-list", "--max-parents=0", "HEAD").split()[0]
    old = _show(repo, f"{root}:{path}")
    team = _show(repo, f"main:{path}")
    release_text = new.read_text() if new.is_file() else None
    if old is None or team is None or release_text is None:
        return team is not None and team != old  # added or deleted by the team: theirs
    return _overlap(_changed_spans(old, team), _changed_spans(old, release_text))


def _show(repo: Path, spec: str) -> str | None:
    proc = g.git(repo, "show", spec, check=False)
    return proc.stdout if proc.returncode == 0 else None


def _changed_spans(old: str, new: str) -> list[tuple[int, int]]:
    """Spans [i1, i2) of old lines changed; an insertion is the empty span at its position."""
    matcher = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    return [(i1, i2) for tag, i1, i2, _, _ in matcher.get_opcodes() if tag != "equal"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _overlap(team: list[tuple[int, int]], release_spans: list[tuple[int, int]]) -> bool:
    return any(_spans_overlap(a, b) for a in team for b in release_spans)


def _spans_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    # Touching is not overlapping: an edit right next to a changed line is the false case.
    (a1, a2), (b1, b2) = a, b
    if a1 == a2 and b1 == b2:
        return a1 == b1  # two insertions at the same place
    if a1 == a2:
        return b1 < a1 < b2
    if b1 == b2:
        return a1 < b1 < a2
    return a1 < b2 and b1 < a2


if __name__ == "__main__":
    raise SystemExit(main())
