"""`python -m fleet status`: where each repository stands against its template (read-only).

Reads the answers file and git only: nothing is rendered, nothing is written (git runs with
GIT_OPTIONAL_LOCKS=0, so not even the index's stat cache is refreshed). Releases are the
template's tags that look like versions (`v1.2.3`, `1.2.3`, `v2`), read with one `git ls-remote`
per template source.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from fleet import repo as g
from fleet import safety

UPDATE_BRANCH_PREFIX = "template-update/"
ANSWER_KEYS = ("runtime", "secret_backend", "ci_platform")
_RELEASE = re.compile(r"^v?\d+(?:\.\d+)*$")
_DESCRIBED = re.compile(r"^(?P<tag>.+)-(?P<ahead>\d+)-g[0-9a-f]+$")


@dataclass
class RepoStatus:
    repo: str
    release: str | None = None  # the answers' _commit as copier wrote it
    latest: str | None = None
    behind: int | None = None  # releases newer than `release`; None when unknown
    answers: dict[str, str] = field(default_factory=dict)
    dirty: bool = False
    branch: str | None = None
    update_branches: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    interrupted_update: str | None = None  # the update branch a killed run left a marker for
    renovate: str | None = None  # why Renovate cannot update it from its `_src_path`, if so
    error: str | None = None


def releases(refs: dict[str, str]) -> list[str]:
    """Version-like tags, oldest first."""
    found = {name for name in refs if _RELEASE.match(name)}
    return sorted(found, key=lambda name: tuple(int(x) for x in name.lstrip("v").split(".")))


def behind(commit: str, ordered: list[str]) -> int | None:
    tag = commit
    if (match := _DESCRIBED.match(commit)) and match["tag"] in ordered:
        tag = match["tag"]  # commits after a release are still behind the ones after it
    if tag not in ordered:
        return None
    return len(ordered) - 1 - ordered.index(tag)


def repo_status(spec: str, resolver: g.RefResolver, template: str | None) -> RepoStatus:
    status = RepoStatus(repo=spec)
    try:
        _fill(status, Path(spec).expanduser().resolve(), resolver, template)
    except Exception as exc:
        status.error = f"{type(exc).__name__}: {exc}"
    return status


def _fill(status: RepoStatus, path: Path, resolver: g.RefResolver, template: str | None) -> None:
    if not path.is_dir():
        status.error = f"no such directory: {path}"
        return
    top = g.toplevel(path)
    if top is None:
        status.error = "not a git repository"
        return
    status.branch = g.current_branch(top)
    status.dirty = g.is_dirty(top)
    status.update_branches = g.git(
        top, "for-each-ref", "--format=%(refname:short)", f"refs/heads/{UPDATE_BRANCH_PREFIX}"
    ).stdout.split()
    marker = safety.read_marker(safety.git_dir(top))
    status.interrupted_update = marker.update_branch if marker else None
    if status.dirty:
        # Conflicts are left uncommitted (the fleet never commits markers): only a dirty tree
        # can hold them.
        status.conflicts = g.find_conflicts(top)

    answers_file = path / g.ANSWERS_FILE
    if not answers_file.is_file():
        status.error = f"no {g.ANSWERS_FILE}: not generated from a Copier template"
        return
    answers = yaml.safe_load(answers_file.read_text()) or {}
    status.answers = {k: str(answers[k]) for k in ANSWER_KEYS if k in answers}
    status.release = str(answers.get("_commit")) if answers.get("_commit") else None
    if answers.get("_src_path"):
        status.renovate = g.renovate_problem(str(answers["_src_path"]))
    src = template or answers.get("_src_path")
    if src and status.release:
        ordered = releases(resolver.refs(str(src)))
        status.latest = ordered[-1] if ordered else None
        status.behind = behind(status.release, ordered)


def collect(repos: list[str], template: str | None = None) -> list[RepoStatus]:
    os.environ["GIT_OPTIONAL_LOCKS"] = "0"  # read-only: no index refresh either
    resolver = g.RefResolver()
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda spec: repo_status(spec, resolver, template), repos))


def render_markdown(statuses: list[RepoStatus]) -> str:
    lines = [
        "# Template status",
        "",
        "| Repo | Release | Behind | Runtime | Secrets | CI | Dirty | Update branches "
        "| Conflicts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in statuses:
        behind_cell = "" if s.behind is None else str(s.behind)
        if s.behind and s.latest:
            behind_cell += f" (latest {s.latest})"
        cells = [
            s.repo,
            s.release or "",
            behind_cell,
            s.answers.get("runtime", ""),
            s.answers.get("secret_backend", ""),
            s.answers.get("ci_platform", ""),
            "yes" if s.dirty else "no",
            ", ".join(s.update_branches),
            ", ".join(s.conflicts),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = [s for s in statuses if s.error or s.interrupted_update or s.renovate]
    if notes:
        lines += ["", "## Notes", ""]
    for s in notes:
        if s.error:
            lines.append(f"- {s.repo}: {s.error}")
        if s.renovate:
            lines.append(f"- {s.repo}: {s.renovate}")
        if s.interrupted_update:
            lines.append(
                f"- {s.repo}: a fleet run was cut short on `{s.interrupted_update}`; the next "
                "`fleet update` restores and completes it"
            )
    return "\n".join(lines) + "\n"


def print_status(repos: list[str], fmt: str, template: str | None) -> int:
    statuses = collect(repos, template)
    if fmt == "json":
        print(json.dumps([asdict(s) for s in statuses], indent=2))
    else:
        print(render_markdown(statuses), end="")
    return 1 if any(s.error for s in statuses) else 0
