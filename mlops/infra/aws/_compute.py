"""Runtime image repository, TrainingCompute (AWS Batch GPU) and Orchestration (Prefect worker on ECS)."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from mlops.infra.aws._common import MANAGED_POLICIES, Account, allow, child, role
from mlops.infra.aws._network import Network
from mlops.infra.aws._store import ArtifactStore
from mlops.recipe.schema import OrchestrationParams, TrainingParams


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlops")
    except PackageNotFoundError:
        return "dev"


class RuntimeImage(pulumi.ComponentResource):
    """The ECR repository of the image flows and training run (the project's code + mlops).

    Tags are immutable and scanned on push; the default tag is the mlops version.
    """

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:aws:RuntimeImage", name, None, opts)
        repo = aws.ecr.Repository(name, image_tag_mutability="IMMUTABLE", force_delete=False,
                                  image_scanning_configuration={"scan_on_push": True},
                                  encryption_configurations=[{"encryption_type": "KMS"}], opts=child(self))
        self.repository_arn = repo.arn
        self.image = pulumi.Output.concat(repo.repository_url, ":", _version())
        self.register_outputs({"repository_url": repo.repository_url, "image": self.image})

    def pull_statements(self) -> list[dict[str, Any]]:
        return [allow(["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                      [self.repository_arn]),
                allow(["ecr:GetAuthorizationToken"], ["*"])]  # unscopable (see UNSCOPABLE_ACTIONS)


class TrainingCompute(pulumi.ComponentResource):
    """GPU training on AWS Batch: a managed GPU compute environment (spot allowed), a job queue and a
    job definition sized from `compute.devices` and `compute.num_nodes` (multi-node DDP as a Batch
    multi-node parallel job). The submitter (the flow) sets the command; the job role reads data and
    writes models, tracking data and profiles, nothing else.
    """

    def __init__(self, name: str, params: TrainingParams, network: Network, store: ArtifactStore, image: Any,
                 devices: int, num_nodes: int, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:aws:TrainingCompute", name, None, opts)
        sg = aws.ec2.SecurityGroup(f"{name}-sg", vpc_id=network.vpc_id, description="Batch GPU instances: no ingress",
                                   egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443,
                                            "cidr_blocks": ["0.0.0.0/0"], "description": "ECR, S3, Prefect API"}],
                                   opts=child(self))
        if num_nodes > 1:  # DDP between nodes: NCCL talks to the other nodes of the job on any port
            aws.vpc.SecurityGroupIngressRule(f"{name}-nccl-in", security_group_id=sg.id, ip_protocol="-1",
                                             referenced_security_group_id=sg.id, opts=child(self))
            aws.vpc.SecurityGroupEgressRule(f"{name}-nccl-out", security_group_id=sg.id, ip_protocol="-1",
                                            referenced_security_group_id=sg.id, opts=child(self))
        instance_role = role(self, f"{name}-instance", "ec2.amazonaws.com", managed=[MANAGED_POLICIES["ecs_instance"]])
        profile = aws.iam.InstanceProfile(f"{name}-instance", role=instance_role.name, opts=child(self))
        # Batch multi-node parallel jobs do not run on Spot: multi-node uses on-demand capacity.
        spot = params.spot and num_nodes == 1
        env = aws.batch.ComputeEnvironment(name, type="MANAGED", compute_resources={
            "type": "SPOT" if spot else "EC2",
            "allocation_strategy": "SPOT_PRICE_CAPACITY_OPTIMIZED" if spot else "BEST_FIT_PROGRESSIVE",
            "instance_types": list(params.instance_types), "min_vcpus": 0, "max_vcpus": params.max_vcpus,
            "instance_role": profile.arn, "security_group_ids": [sg.id], "subnets": network.private_subnet_ids,
            "ec2_configurations": [{"image_type": "ECS_AL2_NVIDIA"}],
        }, opts=child(self))
        queue = aws.batch.JobQueue(name, state="ENABLED", priority=1,
                                   compute_environment_orders=[{"order": 1, "compute_environment": env.arn}],
                                   opts=child(self))
        job_role = role(self, f"{name}-job", "ecs-tasks.amazonaws.com",
                        store.statements(read=("data/",), write=("models/", "mlflow/", "profiles/")))
        container = pulumi.Output.all(image=image, role=job_role.arn).apply(lambda a: {
            "image": a["image"], "jobRoleArn": a["role"],
            "resourceRequirements": [{"type": "GPU", "value": str(devices)},
                                     {"type": "VCPU", "value": str(4 * devices)},
                                     {"type": "MEMORY", "value": str(14000 * devices)}],
            "environment": [{"name": "MLOPS_DEVICES", "value": str(devices)},
                            {"name": "MLOPS_NUM_NODES", "value": str(num_nodes)}],
            "linuxParameters": {"sharedMemorySize": 2048 * devices},
            "readonlyRootFilesystem": False, "privileged": False,
        })
        common: dict[str, Any] = {"platform_capabilities": ["EC2"], "propagate_tags": True,
                                  "retry_strategy": {"attempts": 3 if spot else 1},
                                  "timeout": {"attempt_duration_seconds": 24 * 3600}}
        if num_nodes == 1:
            jobdef = aws.batch.JobDefinition(name, type="container", container_properties=container.apply(json.dumps),
                                             **common, opts=child(self))
        else:
            jobdef = aws.batch.JobDefinition(name, type="multinode", node_properties=container.apply(lambda c: json.dumps(
                {"numNodes": num_nodes, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0:", "container": c}]})),
                **common, opts=child(self))
        self.job_queue_arn, self.job_definition_arn = queue.arn, jobdef.arn
        self.register_outputs({"job_queue": queue.arn, "job_definition": jobdef.arn, "spot": spot})

    def submit_statements(self) -> list[dict[str, Any]]:
        return [allow(["batch:SubmitJob"], [self.job_queue_arn, self.job_definition_arn]),
                allow(["batch:DescribeJobs"], ["*"])]  # unscopable (see UNSCOPABLE_ACTIONS)


class Orchestration(pulumi.ComponentResource):
    """A Prefect ECS work pool's infrastructure: a cluster, the flow-run task definition with its
    roles, and a Fargate service running `prefect worker start --type ecs`. The Prefect API URL and
    key reach the worker as ECS secrets (Secrets Manager or SSM references), never as values.
    The output `base_job_template` is what `prefect work-pool create --base-job-template` takes.
    """

    def __init__(self, name: str, params: OrchestrationParams, network: Network, store: ArtifactStore,
                 runtime: RuntimeImage, account: Account, flow_statements: list[dict[str, Any]] | None = None,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:aws:Orchestration", name, None, opts)
        cluster = aws.ecs.Cluster(name, settings=[{"name": "containerInsights", "value": "enabled"}], opts=child(self))
        logs = aws.cloudwatch.LogGroup(name, retention_in_days=30, opts=child(self))
        log_statement = allow(["logs:CreateLogStream", "logs:PutLogEvents"], [pulumi.Output.concat(logs.arn, ":*")])
        refs = [("PREFECT_API_URL", params.prefect_api_url_ref)]
        if params.prefect_api_key_ref:
            refs.append(("PREFECT_API_KEY", params.prefect_api_key_ref))
        secrets = [(env, *account.secret(ref)) for env, ref in refs]
        secret_statements = [allow([action], [pattern]) for _, _, pattern, action in secrets]

        # The flow runs: pull the runtime image, read data, write models/tracking/profiles, submit training.
        flow_exec = role(self, f"{name}-flow-exec", "ecs-tasks.amazonaws.com",
                         [*runtime.pull_statements(), log_statement, *secret_statements])
        self.flow_task_role = role(self, f"{name}-flow", "ecs-tasks.amazonaws.com", [
            *store.statements(read=("data/", "models/"), write=("data/", "models/", "triton/", "mlflow/", "profiles/")),
            *(flow_statements or [])])
        container_env = [{"name": "MLOPS_ARTIFACTS", "value": store.uri("")}]
        flow_task = aws.ecs.TaskDefinition(
            f"{name}-flow", family=f"{name}-flow", requires_compatibilities=["FARGATE"], network_mode="awsvpc",
            cpu="1024", memory="4096", execution_role_arn=flow_exec.arn, task_role_arn=self.flow_task_role.arn,
            container_definitions=pulumi.Output.json_dumps([{
                "name": "prefect", "image": runtime.image, "essential": True, "environment": container_env,
                "secrets": [{"name": env, "valueFrom": arn} for env, arn, _, _ in secrets],
                "logConfiguration": {"logDriver": "awslogs", "options": {
                    "awslogs-group": logs.name, "awslogs-region": account.region, "awslogs-stream-prefix": "flow"}},
            }]), opts=child(self))

        # The worker: starts flow runs as tasks of that definition, in this cluster, and nothing else.
        task_arn = account.arn("ecs", pulumi.Output.concat("task/", cluster.name, "/*"))
        worker_role = role(self, f"{name}-worker", "ecs-tasks.amazonaws.com", [
            allow(["ecs:RunTask"], [flow_task.arn], ArnEquals={"ecs:cluster": cluster.arn}),
            allow(["ecs:DescribeTasks", "ecs:StopTask"], [task_arn]),
            allow(["ecs:DescribeTaskDefinition"], ["*"]),  # unscopable (see UNSCOPABLE_ACTIONS)
            allow(["iam:PassRole"], [flow_exec.arn, self.flow_task_role.arn],
                  StringEquals={"iam:PassedToService": "ecs-tasks.amazonaws.com"}),
            allow(["logs:GetLogEvents"], [pulumi.Output.concat(logs.arn, ":*")]),
        ])
        worker_exec = role(self, f"{name}-worker-exec", "ecs-tasks.amazonaws.com", [log_statement, *secret_statements])
        worker_task = aws.ecs.TaskDefinition(
            f"{name}-worker", family=f"{name}-worker", requires_compatibilities=["FARGATE"], network_mode="awsvpc",
            cpu=str(params.worker_cpu), memory=str(params.worker_memory), execution_role_arn=worker_exec.arn,
            task_role_arn=worker_role.arn,
            container_definitions=pulumi.Output.json_dumps([{
                "name": "worker", "image": params.worker_image, "essential": True,
                "command": ["prefect", "worker", "start", "--pool", params.work_pool, "--type", "ecs"],
                "environment": [{"name": "EXTRA_PIP_PACKAGES", "value": "prefect-aws"},
                                {"name": "PREFECT_SERVER_ANALYTICS_ENABLED", "value": "false"}],
                "secrets": [{"name": env, "valueFrom": arn} for env, arn, _, _ in secrets],
                "logConfiguration": {"logDriver": "awslogs", "options": {
                    "awslogs-group": logs.name, "awslogs-region": account.region, "awslogs-stream-prefix": "worker"}},
            }]), opts=child(self))
        sg = aws.ec2.SecurityGroup(f"{name}-sg", vpc_id=network.vpc_id, description="Prefect worker and flow runs: no ingress",
                                   egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443,
                                            "cidr_blocks": ["0.0.0.0/0"], "description": "Prefect API, AWS APIs"}],
                                   opts=child(self))
        aws.ecs.Service(f"{name}-worker", cluster=cluster.arn, task_definition=worker_task.arn, desired_count=1,
                        launch_type="FARGATE",
                        network_configuration={"subnets": network.private_subnet_ids, "security_groups": [sg.id],
                                               "assign_public_ip": False},
                        deployment_circuit_breaker={"enable": True, "rollback": True}, opts=child(self))
        self.cluster_arn = cluster.arn
        self.base_job_template = pulumi.Output.json_dumps({"job_configuration": {
            "cluster": cluster.arn, "task_definition_arn": flow_task.arn, "launch_type": "FARGATE",
            "vpc_id": network.vpc_id, "network_configuration": {"subnets": network.private_subnet_ids,
                                                                "securityGroups": [sg.id], "assignPublicIp": "DISABLED"}}})
        self.register_outputs({"cluster": cluster.arn, "work_pool": params.work_pool,
                               "base_job_template": self.base_job_template})
