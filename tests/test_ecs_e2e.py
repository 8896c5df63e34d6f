"""The ECS runtime against moto's AWS emulation on 127.0.0.1, with the real ECS worker.

One moto server (ECS, EC2, IAM, CloudWatch Logs, CloudFormation, EventBridge, SQS) and one
Prefect server for the module. The AWS side is built from the generated files: the roles from
deploy/iam/, the crash-detection stack from deploy/ecs-events.yaml through CloudFormation. The
pool is created with the generated base job template and the deployment with the generated dev
job variables; a real `prefect worker start --type ecs` (prefect-aws 0.7.12), configured as the
README says, submits the flow run: RunTask must be accepted with the template's networking, roles
and logging. Then a task-stopped event put on EventBridge reaches the queue through the stack's
rule, and the worker's own observer marks the run Crashed. moto runs no container: the flow
itself never starts, which is what a crash looks like.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import boto3
import pytest
import yaml
from moto.ecs.models import EC2ContainerServiceBackend
from moto.server import ThreadedMotoServer
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.e2e.server import free_port, running_server, running_worker
from tests.rendering import BIN, DEPLOY_ENV_PLACEHOLDER, render

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("ecs-e2e"),
    # moto's CloudFormation skips the queue policy (its SQS enforces none) and says so.
    pytest.mark.filterwarnings("ignore:Tried to parse AWS..SQS..QueuePolicy:UserWarning"),
]

REGION = "us-east-1"
POOL = "sales-etl-dev"
QUEUE = f"{POOL}-ecs-events"
IMAGE_TAG = "0123456789ab"
AWS_KEYS = {"AWS_ACCESS_KEY_ID": "test-only", "AWS_SECRET_ACCESS_KEY": "test-only"}


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 1) -> Any:
    """check() once it returns something truthy; TimeoutError naming what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(interval)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


@contextlib.contextmanager
def running_moto() -> Iterator[str]:
    """moto's server on 127.0.0.1 (in a thread of this process); yields its URL.

    moto 5.2.5's RunTask adds up every container's own memory, which Fargate does not require
    (the task's memory is enough, and prefect-aws sets only that): its sum is taken with a
    missing container memory as 0, else RunTask answers 500. That is the only change to moto.
    """
    original = EC2ContainerServiceBackend._calculate_task_resource_requirements

    def fargate_sized(task_definition: Any) -> dict[str, Any]:
        containers = [
            {**container, "memory": container.get("memory") or 0}
            for container in task_definition.container_definitions
        ]
        return original(SimpleNamespace(container_definitions=containers))

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            EC2ContainerServiceBackend,
            "_calculate_task_resource_requirements",
            staticmethod(fargate_sized),
        )
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


class Aws:
    """boto3 clients on moto."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def __call__(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="test-only",
            aws_secret_access_key="test-only",  # moto accepts any key
        )


def build_aws(aws: Aws, repo: Path) -> dict[str, str]:
    """What the README has a team create, from the generated files; the ECS_* variables."""
    iam_dir = repo / "deploy" / "iam"
    ec2 = aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    # Interface endpoints of private subnets need DNS hostnames (README); moto's task ENIs too.
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{z}")
        for i, z in ((1, "a"), (2, "b"))
    ]
    group = ec2.create_security_group(GroupName="flow-runs", Description="flow runs", VpcId=vpc)
    cluster = aws("ecs").create_cluster(clusterName=POOL)["cluster"]["clusterArn"]
    iam = aws("iam")
    trust = (iam_dir / "ecs-tasks-trust-policy.json").read_text()
    roles = {}
    for role, policy in (
        ("sales-etl-ecs-task-execution", "task-execution-policy.json"),
        ("sales-etl-ecs-task", None),
    ):
        roles[role] = iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        if policy:
            document = (iam_dir / policy).read_text()
            iam.put_role_policy(RoleName=role, PolicyName="flow-runs", PolicyDocument=document)
    aws("logs").create_log_group(logGroupName="/prefect/sales-etl")
    stack = aws("cloudformation")
    stack.create_stack(
        StackName=f"{POOL}-ecs-events",
        TemplateBody=(repo / "deploy" / "ecs-events.yaml").read_text(),
        Parameters=[
            {"ParameterKey": "WorkPoolName", "ParameterValue": POOL},
            {"ParameterKey": "ClusterArn", "ParameterValue": cluster},
        ],
    )
    return {
        "ECS_CLUSTER": cluster,
        "ECS_TASK_ROLE_ARN": roles["sales-etl-ecs-task"],
        "ECS_EXECUTION_ROLE_ARN": roles["sales-etl-ecs-task-execution"],
        "ECS_VPC_ID": vpc,
        "ECS_SUBNET_ID_A": subnets[0]["Subnet"]["SubnetId"],
        "ECS_SUBNET_ID_B": subnets[1]["Subnet"]["SubnetId"],
        "ECS_SECURITY_GROUP_ID": group["GroupId"],
        "IMAGE_TAG": IMAGE_TAG,
    }


def dev_job_variables(repo: Path, values: dict[str, str]) -> dict[str, Any]:
    """dev's job variables as `prefect deploy` fills them from the deploying environment."""
    deployments = yaml.safe_load((repo / "prefect.yaml").read_text())["deployments"]
    (dev,) = [d for d in deployments if d["name"] == "dev" and "triggers" not in d]
    raw = json.dumps(dev["work_pool"]["job_variables"])
    return json.loads(DEPLOY_ENV_PLACEHOLDER.sub(lambda m: values[m[1]], raw))


