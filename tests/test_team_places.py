"""Typical team edits, made where the generated README offers them, never conflict with a
release: a realistic next release (bench/release.py) changes README sections, Makefile targets
and every platform's CI step; the team adds a README note, a team.mk target and CI step, a new
flow, a new test and a config value. (An edit on a line a release changes still conflicts:
tests/test_update.py, and the bench counts those as intended conflicts.)
"""

from __future__ import annotations

from pathlib import Path

import copier
import pytest

from bench import release
from fleet import testing as fx
from fleet.repo import find_conflicts
from tests.rendering import choices


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release.build(tmp_path_factory.mktemp("release") / "copier-prefect")


def update(repo: Path) -> None:
    copier.run_update(
        repo,
        vcs_ref=release.NEW,
        defaults=True,
        overwrite=True,
        conflict="inline",
        quiet=True,
        unsafe=True,
    )


@pytest.mark.slow
def test_typical_team_edits_never_conflict_with_a_release(released: Path, tmp_path: Path) -> None:
    platforms = choices("ci_platform")
    runtimes = choices("runtime")
    for n, platform in enumerate(platforms):
        data = {"ci_platform": platform, "runtime": runtimes[n % len(runtimes)]}
        repo = fx.render_repo(released, tmp_path / platform, ref=release.OLD, data=data, trust=True)
        release.typical_team_edits(repo)

        update(repo)

        assert find_conflicts(repo) == [], platform
        readme = (repo / "README.md").read_text()
        assert "(Revised.)" in readme, "the release's README changes arrived"
        assert readme.endswith(release.TEAM_NOTE)
        team_mk = (repo / "team.mk").read_text()
        assert release.TEAM_TARGET in team_mk and release.TEAM_CI_STEP in team_mk
        assert "typecheck:" in (repo / "Makefile").read_text()
