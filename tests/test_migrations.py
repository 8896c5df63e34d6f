"""hooks/migrate.py: each step idempotent, and a rename carried through a real copier update."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import copier
import pytest
import yaml

from hooks.migrate import add_missing, move_file, rename_answer
from tests.history import tagged_template
from tests.rendering import ROOT, answers_of, git, render

HEADER = "# Changes here will be overwritten by Copier; NEVER EDIT MANUALLY\n"


def write_answers(root: Path, answers: dict[str, object]) -> None:
    (root / ".copier-answers.yml").write_text(HEADER + yaml.safe_dump(answers, sort_keys=False))


def test_rename_answer_is_idempotent(tmp_path: Path) -> None:
    write_answers(tmp_path, {"_commit": "v0.1.0", "old": "kept", "other": 1})
    rename_answer(tmp_path, "old", "new")
    once = (tmp_path / ".copier-answers.yml").read_text()
    rename_answer(tmp_path, "old", "new")
    assert (tmp_path / ".copier-answers.yml").read_text() == once
    assert yaml.safe_load(once) == {"_commit": "v0.1.0", "new": "kept", "other": 1}
    assert once.startswith(HEADER)


def test_rename_answer_refuses_to_overwrite(tmp_path: Path) -> None:
    write_answers(tmp_path, {"old": 1, "new": 2})
    with pytest.raises(SystemExit, match="both 'old' and 'new'"):
        rename_answer(tmp_path, "old", "new")


def test_move_file_is_idempotent_and_keeps_content(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "limits.yaml").write_text("team: edit\n")
    move_file(tmp_path, "config/limits.yaml", "config/orchestration.yaml")
    move_file(tmp_path, "config/limits.yaml", "config/orchestration.yaml")
    assert (tmp_path / "config" / "orchestration.yaml").read_text() == "team: edit\n"
    assert not (tmp_path / "config" / "limits.yaml").exists()


def test_move_file_refuses_to_overwrite(tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(name)
    with pytest.raises(SystemExit, match="merge them by hand"):
        move_file(tmp_path, "a.txt", "b.txt")


def test_add_missing_brings_a_seed_back_once(tmp_path: Path) -> None:
    template = tagged_template(tmp_path / "template")
    repo = render(template, tmp_path / "repo")
    seed = f"src/{answers_of(repo)['package_name']}/flows/etl.py"
    original = (repo / seed).read_text()
    (repo / seed).unlink()

    assert add_missing(repo, str(template), "HEAD", [seed]) == f"added {seed}"
    assert (repo / seed).read_text() == original
    (repo / seed).write_text("# the team's own version\n")
    assert add_missing(repo, str(template), "HEAD", [seed]) == "nothing missing"
    assert (repo / seed).read_text() == "# the team's own version\n"


def test_the_script_runs_under_copier_s_interpreter(tmp_path: Path) -> None:
    write_answers(tmp_path, {"old": "x"})
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "hooks" / "migrate.py"),
            "--root",
            str(tmp_path),
            "rename-answer",
            "old",
            "new",
        ],
        check=True,
    )
    assert answers_of(tmp_path) == {"new": "x"}


def test_a_renamed_question_survives_copier_update(tmp_path: Path) -> None:
    """A release that renames `description` to `summary`, with its migration, end to end."""
    template = tagged_template(tmp_path / "template")
    repo = render(template, tmp_path / "repo", {"description": "Moves invoices nightly."})
    for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-q", "-m", "Render")):
        git(*args, cwd=repo)
    rename_question(template, "description", "summary")
    git("commit", "-q", "-am", "Rename description to summary", cwd=template)
    git("tag", "v99.0.0", cwd=template)

    copier.run_update(
        repo,
        vcs_ref="v99.0.0",
        defaults=True,
        overwrite=True,
        quiet=True,
        unsafe=True,
        conflict="inline",
    )

    answers = answers_of(repo)
    assert answers["summary"] == "Moves invoices nightly."
    assert "description" not in answers
    assert "Moves invoices nightly." in (repo / "README.md").read_text()
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "Update", cwd=repo)
    # Run again, as a re-run update would: nothing changes.
    rename_answer(repo, "description", "summary")
    assert git("status", "--porcelain", cwd=repo) == ""


def rename_question(template: Path, old: str, new: str) -> None:
    for path in [
        template / "copier.yml",
        *(template / "template").rglob("*.jinja"),
        *(template / "includes").rglob("*.jinja"),
    ]:
        text = path.read_text()
        renamed = re.sub(rf"\b{old}\b", new, text)
        if renamed != text:
            path.write_text(renamed)
    copier_yml = template / "copier.yml"
    migration = (
        "_migrations:\n"
        "  - version: v99.0.0\n"
        "    when: \"{{ _stage == 'before' }}\"\n"
        f'    command: ["{{{{ _copier_python }}}}", "{{{{ _copier_conf.src_path }}}}/hooks/'
        f'migrate.py", rename-answer, {old}, {new}]\n'
    )
    text = copier_yml.read_text()
    assert text.count("\n_migrations:\n") == 1
    copier_yml.write_text(text.replace("\n_migrations:\n", "\n" + migration))
    shutil.rmtree(template / "tests", ignore_errors=True)
