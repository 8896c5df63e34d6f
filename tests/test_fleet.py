"""Tests for the fleet rollout command (`python -m fleet update`), offline, on a tiny template.

One module-scoped fleet run over nine repos covers the statuses, the reports and parallelism
(a barrier in the check command only passes when four repos sit in their checks at once); the
cheaper cases get their own runs.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet import testing as fx
from fleet.cli import read_repos_file
from fleet.repo import RefResolver, find_conflicts
from tests.fleet_support import (
    BRANCH,
    REPO_ROOT,
    copy_repo,
    git,
    read_report,
    report_path,
    run_fleet,
    snapshot,
)

TEAM_NOTE = "Team note: on-call is Alice."

# With `pytest -n N --dist loadgroup` the module's fixtures (one nine-repo fleet run) are built
# once instead of once per worker; plain `-n N` still passes, at twice the CPU.
pytestmark = pytest.mark.xdist_group("fleet")


@dataclass
class FleetRun:
    code: int
    stdout: str
    report: Path
    repos: dict[str, Path]
    records: dict[str, dict]
    main_before: dict[str, str]
    dirty_before: dict[str, bytes]
    dirty_status_before: str
    barrier: Path


@pytest.fixture(scope="module")
def fleet_run(tiny_template, pristine, tmp_path_factory) -> FleetRun:
    root = tmp_path_factory.mktemp("fleet")
    repos = {name: copy_repo(pristine, root / name) for name in ("clean", "team", "conflict")}
    fx.commit_edit(repos["team"], "README.md", lambda t: t + f"\n{TEAM_NOTE}\n", "docs: team")
    fx.commit_edit(
        repos["conflict"],
        fx.CHANGED_FILE,
        lambda t: t.replace(fx.OLD_LINE, "retries = 5"),
        "ops: five retries",
    )
    repos["failing"] = copy_repo(pristine, root / "failing")
    fx.commit_edit(
        repos["failing"],
        "Makefile",
        lambda _: "check:\n\t@echo broken by team; exit 3\n",
        "build: break check",
    )
    repos["dirty"] = copy_repo(pristine, root / "dirty")
    (repos["dirty"] / "README.md").write_text("half-done edit\n")
    (repos["dirty"] / "scratch.txt").write_text("untracked\n")
    # Varied answers, already at the target ref.
    repos["current"] = fx.render_repo(
        tiny_template, root / "current", ref="v2", data={"owner": "ml"}
    )
    repos["plain"] = root / "plain"
    repos["plain"].mkdir()
    (repos["plain"] / "README.md").write_text("not generated\n")
    git(repos["plain"], "init", "--quiet", "--initial-branch=main")
    git(repos["plain"], "add", "-A")
    git(repos["plain"], "commit", "--quiet", "-m", "init")
    # The branch holds work of its own (an earlier update); an empty one would be reused.
    repos["taken"] = copy_repo(pristine, root / "taken")
    git(repos["taken"], "switch", "--quiet", "-c", BRANCH)
    fx.commit_edit(repos["taken"], "README.md", lambda t: t + "wip\n", "wip: by hand")
    git(repos["taken"], "switch", "--quiet", "main")
    origin = copy_repo(pristine, root / "origin")

    main_before = {
        name: git(path, "rev-parse", "main") for name, path in repos.items() if name != "dirty"
    }
    # Status first: a plain `git status` may itself refresh .git/index.
    dirty_status_before = git(repos["dirty"], "status", "--porcelain")
    dirty_before = snapshot(repos["dirty"])

    # Passes only once four repos (clean, team, failing, the clone) are in their checks at
    # the same time, so a sequential runner would fail them all.
    barrier = root / "barrier"
    barrier.mkdir()
    b = shlex.quote(str(barrier))
    check = (
        f'touch {b}/"$(basename "$PWD")"; n=0; '
        f'while [ "$(ls {b} | wc -l)" -lt 4 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done; '
        f'[ "$(ls {b} | wc -l)" -ge 4 ] && make check'
    )
    order = ["clean", "team", "conflict", "failing", "dirty", "current", "plain", "taken"]
    specs = [str(repos[name]) for name in order] + [origin.as_uri()]
    report = root / "report"
    code, stdout = run_fleet(
        "--to", "v2", "--jobs", "4", "--report", str(report), "--check", check, *specs
    )
    records = read_report(report)
    by_name = dict(zip([*order, "remote"], records, strict=True))
    return FleetRun(
        code,
        stdout,
        report,
        repos,
        by_name,
        main_before,
        dirty_before,
        dirty_status_before,
        barrier,
    )


def test_clean_update_lands_on_a_new_branch(fleet_run):
    repo, record = fleet_run.repos["clean"], fleet_run.records["clean"]
    assert record["status"] == "updated"
    assert record["from_commit"] == "v1"
    assert record["branch"] == BRANCH
    assert fx.NEW_LINE in (repo / fx.CHANGED_FILE).read_text()
    assert (repo / fx.ADDED_FILE).is_file()
    assert "_commit: v2" in (repo / ".copier-answers.yml").read_text()
    assert git(repo, "branch", "--show-current") == BRANCH
    assert git(repo, "rev-parse", "main") == fleet_run.main_before["clean"]
    assert git(repo, "rev-parse", "HEAD~1") == fleet_run.main_before["clean"]
    assert git(repo, "log", "-1", "--format=%s") == "chore: update template to v2"
    assert git(repo, "status", "--porcelain") == ""


def test_team_edit_is_preserved(fleet_run):
    repo = fleet_run.repos["team"]
    assert fleet_run.records["team"]["status"] == "updated"
    assert TEAM_NOTE in (repo / "README.md").read_text()
    assert fx.NEW_LINE in (repo / fx.CHANGED_FILE).read_text()


def test_conflict_is_left_uncommitted_on_the_branch(fleet_run):
    repo, record = fleet_run.repos["conflict"], fleet_run.records["conflict"]
    assert record["status"] == "updated-with-conflicts"
    assert record["conflicts"] == [fx.CHANGED_FILE]
    assert record["checks"] is None  # no point checking a tree full of markers
    text = (repo / fx.CHANGED_FILE).read_text()
    assert "<<<<<<< " in text and "retries = 5" in text and fx.NEW_LINE in text
    assert git(repo, "branch", "--show-current") == BRANCH
    assert git(repo, "rev-parse", "HEAD") == fleet_run.main_before["conflict"]  # no commit
    assert f"UU {fx.CHANGED_FILE}" in git(repo, "status", "--porcelain").splitlines()


def test_dirty_repo_is_refused_and_untouched(fleet_run):
    repo = fleet_run.repos["dirty"]
    assert fleet_run.records["dirty"]["status"] == "skipped-dirty"
    assert fleet_run.records["dirty"]["branch"] is None
    assert snapshot(repo) == fleet_run.dirty_before
    assert git(repo, "status", "--porcelain") == fleet_run.dirty_status_before
    assert git(repo, "branch", "--format=%(refname:short)") == "main"


def test_failing_checks_are_reported_after_the_commit(fleet_run):
    repo, record = fleet_run.repos["failing"], fleet_run.records["failing"]
    assert record["status"] == "checks-failed"
    assert record["checks"]["returncode"] == 2  # make's own code when a recipe fails
    assert "broken by team" in record["checks"]["tail"]
    assert git(repo, "log", "-1", "--format=%s") == "chore: update template to v2"


def test_skips(fleet_run):
    statuses = {name: r["status"] for name, r in fleet_run.records.items()}
    assert statuses["current"] == "skipped-current"
    assert statuses["plain"] == "skipped-not-a-copier-repo"
    assert statuses["taken"] == "skipped-branch-exists"
    for name in ("current", "plain"):
        assert git(fleet_run.repos[name], "branch", "--format=%(refname:short)") == "main"
    assert git(fleet_run.repos["taken"], "branch", "--show-current") == "main"


def test_url_is_cloned_under_the_report_dir(fleet_run):
    record = fleet_run.records["remote"]
    assert record["status"] == "updated"
    clone = Path(record["path"])
    assert clone.parent == fleet_run.report / "repos"
    assert fx.NEW_LINE in (clone / fx.CHANGED_FILE).read_text()
    assert git(clone, "branch", "--show-current") == BRANCH


def test_repos_ran_in_parallel(fleet_run):
    assert len(list(fleet_run.barrier.iterdir())) == 4
    assert all(fleet_run.records[n]["checks"]["returncode"] == 0 for n in ("clean", "team"))


def test_reports_and_exit_code(fleet_run):
    assert fleet_run.code == 1  # conflicts, a failed check and skips that need a human
    records = read_report(fleet_run.report)
    assert len(records) == 9
    assert set(records[0]) == {
        "repo",
        "to_ref",
        "status",
        "path",
        "from_commit",
        "branch",
        "conflicts",
        "checks",
        "seconds",
        "message",
        "pull_request",
    }
    assert set(records[0]["checks"]) == {"command", "returncode", "seconds", "tail"}
    assert all(r["to_ref"] == "v2" and r["seconds"] >= 0 for r in records)

    md = report_path(fleet_run.report).with_suffix(".md").read_text()
    assert md.startswith("# Template rollout to `v2`")
    assert "| Repo | Status | From | Branch | Conflicts | Checks | Seconds |" in md
    table = [
        line for line in md.splitlines() if line.startswith(f"| {fleet_run.repos['clean'].parent}")
    ]
    assert len(table) == 8  # plus the URL row
    assert f"  - `{fx.CHANGED_FILE}`" in md
    assert "broken by team" in md

    assert "[9/9]" in fleet_run.stdout  # plain progress lines when not on a terminal
    assert ".md — exit 1" in fleet_run.stdout


def test_current_by_commit_sha_and_by_tag(tiny_template, pristine, tmp_path):
    repo = copy_repo(pristine, tmp_path / "repo")
    before = snapshot(repo)
    v1_sha = git(tiny_template, "rev-parse", "v1^{commit}")
    for ref in ("v1", v1_sha, v1_sha[:10]):
        code, _ = run_fleet("--to", ref, "--report", str(tmp_path / "report"), str(repo))
        record = read_report(tmp_path / "report")[0]
        assert (code, record["status"]) == (0, "skipped-current"), ref
    assert snapshot(repo) == before


def test_ref_resolution(tiny_template):
    resolver = RefResolver()
    src = str(tiny_template)
    v2_sha = git(tiny_template, "rev-parse", "v2^{commit}")
    assert resolver.same_commit(src, "v2", v2_sha[:7])
    assert resolver.same_commit(src, f"v1-1-g{v2_sha[:7]}", "v2")  # copier's describe form
    assert resolver.same_commit(src, "main", "v2")
    assert not resolver.same_commit(src, "v1", "v2")
    assert not resolver.same_commit(src, "v1", "no-such-ref")


def test_template_override_and_default_make_check(tiny_template, pristine, tmp_path):
    mirror = tmp_path / "mirror"
    git(tmp_path, "clone", "--quiet", str(tiny_template), str(mirror))
    repo = copy_repo(pristine, tmp_path / "repo")
    code, _ = run_fleet(
        "--to", "v2", "--template", str(mirror), "--report", str(tmp_path / "r"), str(repo)
    )
    record = read_report(tmp_path / "r")[0]
    assert (code, record["status"]) == (0, "updated"), record
    assert record["checks"]["command"] == "make check"
    # A local template is recorded as a git URL: Renovate skips an answers file with a path.
    assert f"_src_path: git+file://{mirror}\n" in (repo / ".copier-answers.yml").read_text()
    assert git(repo, "log", "--format=%s", "main..HEAD").splitlines() == [
        "chore: update template to v2",
        f"chore: point template source to git+file://{mirror}",
    ]


def test_copier_failure_restores_the_checkout(pristine, tmp_path):
    repo = copy_repo(pristine, tmp_path / "repo")
    code, stdout = run_fleet(
        "--to", "v9", "--no-checks", "--report", str(tmp_path / "r"), str(repo)
    )
    record = read_report(tmp_path / "r")[0]
    assert (code, record["status"], record["branch"]) == (1, "error", None)
    assert "copier update failed: ValueError: Unknown revision" in record["message"]
    assert git(repo, "branch", "--format=%(refname:short)") == "main"
    assert git(repo, "status", "--porcelain") == ""
    assert "error" in stdout


def test_conflict_detection_reads_the_tree(tmp_path, git_env):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".gitignore").write_text("*.rej\n")
    (repo / "MERGING.md").write_text(
        "How to merge\n\n<<<<<<< ours\nx\n=======\ny\n>>>>>>> theirs\n"
    )
    (repo / "README.md").write_text("Title\n")
    (repo / "logo.bin").write_bytes(b"\0<<<<<<< binary\n")
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "init")
    (repo / "MERGING.md").write_text((repo / "MERGING.md").read_text() + "more\n")  # old markers
    (repo / "README.md").write_text("Title\n=======\n")  # heading underline, not a conflict
    (repo / "logo.bin").write_bytes(b"\0<<<<<<< still binary\n")
    (repo / "new.py").write_text("<<<<<<< before updating\na\n=======\nb\n>>>>>>> after updating\n")
    (repo / "settings.ini.rej").write_text("@@ hunk\n")  # ignored, still found
    assert find_conflicts(repo) == ["new.py", "settings.ini.rej"]


def test_repos_file_comments_and_duplicates(tmp_path, git_env):
    plain = tmp_path / "plain"
    plain.mkdir()
    git(plain, "init", "--quiet", "--initial-branch=main")
    listing = tmp_path / "repos.txt"
    listing.write_text(f"# fleet\n\n{plain}  # trailing comment\n{plain}/.\n")
    assert read_repos_file(listing) == [str(plain), f"{plain}/."]
    code, _ = run_fleet(
        "--to", "v2", "--repos-file", str(listing), "--report", str(tmp_path / "r"), str(plain)
    )
    records = read_report(tmp_path / "r")
    assert [r["status"] for r in records] == ["skipped-not-a-copier-repo"]
    assert code == 1


def test_module_entry_point(tmp_path):
    help_run = subprocess.run(
        [sys.executable, "-m", "fleet", "update", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert help_run.returncode == 0
    assert "--repos-file" in help_run.stdout
    assert "--no-checks" in help_run.stdout
    no_repos = subprocess.run(
        [sys.executable, "-m", "fleet", "update", "--to", "v2", "--report", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert no_repos.returncode == 2
    assert "no repositories given" in no_repos.stderr
