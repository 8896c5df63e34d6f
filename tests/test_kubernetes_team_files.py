"""The Kubernetes files a team edits are the team's: a release that changes the same lines of
the template's Helm values and flow-run manifests leaves the team's edits untouched, with no
conflict (copier.yml `_skip_if_exists`), through a real `copier update`."""

from __future__ import annotations

from pathlib import Path

import copier
import pytest
import yaml

from fleet import testing as fx
from fleet.repo import find_conflicts
from tests.rendering import git, snapshot_template

DEPLOY = "template/{% if runtime == 'kubernetes' %}deploy{% endif %}"
VALUES = (
    f"{DEPLOY}/{{% yield env from environments %}}worker-{{{{ env }}}}{{% endyield %}}.yaml.jinja"
)
FLOW_RUNS = f"{DEPLOY}/flow-runs.yaml.jinja"


def release(template: Path) -> None:
    """A next release that changes the lines a team edits: the worker's sizes, the labels."""
    values = template / VALUES
    text = values.read_text()
    assert "      cpu: 500m\n" in text
    values.write_text(text.replace("      cpu: 500m\n", "      cpu: 750m\n"))
    manifests = template / FLOW_RUNS
    text = manifests.read_text()
    assert "    pod-security.kubernetes.io/warn: restricted\n" in text
    manifests.write_text(
        text.replace(
            "    pod-security.kubernetes.io/warn: restricted\n",
            "    pod-security.kubernetes.io/warn: restricted\n    release: next\n",
        )
    )
    git("commit", "-q", "-am", "Release v99.1.0", cwd=template)
    git("tag", "v99.1.0", cwd=template)


def team_edits(repo: Path) -> None:
    values = repo / "deploy" / "worker-dev.yaml"
    text = values.read_text().replace("      cpu: 500m\n", "      cpu: 2\n")
    selector = "  nodeSelector:\n    pool: prefect-workers\n"
    values.write_text(text.replace("  livenessProbe:\n", selector + "  livenessProbe:\n"))
    manifests = repo / "deploy" / "flow-runs.yaml"
    text = manifests.read_text()
    manifests.write_text(
        text.replace(
            "    pod-security.kubernetes.io/warn: restricted\n",
            "    pod-security.kubernetes.io/warn: restricted\n    cost-centre: data\n",
            1,
        )
    )
    git("commit", "-q", "-am", "Size the dev worker, label the namespace", cwd=repo)


@pytest.mark.slow
def test_team_edits_of_helm_values_and_flow_run_manifests_survive_an_update(
    tmp_path: Path, git_env: None
) -> None:
    template = snapshot_template(tmp_path / "copier-prefect")
    git("tag", "v99.0.0", cwd=template)
    repo = fx.render_repo(
        template, tmp_path / "repo", ref="v99.0.0", data={"runtime": "kubernetes"}
    )
    team_edits(repo)
    release(template)

    copier.run_update(
        repo, vcs_ref="v99.1.0", defaults=True, overwrite=True, conflict="inline", quiet=True
    )

    assert find_conflicts(repo) == []
    values = yaml.safe_load((repo / "deploy" / "worker-dev.yaml").read_text())
    assert values["worker"]["resources"]["limits"]["cpu"] == 2
    assert values["worker"]["nodeSelector"] == {"pool": "prefect-workers"}
    staging = yaml.safe_load((repo / "deploy" / "worker-staging.yaml").read_text())
    assert staging["worker"]["resources"]["limits"]["cpu"] == "500m"  # the team's, untouched
    manifests = (repo / "deploy" / "flow-runs.yaml").read_text()
    assert "cost-centre: data" in manifests and "release: next" not in manifests
    assert "v99.1.0" in (repo / ".copier-answers.yml").read_text()
