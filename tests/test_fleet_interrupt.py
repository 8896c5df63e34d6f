"""Stopping `python -m fleet update` with real signals, rerunning it, and two runs at once.

The fleet runs as a subprocess against real repositories. Signals are sent at a known point:
v3 of the tiny template has a migration that writes `<gate>.reached` after copier has written
the new files, then waits while `<gate>.hold` exists; a check command writes its pid and
sleeps. No test guesses a delay.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fleet import safety
from fleet import testing as fx
from fleet.cli import main
from tests.fleet_support import (
    BRANCH,
    REPO_ROOT,
    copy_repo,
    git,
    read_report,
)

pytestmark = pytest.mark.xdist_group("fleet")


@pytest.fixture(scope="module")
def gated_template(tmp_path_factory, git_env) -> Path:
    template = fx.build_template(tmp_path_factory.mktemp("gated") / "template")
    fx.add_gated_release(template)
    return template


@pytest.fixture(scope="module")
def gated_pristine(gated_template, tmp_path_factory) -> Path:
    return fx.render_repo(gated_template, tmp_path_factory.mktemp("gated-pristine") / "repo")


def state(repo: Path) -> dict[str, object]:
    """Branch, refs, index bytes and every file of the tree: what a restore must give back."""
    gitdir = repo / ".git"
    return {
        "HEAD": (gitdir / "HEAD").read_text(),
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "index": (gitdir / "index").read_bytes(),
        "tree": fx.worktree_files(repo),
        "fleet files": sorted(p.name for p in gitdir.iterdir() if p.name.startswith("fleet")),
    }


def start_fleet(*argv: str, gate: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ}
    if gate:
        env[fx.GATE_ENV] = str(gate)
    return subprocess.Popen(
        [sys.executable, "-m", "fleet", "update", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"fleet exited before {path.name}: {proc.stdout.read()}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)
    time.sleep(0.05)  # the writer may not have flushed its one line yet
    return path.read_text().strip()


def process_gone(pid: int) -> bool:
    """Gone or a zombie: either way it can no longer write anything."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z"


def group_gone(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def test_sigint_mid_update_restores_then_a_rerun_completes(gated_pristine, tmp_path):
    """Also: a second run at the same time refuses the repository the first one holds."""
    held = copy_repo(gated_pristine, tmp_path / "held")
    waiting = copy_repo(gated_pristine, tmp_path / "waiting")
    before = {name: state(repo) for name, repo in (("held", held), ("waiting", waiting))}
    gate = tmp_path / "gate"
    Path(f"{gate}.hold").touch()
    report = tmp_path / "report"
    args = ["--to", "v3", "--trust", "--no-checks", "--jobs", "1", "--report", str(report)]

    first = start_fleet(*args, str(held), str(waiting), gate=gate)
    migration_pid = int(wait_for(Path(f"{gate}.reached"), first))
    # copier has written v3 into `held` (its answers say v3) and the migration has not finished.
    assert "_commit: v3" in (held / ".copier-answers.yml").read_text()

    second = start_fleet("--to", "v3", "--no-checks", "--report", str(tmp_path / "r2"), str(held))
    out2, _ = second.communicate(timeout=60)
    assert second.returncode == 1, out2
    [locked] = read_report(tmp_path / "r2")
    assert locked["status"] == "skipped-locked"
    assert "another fleet run holds this repository (pid" in locked["message"]

    started = time.monotonic()
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=60)
    assert time.monotonic() - started < 15  # bounded: a 5 s grace, then SIGKILL
    assert first.returncode == 128 + signal.SIGINT, out
    assert process_gone(migration_pid)
    records = {Path(r["repo"]).name: r for r in read_report(report)}
    assert records["held"]["status"] == "interrupted"
    assert "stopped by SIGINT; restored to main as it was" in records["held"]["message"]
    assert records["waiting"]["status"] == "interrupted"
    assert records["waiting"]["message"].startswith("not started")
    assert state(held) == before["held"]
    assert state(waiting) == before["waiting"]

    Path(f"{gate}.hold").unlink()
    rerun = start_fleet(*args, str(held), str(waiting), gate=gate)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    assert len(list(report.glob("report-*.json"))) == 2  # the first report is still there
    assert [r["status"] for r in read_report(report)] == ["updated", "updated"]
    for repo in (held, waiting):
        assert "timeout = 90" in (repo / fx.CHANGED_FILE).read_text()
        assert git(repo, "branch", "--show-current") == "template-update/v3"