async def create_pool_and_run(api: str, repo: Path, variables: dict[str, Any]) -> FlowRun:
    template = json.loads((repo / "deploy" / "ecs-base-job-template.json").read_text())
    with temporary_settings({PREFECT_API_URL: api}):
        return await _create_pool_and_run(template, variables)


async def _create_pool_and_run(template: dict[str, Any], variables: dict[str, Any]) -> FlowRun:
    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(name=POOL, type="ecs", base_job_template=template)
        )
        flow_id = await client.create_flow_from_name("etl")
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name="dev",
            work_pool_name=POOL,
            entrypoint="sales_etl.flows.etl:etl",
            job_variables=variables,
        )
        return await client.create_flow_run_from_deployment(deployment_id)


async def _read_flow_run(flow_run_id: UUID) -> FlowRun:
    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


def read_flow_run(api: str, flow_run_id: UUID) -> FlowRun:
    with temporary_settings({PREFECT_API_URL: api}):
        return asyncio.run(_read_flow_run(flow_run_id))


@pytest.fixture(scope="module")
def setup(
    template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Aws, Path, dict[str, str], dict[str, str]]]:
    work = tmp_path_factory.mktemp("ecs-e2e")
    repo = render(template, work / "sales-etl", {"runtime": "ecs"})
    with (
        running_moto() as endpoint,
        running_server(BIN / "prefect", work / "home", work / "server.log", {}) as server,
        pytest.MonkeyPatch.context() as patch,
    ):
        aws_env = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": REGION, **AWS_KEYS}
        for name, value in {**server.env(), **aws_env}.items():
            patch.setenv(name, value)
        aws = Aws(endpoint)
        values = build_aws(aws, repo)
        worker_env = {
            **server.env(),
            **aws_env,
            "PATH": str(BIN) + ":/usr/bin:/bin",
            # As the README has the worker started: its observer reads the stack's queue.
            "PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_SQS_QUEUE_NAME": QUEUE,
            "PREFECT_LOGGING_LEVEL": "DEBUG",
        }
        yield aws, repo, values, worker_env | {"WORK": str(work)}


def test_the_ecs_worker_runs_the_task_and_its_observer_marks_a_stopped_one_crashed(
    setup: tuple[Aws, Path, dict[str, str], dict[str, str]],
) -> None:
    aws, repo, values, worker_env = setup
    work = Path(worker_env.pop("WORK"))
    sqs = aws("sqs")
    queue_url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]  # the stack created it
    api = worker_env["PREFECT_API_URL"]
    flow_run = asyncio.run(create_pool_and_run(api, repo, dev_job_variables(repo, values)))
    ecs = aws("ecs")
    command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "ecs"]
    with running_worker(command, work, worker_env, work / "worker.log"):
        arns = wait_for(
            "the worker's RunTask",
            lambda: ecs.list_tasks(cluster=values["ECS_CLUSTER"])["taskArns"],
            timeout=180,
        )
        (task,) = ecs.describe_tasks(cluster=values["ECS_CLUSTER"], tasks=arns, include=["TAGS"])[
            "tasks"
        ]
        # RunTask as the template and dev's job variables make it.
        assert task["launchType"] == "FARGATE"
        network = task["attachments"][0]["details"] if task.get("attachments") else []
        definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])[
            "taskDefinition"
        ]
        assert definition["executionRoleArn"] == values["ECS_EXECUTION_ROLE_ARN"]
        assert task["overrides"]["taskRoleArn"] == values["ECS_TASK_ROLE_ARN"]
        (container,) = definition["containerDefinitions"]
        assert container["image"].endswith(f"/sales-etl:{IMAGE_TAG}")
        logging = container["logConfiguration"]
        assert logging["logDriver"] == "awslogs"
        assert logging["options"]["awslogs-group"] == "/prefect/sales-etl"
        assert logging["options"]["awslogs-stream-prefix"] == "dev"
        tags = {tag["key"]: tag["value"] for tag in task.get("tags", [])}
        assert tags["prefect.io/flow-run-id"] == str(flow_run.id)
        subnets = {d["value"] for d in network if d["name"] == "subnetId"}
        assert subnets <= {values["ECS_SUBNET_ID_A"], values["ECS_SUBNET_ID_B"]}
        wait_for(
            "the flow run to be Pending on its task",
            lambda: read_flow_run(api, flow_run.id).state_type.value == "PENDING",
            timeout=60,
        )

        # ECS stops the task before the flow starts: the image cannot be pulled.
        stopped = {
            "clusterArn": values["ECS_CLUSTER"],
            "taskArn": task["taskArn"],
            "taskDefinitionArn": task["taskDefinitionArn"],
            "lastStatus": "STOPPED",
            "desiredStatus": "STOPPED",
            "stopCode": "TaskFailedToStart",
            "stoppedReason": "CannotPullContainerError: pull image manifest has been retried 5 "
            "time(s): failed to resolve ref registry.example.com/pipelines/sales-etl:"
            f"{IMAGE_TAG}: not found",
            "containers": [],
        }
        entry = {
            "Source": "aws.ecs",
            "DetailType": "ECS Task State Change",
            "Detail": json.dumps(stopped),
            "Resources": [task["taskArn"]],
        }
        put = aws("events").put_events(Entries=[entry])
        assert put["FailedEntryCount"] == 0, put
        crashed = wait_for(
            "the observer to mark the run Crashed",
            lambda: (run := read_flow_run(api, flow_run.id)).state_name == "Crashed" and run,
            timeout=180,
            interval=2,
        )
    # What make smoke reports for it (ops/diagnosis.py reads the state message and the logs).
    assert "CannotPullContainerError" in (crashed.state.message or "")
    # The event went through the rule to the queue, and the observer took it off.
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"
