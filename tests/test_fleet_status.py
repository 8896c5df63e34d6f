"""`python -m fleet status` (read-only inventory) and `fleet update --push` to bare remotes."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet import repo as g
from fleet import testing as fx
from fleet.cli import main
from fleet.push import pull_request_url
from tests.fleet_support import (
    BRANCH,
    REPO_ROOT,
    copy_repo,
    git,
    read_report,
)

pytestmark = pytest.mark.xdist_group("fleet")


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def everything(repo: Path) -> dict[str, bytes]:
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def inventory(tiny_template, pristine, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inventory")
    repos = {"behind": copy_repo(pristine, root / "behind")}
    repos["current"] = fx.render_repo(
        tiny_template,
        root / "current",
        ref="v2",
        data={"runtime": "kubernetes", "secret_backend": "vault", "ci_platform": "gitlab-ci"},
    )
    repos["conflicted"] = copy_repo(pristine, root / "conflicted")
    fx.commit_edit(
        repos["conflicted"],
        fx.CHANGED_FILE,
        lambda t: t.replace(fx.OLD_LINE, "retries = 5"),
        "ops: five retries",
    )
    code, _ = run_cli(
        "update", "--to", "v2", "--no-checks", "--report", str(root / "r"), str(repos["conflicted"])
    )
    assert code == 1
    repos["dirty"] = copy_repo(pristine, root / "dirty")
    (repos["dirty"] / "notes.txt").write_text("untracked\n")
    repos["plain"] = root / "plain"
    repos["plain"].mkdir()
    git(repos["plain"], "init", "--quiet")
    return repos


def test_status_json_lists_release_answers_and_state(inventory):
    before = {name: everything(path) for name, path in inventory.items()}
    code, out = run_cli("status", "--format", "json", *map(str, inventory.values()))
    rows = {Path(r["repo"]).name: r for r in json.loads(out)}
    assert code == 1  # `plain` is not a generated repository
    assert (rows["behind"]["release"], rows["behind"]["behind"]) == ("v1", 1)
    assert rows["behind"]["latest"] == "v2"
    assert rows["behind"]["answers"] == {
        "runtime": "process",
        "secret_backend": "env",
        "ci_platform": "github-actions",
    }
    assert (rows["current"]["release"], rows["current"]["behind"]) == ("v2", 0)
    assert rows["current"]["answers"]["runtime"] == "kubernetes"
    assert rows["current"]["answers"]["ci_platform"] == "gitlab-ci"
    conflicted = rows["conflicted"]
    assert conflicted["update_branches"] == [BRANCH]
    assert conflicted["branch"] == BRANCH
    assert conflicted["dirty"] is True
    assert conflicted["conflicts"] == [fx.CHANGED_FILE]
    assert rows["dirty"]["dirty"] is True and rows["dirty"]["conflicts"] == []
    assert rows["behind"]["dirty"] is False and rows["behind"]["update_branches"] == []
    assert "not generated from a Copier template" in rows["plain"]["error"]
    # Read-only down to the git directory: no index refresh, no lock file, no ref.
    assert {name: everything(path) for name, path in inventory.items()} == before


def test_status_markdown_and_repos_file(inventory, tmp_path):
    listing = tmp_path / "repos.txt"
    listing.write_text(f"{inventory['behind']}\n{inventory['conflicted']}  # the team's\n")
    code, out = run_cli("status", "--repos-file", str(listing))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "# Template status"
    assert lines[2].startswith("| Repo | Release | Behind | Runtime | Secrets | CI | Dirty |")
    assert (
        f"| {inventory['behind']} | v1 | 1 (latest v2) | process | env | github-actions | no |"
        in out
    )
    assert f"| yes | {BRANCH} | {fx.CHANGED_FILE} |" in lines[5]


def test_status_renders_nothing(inventory):
    # Fast because it never imports copier (let alone renders): checked in a fresh interpreter.
    code = (
        "import sys; from fleet.cli import main; "
        f"main(['status', {str(inventory['behind'])!r}]); "
        "assert 'copier' not in sys.modules and 'jinja2' not in sys.modules"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


HOSTS = {
    "github": (
        "git@github.com:acme/sales-etl.git",
        f"https://github.com/acme/sales-etl/compare/main...{BRANCH}?expand=1",
    ),
    "gitlab": (
        "https://gitlab.com/acme/data/sales-etl.git",
        "https://gitlab.com/acme/data/sales-etl/-/merge_requests/new"
        "?merge_request%5Bsource_branch%5D=template-update%2Fv2"
        "&merge_request%5Btarget_branch%5D=main",
    ),
    "bitbucket": (
        "https://alice@bitbucket.org/acme/sales-etl.git",
        "https://bitbucket.org/acme/sales-etl/pull-requests/new"
        "?source=template-update%2Fv2&dest=main",
    ),
    "azure": (
        "git@ssh.dev.azure.com:v3/acme/Data/sales-etl",
        "https://dev.azure.com/acme/Data/_git/sales-etl/pullrequestcreate"
        "?sourceRef=template-update%2Fv2&targetRef=main",
    ),
}


def test_push_sends_each_branch_to_its_remote_and_prints_the_pr_link(pristine, tmp_path):
    repos = {}
    for host, (url, _) in HOSTS.items():
        bare = tmp_path / f"{host}.git"
        git(tmp_path, "init", "--quiet", "--bare", str(bare))
        repo = copy_repo(pristine, tmp_path / host)
        # The host-shaped URL the link is derived from; pushes go to the local bare repo.
        git(repo, "remote", "add", "origin", url)
        git(repo, "config", "remote.origin.pushurl", str(bare))
        repos[host] = (repo, bare)

    code, out = run_cli(
        "update", "--to", "v2", "--no-checks", "--push", "--report", str(tmp_path / "r"),
        *(str(repo) for repo, _ in repos.values()),
    )  # fmt: skip
    assert code == 0, out
    records = {Path(r["repo"]).name: r for r in read_report(tmp_path / "r")}
    for host, (repo, bare) in repos.items():
        link = HOSTS[host][1]
        assert records[host]["pull_request"] == link
        assert f"pull request for {repo}: {link}" in out
        assert git(bare, "rev-parse", BRANCH) == git(repo, "rev-parse", "HEAD")
        assert git(repo, "rev-parse", "--abbrev-ref", "@{upstream}") == f"origin/{BRANCH}"


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("https://github.example.com/acme/etl", "https://github.example.com/acme/etl/compare/"),
        ("ssh://git@gitlab.acme.io:2222/g/etl.git", "https://gitlab.acme.io/g/etl/-/merge_"),
        ("git@bitbucket.org:acme/etl.git", "https://bitbucket.org/acme/etl/pull-requests/new"),
        (
            "https://acme@dev.azure.com/acme/Data/_git/etl",
            "https://dev.azure.com/acme/Data/_git/etl/pullrequestcreate",
        ),
        (
            "https://acme.visualstudio.com/Data/_git/etl",
            "https://acme.visualstudio.com/Data/_git/etl/pullrequestcreate",
        ),
        (
            "acme@vs-ssh.visualstudio.com:v3/acme/Data/etl",
            "https://acme.visualstudio.com/Data/_git/etl/pullrequestcreate",
        ),
        ("/srv/git/etl.git", None),
        ("https://git.example.com/acme/etl.git", None),
    ],
)
def test_pull_request_links_from_remote_urls(url, link):
    got = pull_request_url(url, BRANCH, "main")
    assert got == link if link is None else got.startswith(link)


@pytest.mark.parametrize(
    ("src", "readable"),
    [
        ("https://git.example.com/platform/copier-prefect.git", True),
        ("git@git.example.com:platform/copier-prefect.git", True),
        ("git+https://git.example.com/platform/copier-prefect", True),
        ("file:///srv/templates/copier-prefect.git", True),
        ("git+file:///srv/templates/copier-prefect", True),
        ("/srv/templates/copier-prefect", False),
        ("../copier-prefect", False),
        ("gh:acme/copier-prefect", False),
        ("gl:acme/copier-prefect", False),
        ("ftp://git.example.com/copier-prefect", False),
    ],
)
def test_renovate_reads_only_a_git_url(src, readable):
    problem = g.renovate_problem(src)
    assert (problem is None) == readable, problem
    if src.startswith("gh:"):
        assert problem == (
            "_src_path 'gh:acme/copier-prefect' is copier's shorthand: Renovate cannot look it"
            " up; use the full URL (https://github.com/acme/copier-prefect.git)"
        )
    if src.startswith("/"):
        assert problem == (
            f"_src_path '{src}' is a path: Renovate skips this repository without a warning; "
            f"use a git URL (https://..., git@host:..., or git+file://{src})"
        )


def test_a_local_template_is_recorded_as_a_file_url(tmp_path):
    assert g.git_url(str(tmp_path / "copier-prefect")) == f"git+file://{tmp_path}/copier-prefect"
    assert (
        g.git_url(str(tmp_path / "copier-prefect.git")) == f"file://{tmp_path}/copier-prefect.git"
    )
    assert g.git_url("git@git.example.com:t.git") == "git@git.example.com:t.git"
    assert g.renovate_problem(g.git_url(str(tmp_path))) is None


def test_status_flags_an_answers_file_renovate_cannot_read(inventory, tiny_template, tmp_path):
    fixed = copy_repo(inventory["behind"], tmp_path / "fixed")
    g.repoint_answers(fixed, g.git_url(str(tiny_template)))
    git(fixed, "commit", "--quiet", "-am", "chore: template as a git URL")
    code, out = run_cli("status", "--format", "json", str(inventory["behind"]), str(fixed))
    rows = {Path(r["repo"]).name: r for r in json.loads(out)}
    assert code == 0, "a warning, not an error"
    assert rows["behind"]["renovate"].startswith(f"_src_path '{tiny_template}' is a path")
    assert rows["fixed"]["renovate"] is None
    # The URL form still resolves the template's releases.
    assert (rows["fixed"]["release"], rows["fixed"]["latest"]) == ("v1", "v2")
    _, markdown = run_cli("status", str(inventory["behind"]), str(fixed))
    assert f"- {inventory['behind']}: _src_path '{tiny_template}' is a path" in markdown
    assert f"- {fixed}:" not in markdown
