"""The ECS runtime against a real AWS API emulator: moto in server mode on 127.0.0.1 and a real
Prefect server, with the real ECS worker (`prefect worker start --type ecs`).

In moto, from the rendered repository's own files where moto can: the events stack
(deploy/ecs-events-stack.yaml through moto's CloudFormation: queue, dead-letter queue, rule,
log group; moto's CloudFormation has no AWS::SQS::QueuePolicy, so the stack's queue policy is
set on the queue from the same document), the three roles (deploy/iam/ filled as the README
fills them), then a VPC with two subnets, a security group, the cluster and the credential's
secret. The pool is created from deploy/ecs-base-job-template.json and the deployment carries
the dev deployment's job variables from prefect.yaml. The worker submits a flow run: moto's
RunTask accepted it with the template's network, roles, logging and the flow run's credential
as a container secret, an ARN reference never a plain value (nor in the overrides): the API key
(prefect_api_key_secret_arn) or the basic auth string (prefect_api_auth_string_secret_arn), one
run each, the worker holding the same credential. Then a task-stopped event put on EventBridge
reaches the queue through the rule, and the worker's observer marks the flow run Crashed.

moto runs no container: the task never runs the flow, and nothing here shows that IAM would
allow these calls (moto does not enforce IAM or queue policies).
"""

from __future__ import annotations

import base64
import json
import os
import re
import string
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from bench.concurrency_bench import api
from tests.e2e import docker
from tests.e2e.server import running_server, running_worker
from tests.rendering import BIN, DEPLOY_ENV_PLACEHOLDER, render, run

pytestmark = pytest.mark.slow

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
CLUSTER = "pipelines-dev"
ENV = "dev"
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
# Made up and built by parts: no credential-looking literal in the repository.
API_KEY = "e2e-" + "not-a-" + "real-key"
AUTH_STRING = "e2e-user:" + "not-a-" + "real-password"
# Each way a flow run authenticates to the Prefect API: the worker's own setting, which the
# task must never carry as a plain value, the secret's name, the value and the CI variable of
# its ARN (prefect.yaml's prefect_api_key_secret_arn, prefect_api_auth_string_secret_arn).
CREDENTIALS = {
    "api-key": ("PREFECT_API_KEY", "prefect-api-key", API_KEY, "ECS_PREFECT_API_KEY_SECRET_ARN"),
    "auth-string": (
        "PREFECT_API_AUTH_STRING",
        "prefect-api-auth-string",
        AUTH_STRING,
        "ECS_PREFECT_API_AUTH_STRING_SECRET_ARN",
    ),
}


def wait_until(what: str, check: Callable[[], Any], timeout: float, log: Path) -> Any:
    """check() until it returns something truthy; on timeout say what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise TimeoutError(f"{what}: not after {timeout:.0f} s; worker log ends:\n{tail}")


def fill(text: str, values: dict[str, str]) -> str:
    return string.Template(text).substitute(values)


RESULTS_BUCKET = "sales-etl-results"
# The rendered package's own reconcile step for the results block (this interpreter has
# prefect-aws), then a write and a read through the saved block, as a flow run's would go.
SAVE_RESULTS_BLOCK = """
import json, sys
from pathlib import Path
sys.path.insert(0, "src")
from prefect.blocks.core import Block
from sales_etl.ops.reconcile import plan_result_storage
from sales_etl.ops.state import read_state
state = read_state("dev", Path.cwd())
planned = plan_result_storage(state)
for change in planned:
    change.apply()
