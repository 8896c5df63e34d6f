"""A tiny real Copier template (tags v1, v2) and repos rendered from it, for tests and bench.

v1 -> v2 changes one line of ``settings.ini`` (``retries = 1`` -> ``retries = 3``) and adds
``CHANGELOG.md``. A team edit of that same line conflicts; an edit elsewhere merges cleanly.
Rendered repos carry a Makefile whose ``check`` target passes, so default checks run.

``add_gated_release`` adds v3, whose migration (after copier has written the new files) waits
while a gate file exists: tests interrupt an update at exactly that point, no sleep-guessing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

OLD_LINE = "retries = 1"
NEW_LINE = "retries = 3"
CHANGED_FILE = "settings.ini"
ADDED_FILE = "CHANGELOG.md"

# Works on machines without a global git config (CI images) and ignores a developer's own
# (signing, hooks, default branch) so runs are reproducible.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Fleet Test",
    "GIT_AUTHOR_EMAIL": "fleet-test@example.invalid",
    "GIT_COMMITTER_NAME": "Fleet Test",
    "GIT_COMMITTER_EMAIL": "fleet-test@example.invalid",
}

_COPIER_YML = """\
project_name:
  type: str
  default: demo
owner:
  type: str
  default: data-team
# The answers `fleet status` lists, as copier-prefect asks them.
runtime:
  type: str
  default: process
secret_backend:
  type: str
  default: env
ci_platform:
  type: str
  default: github-actions
"""
_ANSWERS = """\
# Changes here will be overwritten by Copier; NEVER EDIT MANUALLY
{{ _copier_answers|to_nice_yaml -}}
"""
_README = """\
# {{ project_name }}

Owned by {{ owner }}.
"""
_SETTINGS = """\
[pipeline]
retries = 1
timeout = 60
log_level = INFO
"""
_MAKEFILE = "check:\n\tgrep -q '^retries' settings.ini\n"


def isolated_git_env(config_dir: Path) -> dict[str, str]:
    """Variables for a git identity and an empty global config (apply to os.environ)."""
    config = config_dir / "gitconfig"
    config.touch()
    return {**GIT_IDENTITY, "GIT_CONFIG_GLOBAL": str(config), "GIT_CONFIG_NOSYSTEM": "1"}


def run_git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={**GIT_IDENTITY, **os.environ},
    )
    return proc.stdout.strip()


def build_template(root: Path) -> Path:
    """Create the template git repo at `root` with tags v1 and v2; return its absolute path."""
    root = root.resolve()
    root.mkdir(parents=True)
    files = {
        "copier.yml": _COPIER_YML,
        "{{_copier_conf.answers_file}}.jinja": _ANSWERS,
        "README.md.jinja": _README,
        CHANGED_FILE: _SETTINGS,
        "Makefile": _MAKEFILE,
    }
    for name, text in files.items():
        (root / name).write_text(text)
    run_git(root, "init", "--quiet", "--initial-branch=main")
    run_git(root, "add", "-A")
    run_git(root, "commit", "--quiet", "-m", "template v1")
    run_git(root, "tag", "v1")
    settings = root / CHANGED_FILE
    settings.write_text(settings.read_text().replace(OLD_LINE, NEW_LINE))
    (root / ADDED_FILE).write_text("# Changelog\n\n- v2: retry three times\n")
    run_git(root, "add", "-A")
    run_git(root, "commit", "--quiet", "-m", "template v2")
    run_git(root, "tag", "v2")
    return root


GATE_ENV = "FLEET_TEST_GATE"  # path prefix: <prefix>.reached is written, <prefix>.hold waited on
_GATED_MIGRATION = """\
import os, pathlib, time
gate = os.environ.get("FLEET_TEST_GATE")
if gate:
    pathlib.Path(gate + ".reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while pathlib.Path(gate + ".hold").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def add_gated_release(template: Path, tag: str = "v3") -> None:
    """Tag `tag` on `template`: one more settings change and a migration that can be held."""
    # `~*` is in copier's default _exclude: the script stays out of rendered repositories.
    (template / "~migrate.py").write_text(_GATED_MIGRATION)
    migrations = (
        "_migrations:\n"
        f"  - version: {tag}\n"
        "    when: \"{{ _stage == 'after' }}\"\n"
        '    command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/~migrate.py"]\n'
    )
    copier_yml = template / "copier.yml"
    copier_yml.write_text(migrations + copier_yml.read_text())
    settings = template / CHANGED_FILE
    settings.write_text(settings.read_text().replace("timeout = 60", "timeout = 90"))
    run_git(template, "add", "-A")
    run_git(template, "commit", "--quiet", "-m", f"template {tag}")
    run_git(template, "tag", tag)


def render_repo(
    template: Path | str,
    dest: Path,
    *,
    ref: str = "v1",
    data: dict[str, Any] | None = None,
    trust: bool = False,
) -> Path:
    """Render `template` at `ref` into `dest` and commit it on `main`, as a team would."""
    # Imported here: copier takes seconds to import and the fleet itself never needs it.
    from copier import run_copy

    run_copy(
        str(template),
        dest,
        data=data or {},
        vcs_ref=ref,
        defaults=True,
        quiet=True,
        unsafe=trust,
    )
    run_git(dest, "init", "--quiet", "--initial-branch=main")
    run_git(dest, "add", "-A")
    run_git(dest, "commit", "--quiet", "-m", "chore: render template")
    return dest


def commit_edit(repo: Path, relpath: str, edit: Callable[[str], str], message: str) -> None:
    path = repo / relpath
    path.write_text(edit(path.read_text()))
    run_git(repo, "commit", "--quiet", "-am", message)


def worktree_files(repo: Path) -> dict[str, bytes]:
    """Every file but git's own, by path: what an update leaves for the team to review, so two
    ways of updating can be compared byte for byte."""
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }
