"""copier update on a real git-tagged copy of the template: team edits survive, template
changes arrive, real conflicts are reported, a dirty worktree is refused untouched."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from itertools import pairwise
from pathlib import Path

import copier
import pytest
import yaml
from copier.errors import UnsafeTemplateError
from packaging.version import Version

from fleet.commit_hook import hook_module
from fleet.repo import find_conflicts
from fleet.testing import worktree_files
from tests.fleet_support import read_report, run_fleet
from tests.history import releases
from tests.rendering import QUESTIONS, answers_of, git, render, repo_env, run_checks

RELEASES = releases()
# Answers that change files: the defaults, and a combination with other environments and limits.
ANSWER_SETS = {
    "defaults": {},
    "two-environments": {
        "project_name": "Billing Sync",
        "environments": ["qa", "live"],
        "concurrency_limits": {"billing-api": 2},
    },
}
TEAM_FLOW = """\"\"\"A flow the team added.\"\"\"

from prefect import flow


@flow
def team() -> int:
    return 1
"""
TEAM_FLOW_TEST = """from {package}.flows.team import team


def test_team_returns_one() -> None:
    assert team.fn() == 1
"""
TEAM_NOTES = "On-call for this pipeline: the data platform rota.\n\n"


def copy_at(template: Path, ref: str, destination: Path, answers: dict[str, object]) -> Path:
    render(template, destination, answers, vcs_ref=ref)
    git("init", "-q", "-b", "main", cwd=destination)
    git("add", "-A", cwd=destination)
    git("commit", "-q", "-m", f"Render at {ref}", cwd=destination)
    return destination


def update(repo: Path, ref: str = "HEAD", trust: bool = True) -> None:
    copier.run_update(
        repo,
        vcs_ref=ref,
        defaults=True,
        overwrite=True,
        conflict="inline",
        quiet=True,
        unsafe=trust,
    )


def seed_files(repo: Path) -> dict[str, bytes]:
    """The files under the paths copier.yml excludes from updates, by path."""
    package = answers_of(repo)["package_name"]
    roots = [repo / "src" / package / "flows", repo / "tests" / "flows", repo / "data"]
    return {
        str(path.relative_to(repo)): path.read_bytes()
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def kept_files(repo: Path) -> dict[str, bytes]:
    """The files copier.yml's _skip_if_exists keeps as the team has them, by path."""
    package = answers_of(repo)["package_name"]
    patterns = [p.replace("{{ package_name }}", package) for p in QUESTIONS["_skip_if_exists"]]
    kept = {str(path.relative_to(repo)) for path in repo.rglob("*") if path.is_file()}
    included = {name for name in kept for p in patterns if fnmatch(name, p)}
    excluded = {name for name in kept for p in patterns if p[0] == "!" and fnmatch(name, p[1:])}
    return {name: (repo / name).read_bytes() for name in included - excluded}


def register_team_flow(repo: Path) -> None:
    """Give the team's flow its flows.yaml entry, as `make validate` asks, where the release has
    flows.yaml (an older one gets it from the update) and the entry is not there yet."""
    flows = repo / "flows.yaml"
    package = answers_of(repo)["package_name"]
    if not flows.exists() or "team:" in flows.read_text():
        return
    entry = f"flows:\n  team:\n    entrypoint: {package}.flows.team:team\n"
    flows.write_text(flows.read_text().replace("flows: {}\n", entry))
    assert "team:" in flows.read_text(), "flows.yaml has no empty `flows: {}` to add to"


def record_commits(repo: Path) -> None:
    """What the CHANGELOG asks of a team updating past 0.4.0: the record_commit hook on every
    flow the update leaves alone (seeds and the team's own), here by the edit adopt makes."""
    package = answers_of(repo)["package_name"]
    for module in sorted((repo / "src" / package / "flows").glob("*.py")):
        assert hook_module(module, package, repo) == [], module


def make_team_edits(repo: Path) -> dict[str, str]:
    """The edits a team makes in its first weeks; returns path -> text that must survive."""
    package = answers_of(repo)["package_name"]
    env = answers_of(repo)["environments"][0]
    flow = repo / "src" / package / "flows" / "team.py"
    flow.write_text(TEAM_FLOW)
    flow_test = repo / "tests" / "flows" / "test_team.py"
    flow_test.parent.mkdir(parents=True, exist_ok=True)
    flow_test.write_text(TEAM_FLOW_TEST.format(package=package))
    register_team_flow(repo)
    config = repo / "config" / f"{env}.yaml"
    config.write_text(re.sub(r"batch_size: \d+", "batch_size: 75", config.read_text()))
    readme = repo / "README.md"
    heading = "## Running locally\n\n"
    readme.write_text(readme.read_text().replace(heading, heading + TEAM_NOTES))
    survivors = {
        f"src/{package}/flows/team.py": TEAM_FLOW,
        "tests/flows/test_team.py": TEAM_FLOW_TEST.format(package=package),
        f"config/{env}.yaml": "batch_size: 75",
        "README.md": TEAM_NOTES.strip(),
    }
    workflow = repo / ".github" / "workflows" / "ci.yml"
    if workflow.exists():
        step = add_ci_step(workflow)
        survivors[".github/workflows/ci.yml"] = step
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "Team edits", cwd=repo)
    return survivors


def add_ci_step(workflow: Path) -> str:
    """Append a step after the workflow's last step, at the steps' own indentation."""
    lines = workflow.read_text().splitlines()
    steps = [line for line in lines if re.match(r"\s*- (name|uses|run):", line)]
    indent = steps[-1].index("-")
    step = f"{' ' * indent}- name: Team smoke check\n{' ' * (indent + 2)}run: echo team-step"
    workflow.write_text("\n".join(lines) + "\n" + step + "\n")
    return "run: echo team-step"


def test_history_has_a_release_to_update_from() -> None:
    assert RELEASES, "no 'Release vX.Y.Z' commit in the history"


# Updates with team edits from the oldest release (the longest way, across every migration) and
# from the newest (the one step most teams and Renovate take). An update from a release between
# ends as the same fresh render plus the team's files, which the comparisons check, and every
# release-to-release step is updated below (test_an_update_needs_trust_only_across_...): one
# more release no longer adds two updates with their renders to the suite.
UPDATED_FROM = [*RELEASES][:1] + [*RELEASES][1:][-1:]


@pytest.mark.slow
@pytest.mark.parametrize("answer_set", list(ANSWER_SETS))
@pytest.mark.parametrize("tag", UPDATED_FROM)
def test_update_from_a_release_keeps_team_edits_and_brings_template_changes(
    tagged: Path, tmp_path: Path, tag: str, answer_set: str
) -> None:
    answers = ANSWER_SETS[answer_set]
    repo = copy_at(tagged, tag, tmp_path / "repo", answers)
    survivors = make_team_edits(repo)
    seeds = seed_files(repo)
    kept = kept_files(repo)

    update(repo)

    assert find_conflicts(repo) == []
    for path, text in survivors.items():
        assert text in (repo / path).read_text(), f"team edit lost in {path}"
    # The seed files (flows, their tests, data) are the team's after the first render: an update
    # never touches them, even where the template's own copy has changed since.
    after = seed_files(repo)
    assert {path: after.get(path) for path in seeds} == seeds
    # So are the files _skip_if_exists keeps (config, settings.py, team.mk): byte for byte.
    assert {path: (repo / path).read_bytes() for path in kept} == kept
    # Every other file the team did not touch is what a fresh render at HEAD gives (a seed file
    # a migration adds included).
    fresh = render(tagged, tmp_path / "fresh", answers, vcs_ref="HEAD")
    team_owned = set(survivors) | set(seeds) | set(kept) | {".copier-answers.yml"}
    differing = [
        str(path.relative_to(fresh))
        for path in fresh.rglob("*")
        if path.is_file()
        and str(path.relative_to(fresh)) not in team_owned
        and (repo / path.relative_to(fresh)).read_bytes() != path.read_bytes()
    ]
    assert differing == []
    register_team_flow(repo)
    record_commits(repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "Update from the template", cwd=repo)
    # The updated repository's own checks, once: from the oldest release (the longest way, with
    # its migration). Every other update ends as the same fresh render plus the team's files,
    # which the comparisons above check, and tests/test_runtimes.py runs a fresh render's checks.
    if answer_set == "two-environments" and tag == next(iter(RELEASES)):
        run_checks(repo)


def test_a_real_conflict_is_reported_not_resolved(tagged: Path, tmp_path: Path) -> None:
    template = tmp_path / "template"
    shutil.copytree(tagged, template)
    repo = copy_at(template, "HEAD", tmp_path / "repo", {})
    makefile = repo / "Makefile"
    makefile.write_text(makefile.read_text().replace("## Run the tests", "## Run our tests"))
    git("commit", "-q", "-am", "Team wording", cwd=repo)
    source = template / "template" / "Makefile.jinja"
    source.write_text(source.read_text().replace("## Run the tests", "## Run the test suite"))
    git("commit", "-q", "-am", "Template wording", cwd=template)
    git("tag", "v99.0.0", cwd=template)

    update(repo, "v99.0.0")

    assert find_conflicts(repo) == ["Makefile"]
    text = makefile.read_text()
    assert "## Run our tests" in text and "## Run the test suite" in text


IDENTITY = "eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/sales-etl-dev"
NAMESPACE_LABEL = "team.example.com/cost-centre: pipelines"
PSA_LABEL = "pod-security.kubernetes.io/enforce-version: latest\n"


def test_a_teams_service_account_annotation_survives_a_change_of_the_template_s_manifest(
    tagged: Path, tmp_path: Path
) -> None:
    """The cloud identity a team gives its flow-run service account, and the labels it gives
    its namespace, live in deploy/team/flow-run-accounts.yaml: a release that changes the
    template's deploy/flow-runs.yaml, on the very ServiceAccount and the namespace's Pod
    Security labels, brings its change without a conflict."""
    template = tmp_path / "template"
    shutil.copytree(tagged, template)
    answers = {"runtime": "kubernetes", "secret_backend": "aws-secrets-manager"}
    repo = copy_at(template, "HEAD", tmp_path / "repo", answers)
    team_file = repo / "deploy" / "team" / "flow-run-accounts.yaml"
    team_text = team_file.read_text()
    # The first environment's namespace, then its service account.
    namespace, account = "kind: Namespace\n", "kind: ServiceAccount\n"
    assert team_text.index(namespace) < team_text.index(account)
    team_text = team_text.replace("labels: {}", "labels:\n    " + NAMESPACE_LABEL, 1)
    head, _, tail = team_text.partition(account)
    tail = tail.replace("annotations: {}", "annotations:\n    " + IDENTITY, 1)
    team_file.write_text(head + account + tail)
    git(
        "commit",
        "-q",
        "-am",
        "Team: the dev flow runs' IAM role, the namespace's cost centre",
        cwd=repo,
    )
    edited = team_file.read_bytes()
    source = next((template / "template").glob("*kubernetes*deploy*/flow-runs.yaml.jinja"))
    owned = source.read_text()
    assert owned.count("automountServiceAccountToken: false\n") == 1
    assert owned.count(PSA_LABEL) == 1
    owned = owned.replace(
        "automountServiceAccountToken: false\n",
        "automountServiceAccountToken: false\nsecrets: []\n",
    )
    source.write_text(
        owned.replace(PSA_LABEL, PSA_LABEL + "    pod-security.kubernetes.io/warn: restricted\n")
    )
    # The release also changes its seed of the team's file on the line the team edited: the
    # file is the team's (_skip_if_exists), so this never reaches it.
    seed = source.parent / "team" / "flow-run-accounts.yaml.jinja"
    seed.write_text(seed.read_text().replace("annotations: {}", "annotations: {}\n  labels: {}"))
    git("commit", "-q", "-am", "Template: the flow-run account's token secrets", cwd=template)
    git("tag", "v99.0.0", cwd=template)

    update(repo, "v99.0.0")

    assert find_conflicts(repo) == []
    assert team_file.read_bytes() == edited
    team_documents = [d for d in yaml.safe_load_all(team_file.read_text()) if d]
    first_namespace, first_account = team_documents[:2]
    assert first_namespace["metadata"]["labels"] == {"team.example.com/cost-centre": "pipelines"}
    assert first_account["metadata"]["annotations"] == dict([IDENTITY.split(": ")])
    template_file = (repo / "deploy" / "flow-runs.yaml").read_text()
    assert "secrets: []" in template_file
    assert "pod-security.kubernetes.io/warn: restricted" in template_file


def test_a_dirty_worktree_is_refused_and_left_as_it_was(tagged: Path, tmp_path: Path) -> None:
    repo = copy_at(tagged, "HEAD", tmp_path / "repo", {})
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nwork in progress\n")
    (repo / "scratch.txt").write_text("not yet committed\n")
    before = snapshot(repo)

    with pytest.raises(Exception, match="dirty"):
        update(repo)

    assert snapshot(repo) == before


def snapshot(repo: Path) -> tuple[str, dict[str, bytes]]:
    return git("status", "--porcelain", "--untracked-files=all", cwd=repo), worktree_files(repo)


RELEASE_STEPS = list(pairwise(RELEASES))


def migration_versions() -> list[Version]:
    """The releases copier.yml ships a migration with: the updates across them need --trust."""
    return [Version(entry["version"]) for entry in QUESTIONS.get("_migrations", [])]


@pytest.mark.parametrize(("old", "new"), RELEASE_STEPS, ids=[f"{a}-{b}" for a, b in RELEASE_STEPS])
def test_an_update_needs_trust_only_across_a_release_with_a_migration(
    tagged: Path, tmp_path: Path, old: str, new: str
) -> None:
    """What the CHANGELOG's "Needs a hand" and the README promise Renovate and cautious users."""
    repo = copy_at(tagged, old, tmp_path / "repo", {})
    before = snapshot(repo)
    crosses = any(Version(old) < version <= Version(new) for version in migration_versions())

    if crosses:
        with pytest.raises(UnsafeTemplateError, match="migrations"):
            update(repo, new, trust=False)
        assert snapshot(repo) == before
    else:
        update(repo, new, trust=False)
        assert answers_of(repo)["_commit"] == new
        assert find_conflicts(repo) == []


def test_make_template_status_says_when_the_repository_is_behind(
    tagged: Path, tmp_path: Path
) -> None:
    template = tmp_path / "template"
    shutil.copytree(tagged, template)
    git("tag", "v98.0.0", cwd=template)
    repo = copy_at(template, "v98.0.0", tmp_path / "repo", {})
    env = repo_env(str(answers_of(repo)["python_version"]))
    status = [shutil.which("make") or "make", "--no-print-directory", "template-status"]

    assert subprocess.run(status, cwd=repo, env=env, check=False).returncode == 0
    git("commit", "-q", "--allow-empty", "-m", "A newer template", cwd=template)
    git("tag", "v99.0.0", cwd=template)
    # --quiet exits 2 when a newer release exists; make passes the status on.
    assert subprocess.run(status, cwd=repo, env=env, check=False).returncode == 2


# --- A repository with many flows, across a release of new shared deployment defaults ---------

ADDED_FLOWS = {
    "orders_cleanup": ["--schedule", "0 3 * * *"],
    "refunds": [],
    "daily_report": ["--after", "many-flows-orders-cleanup"],
}
# The shared defaults (prefect.yaml `definitions: shared`) before and after the test's release.
SHARED_BEFORE = "  shared: &shared\n"
LIMIT_BEFORE = "    concurrency_limit:\n      limit: 1\n      collision_strategy: ENQUEUE\n"
LIMIT_AFTER = "    concurrency_limit:\n      limit: 3\n      collision_strategy: CANCEL_NEW\n"


