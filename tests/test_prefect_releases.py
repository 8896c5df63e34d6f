"""The accepted Prefect range follows Prefect's releases within a week (scripts/follow_prefect.py).

A release that has been on PyPI for more than a week outside the range fails this module, so
the template's CI is red until `python -m scripts.follow_prefect X.Y.Z` moves the range and
tests/test_prefect_versions.py installs and validates the new end. The move itself is tested
on a copy of the template: every place that states the range changes at once and copier then
accepts the new release.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import copier
import pytest
import yaml

from scripts import follow_prefect as fp
from tests.test_prefect_versions import INSTALLED

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def test_no_prefect_release_a_week_old_is_left_out_of_the_range() -> None:
    """Live PyPI: the template's own CI fails a week after a release it does not accept."""
    releases = fp.published()
    assert releases, "PyPI listed no final Prefect 3 release"
    _, highest = fp.accepted_range()
    late = fp.overdue(releases, highest, datetime.now(UTC))
    assert not late, (
        "Prefect releases out for over a week that copier.yml refuses: "
        + ", ".join(f"{fp.shown(v)} ({at:%Y-%m-%d})" for v, at in late)
        + f"; run `.venv/bin/python -m scripts.follow_prefect {fp.shown(late[-1][0])}`"
    )


def test_every_release_line_in_the_range_is_installed_by_the_version_test() -> None:
    """A range spanning two minor lines installs the newest release of each, not only the ends."""
    lowest, highest = fp.accepted_range()
    lines = fp.lines_in_range(fp.published(), lowest, highest)
    assert lines, "PyPI lists no release inside the accepted range"
    missing = [fp.shown(v) for v in lines if fp.shown(v) not in INSTALLED]
    assert not missing, f"add {missing} to tests/test_prefect_versions.py's LINES"


def test_only_a_final_release_a_week_old_above_the_range_is_overdue() -> None:
    releases = {
        (3, 9, 1): NOW - timedelta(days=40),
        (3, 9, 2): NOW - timedelta(days=8),
        (3, 10, 0): NOW - timedelta(days=6),
    }
    assert fp.overdue(releases, (3, 9, 1), NOW) == [((3, 9, 2), NOW - timedelta(days=8))]
    assert fp.overdue(releases, (3, 9, 2), NOW) == []
    assert fp.parse("3.10.0rc1") is None and fp.parse("3.9.1.dev3") is None
    assert fp.lines_in_range(releases, (3, 9, 0), (3, 10, 0)) == [(3, 9, 2), (3, 10, 0)]


SCRIPT_FILES = ("includes", "copier.yml", "README.md", "pyproject.toml")


def copy_of_the_template(template: Path, destination: Path) -> Path:
    shutil.copytree(template, destination, ignore=shutil.ignore_patterns(".git"))
    return destination


def test_moving_the_top_rewrites_every_place_and_copier_accepts_the_release(
    template: Path, tmp_path: Path
) -> None:
    root = copy_of_the_template(template, tmp_path / "template")
    lowest, highest = fp.accepted_range(root)
    newer = (highest[0], highest[1], highest[2] + 1)
    low, old, new = fp.shown(lowest), fp.shown(highest), fp.shown(newer)

    def answer(version: str) -> None:
        copier.run_copy(
            str(root),
            tmp_path / f"out-{version}",
            data={"prefect_version": version},
            defaults=True,
            pretend=True,
            quiet=True,
            unsafe=True,
        )

    with pytest.raises(ValueError, match=re.escape(f"prefect_version: '{new}' is not a release")):
        answer(new)
    changed = fp.move_top(newer, root)
    assert changed == sorted(
        root / name
        for name in (
            "README.md",
            "copier.yml",
            "includes/validators.jinja",
            "pyproject.toml",
        )
    )
    assert fp.accepted_range(root) == (lowest, newer)
    question = yaml.safe_load((root / "copier.yml").read_text())["prefect_version"]
    assert question["default"] == new
    assert f"{low} to {new}" in " ".join(question["help"].split())
    assert f'"prefect=={new}"' in (root / "pyproject.toml").read_text()
    assert f"| {new} | an exact release from {low} to {new}," in (root / "README.md").read_text()
    answer(new)  # copier's validator accepts the new top now
    # Nothing left stating the old top as the range's end.
    for name in SCRIPT_FILES[1:]:
        assert f"{low} to {old}" not in (root / name).read_text(), name
    # A second move to the same release, or one below the top, changes nothing.
    before = {p: p.read_text() for p in changed}
    with pytest.raises(SystemExit, match="not above the range's top"):
        fp.move_top(newer, root)
    assert {p: p.read_text() for p in changed} == before


def test_a_place_that_moved_stops_the_move_before_anything_is_written(
    template: Path, tmp_path: Path
) -> None:
    root = copy_of_the_template(template, tmp_path / "template")
    _, highest = fp.accepted_range(root)
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("| `prefect_version` |", "| `prefect` |"))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=re.escape("README.md: expected")):
        fp.move_top((highest[0], highest[1], highest[2] + 1), root)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
