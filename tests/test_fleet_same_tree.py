"""The fleet's warm workers patch copier's internals to do shared work once (fleet/worker.py):
on the real template, an update through the fleet must leave exactly the tree that the
`copier update` a person runs by hand leaves, conflicts included."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fleet import repo as g
from fleet.testing import worktree_files
from fleet.update import copier_update_command
from tests.fleet_support import read_report, run_fleet
from tests.history import releases
from tests.test_update import ANSWER_SETS, copy_at, make_team_edits

pytestmark = pytest.mark.slow


def by_hand(repo: Path, ref: str) -> None:
    proc = subprocess.run(
        copier_update_command(ref, trust=True), cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def through_the_fleet(repos: list[Path], ref: str, report: Path) -> list[dict]:
    run_fleet("--to", ref, "--trust", "--no-checks", "--jobs", "2", "--report", str(report),
              *map(str, repos))  # fmt: skip
    return read_report(report)


def test_fleet_and_copier_update_leave_the_same_tree(tagged: Path, tmp_path: Path) -> None:
    # From the oldest release (its migration runs) with other answers and team edits, and from
    # the default answers at HEAD with a team edit that conflicts with the next release.
    template = tmp_path / "template"
    shutil.copytree(tagged, template)
    answers = ANSWER_SETS["two-environments"]
    oldest = copy_at(template, next(iter(releases())), tmp_path / "hand" / "oldest", answers)
    make_team_edits(oldest)
    starts = {"oldest": oldest}
    conflicting = copy_at(template, "HEAD", tmp_path / "hand" / "conflict", {})
    makefile = conflicting / "Makefile"
    makefile.write_text(makefile.read_text().replace("## Run the tests", "## Run our tests"))
    g.git(conflicting, "commit", "-q", "-am", "Team wording")
    source = template / "template" / "Makefile.jinja"
    source.write_text(source.read_text().replace("## Run the tests", "## Run the test suite"))
    g.git(template, "commit", "-q", "-am", "Template wording")
    g.git(template, "tag", "v99.0.0")
    starts["conflict"] = conflicting
    fleet_side = {
        name: shutil.copytree(repo, tmp_path / "fleet" / name, symlinks=True)
        for name, repo in starts.items()
    }

    for repo in starts.values():
        by_hand(repo, "v99.0.0")
    records = through_the_fleet(list(fleet_side.values()), "v99.0.0", tmp_path / "report")

    assert [r["status"] for r in records] == ["updated", "updated-with-conflicts"]
    assert g.find_conflicts(starts["conflict"]) == ["Makefile"]
    for name, repo in starts.items():
        by_hand_tree, fleet_tree = worktree_files(repo), worktree_files(fleet_side[name])
        assert by_hand_tree.keys() == fleet_tree.keys(), name
        differing = [path for path in by_hand_tree if by_hand_tree[path] != fleet_tree[path]]
        assert differing == [], name
