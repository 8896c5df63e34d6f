"""The ECS runtime's AWS side: IAM policies linted by parliament, and the crash-detection stack.

parliament (duo-labs) checks each identity policy against AWS's IAM action and resource model:
unknown actions, resources of the wrong format, `*` where an action takes a resource. The
trust policy is a resource policy, which parliament does not lint: its shape is asserted.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.rendering import render

# parliament 1.6.4's regular expressions are not raw strings: Python warns when it compiles them.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # SyntaxWarning from Python 3.12
    warnings.simplefilter("ignore", SyntaxWarning)
    from parliament import analyze_policy_string

BACKENDS = ["env", "aws-secrets-manager"]
# What the ECS worker (prefect-aws 0.7.12) calls, and where.
WORKER_ACTIONS = {
    "ec2:DescribeVpcs",
    "ec2:DescribeSubnets",
    "ecs:RegisterTaskDefinition",
    "ecs:DescribeTaskDefinition",
    "ecs:DescribeTasks",
    "ecs:TagResource",
    "ecs:RunTask",
    "ecs:StopTask",
    "iam:PassRole",
    "logs:GetLogEvents",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
}


@pytest.fixture(scope="module")
def ecs_repo(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    repos: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in repos:
            answers = {
                "runtime": "ecs",
                "secret_backend": backend,
                "image_registry": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/data",
            }
            destination = tmp_path_factory.mktemp(f"ecs-{backend}") / "sales-etl"
            repos[backend] = render(template, destination, answers)
        return repos[backend]

    return get


def findings(policy: str) -> list[tuple[str, Any]]:
    return [(f.issue, f.detail) for f in analyze_policy_string(policy).findings]


def actions(policy: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for statement in policy["Statement"]:
        listed = statement["Action"]
        found |= {listed} if isinstance(listed, str) else set(listed)
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_iam_policies_pass_parliament(ecs_repo: Callable[[str], Path], backend: str) -> None:
    iam = ecs_repo(backend) / "deploy" / "iam"
    policies = sorted(
        p for p in iam.glob("*-policy.json") if p.name != "ecs-tasks-trust-policy.json"
    )
    names = {p.name for p in policies}
    expected = {"worker-policy.json", "task-execution-policy.json"}
    assert names == expected | ({"task-policy.json"} if backend == "aws-secrets-manager" else set())
    for path in policies:
        assert findings(path.read_text()) == [], path.name


def test_the_worker_may_do_what_the_ecs_worker_does(ecs_repo: Callable[[str], Path]) -> None:
    iam = ecs_repo("env") / "deploy" / "iam"
    worker = json.loads((iam / "worker-policy.json").read_text())
    assert actions(worker) >= WORKER_ACTIONS
    (pass_role,) = [s for s in worker["Statement"] if s["Action"] == "iam:PassRole"]
    assert sorted(r.rpartition("/")[2] for r in pass_role["Resource"]) == [
        "sales-etl-ecs-task",
        "sales-etl-ecs-task-execution",
    ]
    assert (
        pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == "ecs-tasks.amazonaws.com"
    )
    execution = json.loads((iam / "task-execution-policy.json").read_text())
    (pull,) = [s for s in execution["Statement"] if "ecr:BatchGetImage" in s["Action"]]
    assert pull["Resource"] == "arn:aws:ecr:*:*:repository/data/sales-etl"
    trust = json.loads((iam / "ecs-tasks-trust-policy.json").read_text())
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"


def test_parliament_can_fail(ecs_repo: Callable[[str], Path]) -> None:
    text = (ecs_repo("env") / "deploy" / "iam" / "worker-policy.json").read_text()
    assert findings(text.replace('"ecs:RunTask"', '"ecs:RunTasks"'))  # no such action
    broken = json.loads(text)
    broken["Statement"][1]["Resource"] = "*"  # RunTask on every resource
    assert findings(json.dumps(broken))


def test_the_events_stack_feeds_the_observers_queue(ecs_repo: Callable[[str], Path]) -> None:
    """The rule sends the cluster's task state changes to the queue the worker watches."""
    from prefect_aws.settings import EcsObserverSqsSettings

    repo = ecs_repo("env")
    stack = yaml.safe_load((repo / "deploy" / "ecs-events.yaml").read_text())
    resources = stack["Resources"]
    rule = resources["TaskStateChangeRule"]["Properties"]
    assert rule["EventPattern"]["source"] == ["aws.ecs"]
    assert rule["EventPattern"]["detail-type"] == ["ECS Task State Change"]
    assert rule["EventPattern"]["detail"]["clusterArn"] == [{"Ref": "ClusterArn"}]
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    queue = resources["EventsQueue"]["Properties"]["QueueName"]["Fn::Sub"]
    assert queue == "${WorkPoolName}-ecs-events"
    readme = (repo / "README.md").read_text()
    setting = "PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_SQS_QUEUE_NAME"
    # The setting's name is prefect-aws's own: it reads it into the observer's queue name.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(setting, "sales-etl-dev-ecs-events")
        assert EcsObserverSqsSettings().queue_name == "sales-etl-dev-ecs-events"
    assert f"{setting}=sales-etl-dev-ecs-events \\\n  uv run prefect worker start" in readme
    for needed in ("ecr.api", "ecr.dkr", "S3", "`logs`", "`secretsmanager`", "`sts`", "NAT"):
        assert needed in readme, needed
