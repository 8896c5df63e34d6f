"""The ECS runtime's AWS side: the files a team applies, checked by real linters.

deploy/ecs-events-stack.yaml (the observer's queue, its policy, the EventBridge rule, the log
group) passes cfn-lint; the IAM policies of deploy/iam/, filled as the README fills them,
pass parliament with no finding; both linters report a broken file. The end-to-end run on
moto is tests/test_ecs_e2e.py.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.api import lint_all
from parliament import UnknownActionException, analyze_policy_string, expand_action
from prefect_aws.settings import EcsObserverSettings

from tests.rendering import BIN, commit_lock, render, run, run_checks, sync

ECR = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team"
# What the README's `envsubst` fills, as a team would.
FILLED = {
    "AWS_ACCOUNT_ID": "123456789012",
    "AWS_REGION": "eu-west-1",
    "PIPELINE_ENV": "dev",
    "ECS_CLUSTER": "pipelines-dev",
    "RESULTS_BUCKET": "acme-pipeline-results",
}
# Parliament reads identity policies: a trust policy names a Principal and no Resource, and
# parliament stops at that statement, so its actions are checked on their own (trusted()).
TRUST_ONLY = {("MALFORMED", "Statement contains neither Resource nor NotResource")}
# ecr:GetAuthorizationToken returns a registry credential (the community auditor's
# CREDENTIALS_EXPOSURE): ECS needs it to pull from ECR, and it grants nothing beyond the
# repository statement next to it.
ECR_LOGIN = {("CREDENTIALS_EXPOSURE", "")}
# iam:PassRole is a permissions-management action (PERMISSIONS_MANAGEMENT_ACTIONS): the worker
# must pass the two flow-run roles, and only those, to ECS tasks.
PASS_ROLE = {("PERMISSIONS_MANAGEMENT_ACTIONS", "")}


@pytest.fixture(scope="module")
def rendered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    cache: dict[tuple[str, str], Path] = {}

    def get(secret_backend: str = "env", image_registry: str = ECR) -> Path:
        key = (secret_backend, image_registry)
        if key not in cache:
            dest = tmp_path_factory.mktemp(f"ecs-{secret_backend}") / "sales-etl"
            answers = {
                "runtime": "ecs",
                "secret_backend": secret_backend,
                "image_registry": image_registry,
            }
            cache[key] = render(template, dest, answers)
        return cache[key]

    return get


def filled(path: Path) -> dict[str, Any]:
    """The policy as `envsubst` writes it: every `${NAME}` must be one the README sets."""
    text = path.read_text(encoding="utf-8")
    names = set(re.findall(r"\$\{(\w+)\}", text))
    assert names <= set(FILLED), f"{path.name} reads {sorted(names - set(FILLED))}"
    return json.loads(string.Template(text).substitute(FILLED))


def findings(policy: dict[str, Any]) -> set[tuple[str, str]]:
    """Parliament's findings, its community auditors included."""
    result = analyze_policy_string(json.dumps(policy), include_community_auditors=True)
    return {(finding.issue, json.dumps(finding.detail)) for finding in result.findings}


def issues(policy: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (issue, json.loads(detail) if detail.startswith('"') else detail)
        for issue, detail in findings(policy)
    }


def trusted(policy: dict[str, Any]) -> set[str]:
    """The services a trust policy lets assume the role; its actions must be known to
    parliament and be sts:AssumeRole, and each statement limited to this account."""
    services: set[str] = set()
    for statement in policy["Statement"]:
        expand_action(statement["Action"])  # raises on an unknown action
        assert statement["Action"] == "sts:AssumeRole"
        assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == "123456789012"
        services.add(statement["Principal"]["Service"])
    return services