def test_sigterm_during_checks_kills_their_process_group_and_restores(pristine, tmp_path):
    repo = copy_repo(pristine, tmp_path / "repo")
    before = state(repo)
    pidfile = tmp_path / "check.pid"
    # A grandchild in the background, as test runners and servers leave them.
    check = f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; sleep 300 & sleep 300"
    fleet = start_fleet("--to", "v2", "--check", check, "--report", str(tmp_path / "r"), str(repo))
    pgid = int(wait_for(pidfile, fleet))

    fleet.send_signal(signal.SIGTERM)
    out, _ = fleet.communicate(timeout=60)
    assert fleet.returncode == 128 + signal.SIGTERM, out
    assert group_gone(pgid)
    [record] = read_report(tmp_path / "r")
    # The update was committed before its checks: still rolled back, it was not finished.
    assert record["status"] == "interrupted"
    assert record["checks"] is None
    assert state(repo) == before


def test_a_run_killed_outright_is_detected_and_completed_by_the_next(gated_pristine, tmp_path):
    repo = copy_repo(gated_pristine, tmp_path / "repo")
    gate = tmp_path / "gate"
    Path(f"{gate}.hold").touch()
    args = ["--to", "v3", "--trust", "--no-checks", "--report", str(tmp_path / "r"), str(repo)]
    fleet = start_fleet(*args, gate=gate)
    wait_for(Path(f"{gate}.reached"), fleet)
    # What a CI runner cancelling a job does: SIGKILL to every process, no chance to clean up.
    worker_pgid = os.getpgid(int(Path(f"{gate}.reached").read_text()))
    fleet.kill()
    os.killpg(worker_pgid, signal.SIGKILL)
    fleet.communicate(timeout=30)
    Path(f"{gate}.hold").unlink()
    # Half-updated: v3 in the answers, the migration never finished, the tree dirty.
    assert "_commit: v3" in (repo / ".copier-answers.yml").read_text()
    assert safety.read_marker(repo / ".git") is not None

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", "--format", "json", str(repo)]) == 0
    [status] = json.loads(out.getvalue())
    assert status["interrupted_update"] == "template-update/v3"
    assert status["dirty"] is True

    rerun = start_fleet(*args)
    output, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, output
    [record] = read_report(tmp_path / "r")
    assert record["status"] == "updated"
    assert record["message"].startswith("resumed: an earlier run was cut short")
    assert git(repo, "log", "--format=%s", "main..HEAD") == "chore: update template to v3"
    assert git(repo, "status", "--porcelain") == ""
    assert safety.read_marker(repo / ".git") is None


@pytest.mark.parametrize("checked_out", [False, True], ids=["beside", "checked-out"])
def test_an_empty_leftover_update_branch_is_recreated(pristine, tmp_path, checked_out):
    repo = copy_repo(pristine, tmp_path / "repo")
    # What an interrupted run of an older fleet left: the branch, created, and nothing on it.
    git(repo, *(["switch", "--quiet", "-c"] if checked_out else ["branch"]), BRANCH)
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(
            ["update", "--to", "v2", "--no-checks", "--report", str(tmp_path / "r"), str(repo)]
        )
    [record] = read_report(tmp_path / "r")
    assert (code, record["status"]) == (0, "updated"), record
    assert git(repo, "rev-parse", "HEAD~1") == git(repo, "rev-parse", "main")
    assert git(repo, "branch", "--show-current") == BRANCH


def test_the_default_report_folder_never_dirties_a_repository(pristine, tmp_path, monkeypatch):
    repo = copy_repo(pristine, tmp_path / "repo")
    monkeypatch.chdir(repo)  # run from inside the repository, with the default --report
    for expected in ("updated", "skipped-current"):
        with contextlib.redirect_stdout(io.StringIO()):
            main(["update", "--to", "v2", "--no-checks", str(repo)])
        record = read_report(repo / "fleet-report")[0]
        assert record["status"] == expected, record
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert len(list((repo / "fleet-report").glob("report-*.md"))) == 2
    shutil.rmtree(repo / "fleet-report")


def test_lock_wait_waits_for_the_holder(pristine, tmp_path):
    repo = copy_repo(pristine, tmp_path / "repo")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with safety.repo_lock(repo / ".git"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    threading.Timer(1.0, release.set).start()
    with contextlib.redirect_stdout(io.StringIO()):
        report = ["--report", str(tmp_path / "r")]
        code = main(
            ["update", "--to", "v2", "--no-checks", "--lock-wait", "20", *report, str(repo)]
        )
    holder.join()
    [record] = read_report(tmp_path / "r")
    assert (code, record["status"]) == (0, "updated"), record
    assert record["seconds"] >= 0.9  # it did wait for the holder