def next_release(tag: str) -> str:
    major, minor, _ = (int(part) for part in tag.lstrip("v").split("."))
    return f"v{major}.{minor + 1}.0"


def release_with_new_shared_defaults(tagged: Path, destination: Path) -> tuple[str, str]:
    """Two releases on a copy of the tagged template: the working tree, then the same with the
    shared deployment defaults changed (a concurrency limit of 3 that cancels new runs)."""
    shutil.copytree(tagged, destination)
    first = next_release(list(RELEASES)[-1])
    second = next_release(first)
    git("commit", "-q", "--allow-empty", "-m", f"Release {first}", cwd=destination)
    git("tag", first, cwd=destination)
    prefect_yaml = destination / "template" / "prefect.yaml.jinja"
    text = prefect_yaml.read_text()
    shared = text.index(SHARED_BEFORE)
    assert text.index(LIMIT_BEFORE, shared) < text.index("  deployment: &deployment")
    prefect_yaml.write_text(text[:shared] + text[shared:].replace(LIMIT_BEFORE, LIMIT_AFTER, 1))
    git("commit", "-q", "-am", f"Release {second}", cwd=destination)
    git("tag", second, cwd=destination)
    return first, second


def in_repository(repo: Path, *args: str) -> str:
    """A command of the repository's own package, run by this interpreter (which has its
    Prefect release) without installing it."""
    env = {**repo_env("3.11"), "PYTHONPATH": str(repo / "src"), "PREFECT_HOME": str(repo / ".ph")}
    result = subprocess.run(
        [sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


TEAM_DEPLOYMENTS = """
import json
from pathlib import Path
import yaml
from many_flows.ops.flows import team_deployments
project = yaml.safe_load(Path("prefect.yaml").read_text())
print(json.dumps(team_deployments(project, Path.cwd())))
"""


@pytest.mark.slow
def test_a_fleet_update_of_new_shared_defaults_keeps_every_added_flow_and_applies_them(
    tagged: Path, tmp_path: Path
) -> None:
    first, second = release_with_new_shared_defaults(tagged, tmp_path / "template")
    repo = copy_at(tmp_path / "template", first, tmp_path / "repo", {"project_slug": "many-flows"})
    for name, options in ADDED_FLOWS.items():
        in_repository(repo, "-m", "many_flows.ops.new_flow", name, *options)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "Add three flows", cwd=repo)
    added = {
        path: (repo / path).read_bytes()
        for name in ADDED_FLOWS
        for path in (f"src/many_flows/flows/{name}.py", f"tests/flows/test_{name}.py")
    }
    flows_yaml = (repo / "flows.yaml").read_bytes()
    before = json.loads(in_repository(repo, "-c", TEAM_DEPLOYMENTS))
    assert {d["concurrency_limit"]["limit"] for d in before} == {1}

    code, _ = run_fleet("--to", second, "--no-checks", "--report", str(tmp_path / "r"), str(repo))
    (record,) = read_report(tmp_path / "r")
    assert (code, record["status"]) == (0, "updated"), record
    assert find_conflicts(repo) == []
    assert {path: (repo / path).read_bytes() for path in added} == added
    assert (repo / "flows.yaml").read_bytes() == flows_yaml
    after = json.loads(in_repository(repo, "-c", TEAM_DEPLOYMENTS))
    environments = answers_of(repo)["environments"]
    assert len(after) == len(ADDED_FLOWS) * len(environments)
    assert {d["entrypoint"].rpartition(":")[2] for d in after} == set(ADDED_FLOWS)
    assert all(
        d["concurrency_limit"] == {"limit": 3, "collision_strategy": "CANCEL_NEW"} for d in after
    )
    # Everything else about them is as before: only the shared defaults moved.
    strip = [{k: v for k, v in d.items() if k != "concurrency_limit"} for d in (*before, *after)]
    assert strip[: len(before)] == strip[len(before) :]
    assert in_repository(repo, "-m", "many_flows.ops", "validate") == ""