def statements(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {statement["Sid"]: statement for statement in policy["Statement"]}


def actions(policy: dict[str, Any]) -> set[str]:
    granted: set[str] = set()
    for statement in policy["Statement"]:
        action = statement["Action"]
        granted |= {action} if isinstance(action, str) else set(action)
    return granted


# cfn-lint 1.58's informational ask for a Metadata.com.aws.cloudformation.Context block that
# describes the architecture to assistants: not a property of the stack.
CFN_IGNORED = {"I4010"}


def cfn_lint(path: Path) -> list[str]:
    """Every cfn-lint finding, informational ones included (its CLI shows errors and warnings)."""
    matches = lint_all(path.read_text(encoding="utf-8"))
    return [
        f"{match.rule.id} {match.message} (line {match.linenumber})"
        for match in matches
        if match.rule.id not in CFN_IGNORED
    ]


@pytest.mark.parametrize("backend", ["env", "aws-secrets-manager", "vault"])
def test_iam_policies_pass_parliament(rendered: Callable[..., Path], backend: str) -> None:
    iam = rendered(backend) / "deploy" / "iam"
    expected = {
        "ecs-tasks-trust-policy.json",
        "worker-policy.json",
        "execution-policy.json",
        "task-results-policy.json",
    } | ({"task-secrets-policy.json"} if backend == "aws-secrets-manager" else set())
    assert {path.name for path in iam.iterdir()} == expected
    for path in sorted(iam.iterdir()):
        policy = filled(path)
        allowed = set()
        if path.name.endswith("trust-policy.json"):
            allowed = TRUST_ONLY
            assert trusted(policy) == {"ecs-tasks.amazonaws.com"}
        elif path.name == "execution-policy.json":
            allowed = ECR_LOGIN
            assert issues(policy) == ECR_LOGIN  # the registry is ECR
        elif path.name == "worker-policy.json":
            allowed = PASS_ROLE
            # The finding is the PassRole statement's, which names exactly the two roles.
            others = [s for s in policy["Statement"] if s["Sid"] != "PassExactlyTheFlowRunRoles"]
            assert issues({**policy, "Statement": others}) == set()
        assert issues(policy) <= allowed, f"parliament on {path.name}: {issues(policy)}"


def test_the_roles_policies_grant_what_the_worker_and_its_tasks_use(
    rendered: Callable[..., Path],
) -> None:
    iam = rendered("aws-secrets-manager") / "deploy" / "iam"
    worker = filled(iam / "worker-policy.json")
    assert {
        "ec2:DescribeVpcs",
        "ec2:DescribeSubnets",
        "ecs:RegisterTaskDefinition",
        "ecs:DescribeTaskDefinition",
        "ecs:DescribeTasks",
        "ecs:RunTask",
        "ecs:TagResource",
        "iam:PassRole",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "logs:GetLogEvents",
    } <= actions(worker)
    by_sid = statements(worker)
    account = FILLED["AWS_ACCOUNT_ID"]
    assert by_sid["PassExactlyTheFlowRunRoles"]["Resource"] == [
        f"arn:aws:iam::{account}:role/sales-etl-dev-ecs-execution",
        f"arn:aws:iam::{account}:role/sales-etl-dev-ecs-task",
    ]
    cluster = f"arn:aws:ecs:eu-west-1:{account}:cluster/pipelines-dev"
    assert by_sid["RunFlowRunsInTheCluster"]["Condition"]["ArnEquals"]["ecs:cluster"] == cluster
    # The queue the observer reads is the one the events stack creates for the environment.
    queue = by_sid["ObserverReadsTaskStateChanges"]["Resource"]
    assert queue == f"arn:aws:sqs:eu-west-1:{account}:sales-etl-dev-ecs-events"
    execution = filled(iam / "execution-policy.json")
    assert statements(execution)["PullTheFlowImage"]["Resource"] == (
        f"arn:aws:ecr:eu-west-1:{account}:repository/team/sales-etl"
    )
    # The API credential's secrets, which ECS injects with the execution role.
    secrets = statements(execution)["InjectTheEnvironmentsSecrets"]["Resource"]
    assert secrets.endswith(":secret:sales-etl/dev/prefect-api-*")
    task = filled(iam / "task-secrets-policy.json")
    assert statements(task)["ReadTheEnvironmentsSecrets"]["Resource"].endswith(
        ":secret:sales-etl/dev/*"
    )


def test_a_registry_other_than_ecr_gets_no_ecr_permissions(rendered: Callable[..., Path]) -> None:
    iam = rendered("env", "registry.example.com/pipelines") / "deploy" / "iam"
    execution = filled(iam / "execution-policy.json")
    assert not [action for action in actions(execution) if action.startswith("ecr:")]
    assert issues(execution) == set()
    # The env backend's secrets are container secrets too: the execution role reads them.
    resource = statements(execution)["InjectTheEnvironmentsSecrets"]["Resource"]
    assert resource.endswith(":secret:sales-etl/dev/*")


def test_each_environment_s_ecr_repository_is_pullable(template: Path, tmp_path: Path) -> None:
    """With prod's image in an ECR registry of its own (environment_registries), the one
    execution policy all environments fill names both repositories."""
    prod = ECR.replace("eu-west-1", "eu-central-1") + "/prod"
    answers = {"runtime": "ecs", "image_registry": ECR, "environment_registries": {"prod": prod}}
    repo = render(template, tmp_path / "sales-etl", answers)
    execution = filled(repo / "deploy" / "iam" / "execution-policy.json")
    account = ECR[:12]
    assert statements(execution)["PullTheFlowImage"]["Resource"] == [
        f"arn:aws:ecr:eu-west-1:{account}:repository/team/sales-etl",
        f"arn:aws:ecr:eu-central-1:{account}:repository/team/prod/sales-etl",
    ]
    assert issues(execution) <= ECR_LOGIN


def test_parliament_reports_a_broken_policy(rendered: Callable[..., Path]) -> None:
    """The check above can fail: a typo'd action, a wide resource, a malformed trust."""
    worker = filled(rendered() / "deploy" / "iam" / "worker-policy.json")
    typo = json.loads(json.dumps(worker))
    typo["Statement"][0]["Action"] = ["ec2:DescribeVpcs", "ec2:DescribeSubnet"]
    assert ("UNKNOWN_ACTION", "Unknown action ec2:DescribeSubnet") in issues(typo)
    wide = json.loads(json.dumps(worker))
    statements(wide)["RegisterThePoolsTaskDefinitions"]["Resource"] = "*"
    assert "RESOURCE_STAR" in {issue for issue, _ in issues(wide)}
    trust = filled(rendered() / "deploy" / "iam" / "ecs-tasks-trust-policy.json")
    trust["Statement"][0]["Action"] = "sts:AssumeRoel"
    with pytest.raises(UnknownActionException):
        trusted(trust)


def test_the_events_stack_passes_cfn_lint(rendered: Callable[..., Path]) -> None:
    stack_file = rendered() / "deploy" / "ecs-events-stack.yaml"
    assert cfn_lint(stack_file) == []
    stack = yaml.safe_load(stack_file.read_text(encoding="utf-8"))
    resources = stack["Resources"]
    rule = resources["TaskStateChangeRule"]["Properties"]
    assert rule["EventPattern"]["source"] == ["aws.ecs"]
    assert rule["EventPattern"]["detail-type"] == ["ECS Task State Change"]
    (cluster,) = rule["EventPattern"]["detail"]["clusterArn"]
    assert cluster["Fn::Sub"].endswith(":cluster/${ClusterName}")
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    (statement,) = resources["EventsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {
        "Fn::GetAtt": ["TaskStateChangeRule", "Arn"]
    }
    name = resources["EventsQueue"]["Properties"]["QueueName"]["Fn::Sub"]
    assert name == "sales-etl-${Environment}-ecs-events"
    assert stack["Parameters"]["Environment"]["AllowedValues"] == ["dev", "staging", "prod"]
    log_group = resources["FlowRunLogGroup"]["Properties"]["LogGroupName"]["Fn::Sub"]
    assert log_group == "/prefect/sales-etl/${Environment}"


def test_cfn_lint_reports_a_broken_stack(rendered: Callable[..., Path], tmp_path: Path) -> None:
    text = (rendered() / "deploy" / "ecs-events-stack.yaml").read_text(encoding="utf-8")
    broken = tmp_path / "stack.yaml"
    broken.write_text(text.replace("VisibilityTimeout: 300", "VisibilityTimout: 300"))
    assert any("VisibilityTimout" in problem for problem in cfn_lint(broken))


def test_the_worker_setting_the_readme_names_is_the_observers_queue(
    rendered: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (rendered() / "README.md").read_text(encoding="utf-8")
    setting = "PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_SQS_QUEUE_NAME"
    values = {value.strip("`") for value in re.findall(rf"{setting}=(\S+)", readme)}
    assert values == {"sales-etl-dev-ecs-events", "sales-etl-<env>-ecs-events"}
    monkeypatch.setenv(setting, "queue-from-the-environment")
    assert EcsObserverSettings().sqs.queue_name == "queue-from-the-environment"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["env", "aws-secrets-manager"])
def test_an_ecs_repository_with_its_aws_files_passes_its_own_checks(
    template: Path, tmp_path: Path, backend: str
) -> None:
    """The backends whose ECS roles read Secrets Manager (the env backend's container secrets,
    AWS Secrets Manager's own reads), on an ECR registry: pre-commit (JSON, YAML and secret
    checks on deploy/) and ruff. The generated pytest (the preflight's secret ARN rule
    included) runs on the check matrix's ECS entry (tests/test_runtimes.py), whose deploy/
    files differ from these only in the policies' statements."""
    answers = {"runtime": "ecs", "secret_backend": backend, "image_registry": ECR}
    repo = render(template, tmp_path / "sales-etl", answers)
    env = sync(repo)
    commit_lock(repo)
    run_checks(repo, pytest=False)
    run([str(BIN / "uv"), "run", "pre-commit", "run", "--all-files"], cwd=repo, env=env)