block = Block.load("s3-bucket/sales-etl-dev-results")
block.write_path("probe", b"cached")
print(json.dumps({
    "planned": [str(c) for c in planned],
    "again": [str(c) for c in plan_result_storage(state)],
    "read": block.read_path("probe").decode(),
}))
"""


def deploy_time(value: Any, env: dict[str, str]) -> Any:
    """value with each `{{ $NAME }}` replaced from env, as `prefect deploy` does."""
    text = DEPLOY_ENV_PLACEHOLDER.sub(lambda m: env[m[1]], json.dumps(value))
    return json.loads(text)


@pytest.mark.parametrize("credential", list(CREDENTIALS))
def test_the_ecs_worker_runs_a_task_in_moto_and_its_observer_marks_a_stopped_one_crashed(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, credential: str
) -> None:
    setting, secret_name, secret_value, arn_variable = CREDENTIALS[credential]
    registry = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
    # moto's request recorder (read by run_task_requests), into this test's directory.
    recording = tmp_path / "moto-recording.jsonl"
    monkeypatch.setenv("MOTO_RECORDER_FILEPATH", str(recording))
    repo = render(template, tmp_path / "sales-etl", {"runtime": "ecs", "image_registry": registry})
    deploy = repo / "deploy"
    with (
        docker.running_moto(BIN / "moto_server", tmp_path / "moto.log") as moto,
        running_server(
            BIN / "prefect", tmp_path / "home", tmp_path / "server.log", os.environ
        ) as server,
    ):
        aws = boto3.session.Session(
            region_name=REGION,
            **{
                "aws_access_key_id": AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
            },
        )

        def client(service: str) -> Any:  # boto3's clients have no static type
            return aws.client(service, endpoint_url=moto)

        # The network and the cluster: what the team has before the repository's files.
        ec2 = client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        # What interface VPC endpoints' private DNS needs; moto 5.2.5's RunTask also fails
        # without it (HTTP 500: its task ENI has no private_dns_name).
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=zone)[
                "Subnet"
            ]["SubnetId"]
            for i, zone in enumerate([f"{REGION}a", f"{REGION}b"], start=1)
        ]
        group = ec2.create_security_group(GroupName="flow-runs", Description="e2e", VpcId=vpc)
        ecs = client("ecs")
        cluster_arn = ecs.create_cluster(clusterName=CLUSTER)["cluster"]["clusterArn"]

        # The events stack, from the rendered file.
        cloudformation = client("cloudformation")
        cloudformation.create_stack(
            StackName=f"sales-etl-{ENV}-ecs",
            TemplateBody=(deploy / "ecs-events-stack.yaml").read_text(encoding="utf-8"),
            Parameters=[
                {"ParameterKey": "Environment", "ParameterValue": ENV},
                {"ParameterKey": "ClusterName", "ParameterValue": CLUSTER},
            ],
        )
        (created,) = cloudformation.describe_stacks(StackName=f"sales-etl-{ENV}-ecs")["Stacks"]
        assert created["StackStatus"] == "CREATE_COMPLETE", created
        outputs = {o["OutputKey"]: o["OutputValue"] for o in created["Outputs"]}
        queue_name = outputs["ObserverQueueName"]
        assert queue_name == f"sales-etl-{ENV}-ecs-events"
        assert outputs["LogGroupName"] == f"/prefect/sales-etl/{ENV}"
        sqs = client("sqs")
        queue_url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
        # moto's CloudFormation skips AWS::SQS::QueuePolicy: set the stack's document itself.
        stack = yaml.safe_load((deploy / "ecs-events-stack.yaml").read_text(encoding="utf-8"))
        document = stack["Resources"]["EventsQueuePolicy"]["Properties"]["PolicyDocument"]
        text = json.dumps(document)
        for resource, output in (
            ("EventsQueue", "ObserverQueueArn"),
            ("TaskStateChangeRule", "RuleArn"),
        ):
            attribute = json.dumps({"Fn::GetAtt": [resource, "Arn"]})
            assert attribute in text, attribute
            text = text.replace(attribute, json.dumps(outputs[output]))
        resolved = json.loads(text)
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(resolved)})

        # The rule passes the cluster's task state changes only.
        events = client("events")

        def put_task_event(detail: dict[str, Any]) -> None:
            entry = {"Source": "aws.ecs", "DetailType": "ECS Task State Change"}
            (result,) = events.put_events(Entries=[{**entry, "Detail": json.dumps(detail)}])[
                "Entries"
            ]
            assert "EventId" in result, result

        def receive() -> list[dict[str, Any]]:
            return sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages", [])

        other_cluster = cluster_arn.replace(CLUSTER, "another-cluster")
        put_task_event({"clusterArn": other_cluster, "lastStatus": "STOPPED"})
        assert receive() == [], "an event of another cluster reached the observer's queue"
        put_task_event({"clusterArn": cluster_arn, "lastStatus": "RUNNING"})
        (probe,) = receive()
        assert json.loads(probe["Body"])["detail"]["clusterArn"] == cluster_arn
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=probe["ReceiptHandle"])

        # The roles, from deploy/iam/ filled as the README fills them.
        iam = client("iam")
        filled = {
            "AWS_ACCOUNT_ID": ACCOUNT,
            "AWS_REGION": REGION,
            "PIPELINE_ENV": ENV,
            "ECS_CLUSTER": CLUSTER,
            "RESULTS_BUCKET": RESULTS_BUCKET,
        }
        trust = fill((deploy / "iam" / "ecs-tasks-trust-policy.json").read_text(), filled)
        roles = {}
        for role, policies in {
            "worker": ["worker-policy.json"],
            "execution": ["execution-policy.json"],
            "task": ["task-results-policy.json"],
        }.items():
            name = f"sales-etl-{ENV}-ecs-{role}"
            roles[role] = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"][
                "Arn"
            ]
            for policy in policies:
                iam.put_role_policy(
                    RoleName=name,
                    PolicyName=policy.removesuffix(".json"),
                    PolicyDocument=fill((deploy / "iam" / policy).read_text(), filled),
                )
        # The worker may pass exactly these two.
        worker_policy = json.loads(
            fill((deploy / "iam" / "worker-policy.json").read_text(), filled)
        )
        (pass_role,) = [s for s in worker_policy["Statement"] if s["Action"] == "iam:PassRole"]
        assert sorted(pass_role["Resource"]) == sorted([roles["execution"], roles["task"]])

        if credential == "api-key":  # once: the block does not depend on the credential
            # config/dev.yaml's declared results block, saved by reconcile's own step from
            # RESULTS_BUCKET, writes under the environment's folder of the bucket.
            s3 = client("s3")
            s3.create_bucket(Bucket=RESULTS_BUCKET)
            block_env = {
                **os.environ,
                **server.env(),
                **AWS_TEST_ENV,
                "AWS_ENDPOINT_URL": moto,
                "RESULTS_BUCKET": RESULTS_BUCKET,
            }
            output = run(
                [str(BIN / "python"), "-c", SAVE_RESULTS_BLOCK], repo, block_env, timeout=120
            )
            saved = json.loads(output.strip().splitlines()[-1])
            assert [c.split()[:2] for c in saved["planned"]] == [["create", "block"]], saved
            assert saved["again"] == [] and saved["read"] == "cached", saved
            listing = s3.list_objects_v2(Bucket=RESULTS_BUCKET)["Contents"]
            assert [o["Key"] for o in listing] == [f"{ENV}/probe"]

        # The credential's secret: the flow run gets it from Secrets Manager, by ARN.
        key_arn = client("secretsmanager").create_secret(
            Name=f"sales-etl/{ENV}/{secret_name}", SecretString=secret_value
        )["ARN"]

        # The pool, from the rendered base job template.
        prefect_env = {**os.environ, **server.env()}
        run(
            [
                str(BIN / "prefect"),
                "work-pool",
                "create",
                f"sales-etl-{ENV}",
                "--type",
                "ecs",
                "--base-job-template",
                str(for_moto(deploy / "ecs-base-job-template.json", tmp_path)),
            ],
            cwd=repo,
            env=prefect_env,
        )
        # The deployment: prefect.yaml's dev job variables, filled as CI fills them.
        project = yaml.safe_load((repo / "prefect.yaml").read_text(encoding="utf-8"))
        # The first of the environment's deployments (the example's etl flow).
        spec = next(
            d for d in project["deployments"] if d["work_pool"]["name"] == f"sales-etl-{ENV}"
        )
        ci = {
            "IMAGE_TAG": "0123456789ab",
            "ECS_CLUSTER": CLUSTER,
            "ECS_TASK_ROLE_ARN": roles["task"],
            "ECS_EXECUTION_ROLE_ARN": roles["execution"],
            "ECS_VPC_ID": vpc,
            "ECS_SUBNET_ID_A": subnets[0],
            "ECS_SUBNET_ID_B": subnets[1],
            "ECS_SECURITY_GROUP_ID": group["GroupId"],
            "ECS_PREFECT_API_KEY_SECRET_ARN": "",
            "ECS_PREFECT_API_AUTH_STRING_SECRET_ARN": "",
            arn_variable: key_arn,
        }
        job_variables = deploy_time(spec["work_pool"]["job_variables"], ci)
        assert not re.search(r"\{\{", json.dumps(job_variables)), job_variables
        api_url = server.api_url
        flow = api(f"{api_url}/flows/", {"name": "etl"})
        deployment = api(
            f"{api_url}/deployments/",
            {
                "name": spec["name"],
                "flow_id": flow["id"],
                "work_pool_name": f"sales-etl-{ENV}",
                "entrypoint": spec["entrypoint"],
                "job_variables": job_variables,
            },
        )
        flow_run = api(f"{api_url}/deployments/{deployment['id']}/create_flow_run", {})

        # moto on 127.0.0.1.
        urllib.request.urlopen(
            urllib.request.Request(f"{moto}/moto-api/recorder/start-recording", method="POST"),
            timeout=10,
        ).close()
        worker_log = tmp_path / "worker.log"
        worker_env = {
            **prefect_env,
            **AWS_TEST_ENV,
            "AWS_ENDPOINT_URL": moto,
            # The local server takes any credential: the worker sends it, and would put it
            # into the task as a plain value without the ARN.
            setting: secret_value,
            "PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_SQS_QUEUE_NAME": queue_name,
        }
        command = [str(BIN / "prefect"), "worker", "start", "--pool", f"sales-etl-{ENV}"]
        with running_worker([*command, "--type", "ecs"], tmp_path, worker_env, worker_log):

            def started_task() -> dict[str, Any] | None:
                arns = ecs.list_tasks(cluster=CLUSTER)["taskArns"]
                if not arns:
                    return None
                (task,) = ecs.describe_tasks(cluster=CLUSTER, tasks=arns, include=["TAGS"])["tasks"]
                return task

            task = wait_until(
                "a task RunTask accepted in moto's cluster", started_task, 90, worker_log
            )
            tags = {tag["key"]: tag["value"] for tag in task.get("tags", [])}
            assert tags.get("prefect.io/flow-run-id") == flow_run["id"], tags
            assert task["clusterArn"] == cluster_arn
            assert task["overrides"]["taskRoleArn"] == roles["task"]
            (container,) = task["overrides"]["containerOverrides"]
            assert container["name"] == "prefect"
            overridden = {item["name"] for item in container.get("environment", [])}
            assert setting not in overridden, overridden
            assert secret_value not in json.dumps(task), (
                "the credential is in the task in plain text"
            )
            definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])[
                "taskDefinition"
            ]
            assert definition["family"].startswith(f"prefect_sales-etl-{ENV}_")
            assert definition["executionRoleArn"] == roles["execution"]
            assert definition["networkMode"] == "awsvpc"
            assert definition["requiresCompatibilities"] == ["FARGATE"]
            (prefect_container,) = definition["containerDefinitions"]
            assert prefect_container["image"] == f"{registry}/sales-etl:0123456789ab"
            logging = prefect_container["logConfiguration"]
            assert logging["logDriver"] == "awslogs"
            assert logging["options"]["awslogs-group"] == f"/prefect/sales-etl/{ENV}"
            assert logging["options"]["awslogs-stream-prefix"] == ENV
            # Only the credential the environment gives, and as an ARN reference.
            assert prefect_container["secrets"] == [{"name": setting, "valueFrom": key_arn}]
            plain = {item["name"] for item in prefect_container.get("environment", [])}
            assert setting not in plain, plain
            assert secret_value not in json.dumps(definition)
            # DescribeTasks (AWS's and moto's) shows one subnet of the task's ENI; the whole
            # network configuration is in the RunTask request moto recorded.
            (request,) = run_task_requests(recording)
            assert request["cluster"] == CLUSTER
            assert request["launchType"] == "FARGATE"
            assert request["networkConfiguration"]["awsvpcConfiguration"] == {
                "subnets": subnets,
                "securityGroups": [group["GroupId"]],
                "assignPublicIp": "DISABLED",
            }
            assert secret_value not in json.dumps(request)
            (attachment,) = task["attachments"]
            details = {d["name"]: d["value"] for d in attachment["details"]}
            assert details["subnetId"] == subnets[0]

            # The worker's observer reads the queue: ECS says the container was OOM-killed.
            detail = {
                "clusterArn": cluster_arn,
                "taskArn": task["taskArn"],
                "taskDefinitionArn": task["taskDefinitionArn"],
                "lastStatus": "STOPPED",
                "desiredStatus": "STOPPED",
                "stopCode": "EssentialContainerExited",
                "stoppedReason": "Essential container in task exited",
                "containers": [
                    {
                        "name": "prefect",
                        "exitCode": 137,
                        "lastStatus": "STOPPED",
                        "reason": "OutOfMemoryError: Container killed due to memory usage",
                    }
                ],
                "id": str(uuid.uuid4()),
            }
            put_task_event(detail)

            def crashed() -> dict[str, Any] | None:
                state = api(f"{api_url}/flow_runs/{flow_run['id']}")["state"]
                return state if state["type"] == "CRASHED" else None

            state = wait_until(
                "the observer marking the flow run Crashed after the task-stopped event",
                crashed,
                90,
                worker_log,
            )
            assert "non-zero exit code" in state["message"] and "prefect" in state["message"]
        log = worker_log.read_text(errors="replace")
        assert "does not exist" not in log, "the observer did not find its queue"
        assert secret_value not in log


def run_task_requests(recording: Path) -> list[dict[str, Any]]:
    """The bodies of the RunTask calls moto recorded."""
    requests = []
    for line in recording.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        target = {k.lower(): v for k, v in entry["headers"].items()}.get("x-amz-target", "")
        if target.endswith(".RunTask"):
            body = entry["body"]
            requests.append(json.loads(base64.b64decode(body) if entry["body_encoded"] else body))
    return requests


def for_moto(base_job_template: Path, tmp_path: Path) -> Path:
    """The rendered template with one addition moto needs: moto 5.2.5's RunTask fails (HTTP
    500, `TypeError: unsupported operand type(s) for +=: 'int' and 'NoneType'` in
    moto/ecs/models.py _calculate_task_resource_requirements) when a container definition has
    no memory of its own, which Fargate does not require (the task's memory is enough). The
    container gets the task's memory; nothing else changes."""
    template = json.loads(base_job_template.read_text(encoding="utf-8"))
    (container,) = template["job_configuration"]["task_definition"]["containerDefinitions"]
    assert "memory" not in container
    container["memory"] = "{{ memory }}"
    path = tmp_path / "ecs-base-job-template-for-moto.json"
    path.write_text(json.dumps(template), encoding="utf-8")
    return path
