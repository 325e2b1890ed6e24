"""TritonServing: the stock Triton image serving the model repository in the artifact store."""

from __future__ import annotations

import base64

import pulumi
import pulumi_aws as aws

from mlops.infra.aws._common import MANAGED_POLICIES, Account, allow, child, role
from mlops.infra.aws._network import Network
from mlops.infra.aws._store import ArtifactStore
from mlops.recipe.schema import ServingParams

TRITON_HTTP = 8000
# Only inference, model metadata and health reach Triton through the load balancer; the model
# repository (management) API, gRPC (8001) and metrics (8002) stay inside the VPC.
PUBLIC_PATHS = ["/v2/models/*/infer", "/v2/models/*/versions/*/infer", "/v2/health/ready", "/v2/health/live"]
AWS_TRITON_IMAGE_US_EAST_1 = "785573368785.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"
ECS_GPU_AMI = "/aws/service/ecs/optimized-ami/amazon-linux-2/gpu/recommended/image_id"


class TritonServing(pulumi.ComponentResource):
    """`serving.mode: ecs` (default): Triton tasks on GPU EC2 instances (an ECS capacity provider),
    behind an application load balancer that is internal unless `public` (then HTTPS only), with a
    readiness health check and autoscaling between `min_capacity` and `max_capacity`.
    Triton polls the model repository (`--model-control-mode=poll`), so no load/unload API is used.
    `serving.mode: sagemaker`: a SageMaker endpoint with AWS's Triton container, network-isolated,
    invoked with IAM-signed requests only, with the same autoscaling bounds.
    """

    def __init__(self, name: str, params: ServingParams, store: ArtifactStore, account: Account, model_name: str,
                 network: Network | None = None, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:aws:TritonServing", name, None, opts)
        self.model_repository = store.uri("triton/")
        read = store.statements(read=("triton/",))
        if params.mode == "sagemaker":
            self._sagemaker(name, params, store, account, model_name, read)
        else:
            assert network is not None, "serving.mode=ecs needs the network"
            self._ecs(name, params, network, account, read)
        self.register_outputs({"endpoint": self.endpoint, "model_repository": self.model_repository})

    def _ecs(self, name: str, p: ServingParams, net: Network, account: Account, read: list) -> None:
        if p.public and not p.certificate_arn:
            raise ValueError("a public Triton endpoint needs serving.certificate_arn (HTTPS only)")
        cluster = aws.ecs.Cluster(name, settings=[{"name": "containerInsights", "value": "enabled"}], opts=child(self))
        logs = aws.cloudwatch.LogGroup(name, retention_in_days=30, opts=child(self))
        lb_sg = aws.ec2.SecurityGroup(f"{name}-lb", vpc_id=net.vpc_id, description="Triton load balancer",
                                      opts=child(self))
        task_sg = aws.ec2.SecurityGroup(f"{name}-task", vpc_id=net.vpc_id, description="Triton tasks: HTTP from the LB only",
                                        egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443,
                                                 "cidr_blocks": ["0.0.0.0/0"], "description": "S3, ECR"}],
                                        opts=child(self))
        host_sg = aws.ec2.SecurityGroup(f"{name}-host", vpc_id=net.vpc_id, description="GPU hosts: no ingress",
                                        egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443,
                                                 "cidr_blocks": ["0.0.0.0/0"], "description": "ECS agent, ECR"}],
                                        opts=child(self))
        port = 443 if p.certificate_arn else 80
        cidrs = p.allowed_cidrs or (["0.0.0.0/0"] if p.public else None)
        sources = [pulumi.Output.from_input(c) for c in cidrs] if cidrs else [net.cidr]
        for i, cidr in enumerate(sources):
            aws.vpc.SecurityGroupIngressRule(f"{name}-lb-in-{i}", security_group_id=lb_sg.id, ip_protocol="tcp",
                                             from_port=port, to_port=port, cidr_ipv4=cidr, opts=child(self))
        aws.vpc.SecurityGroupEgressRule(f"{name}-lb-to-task", security_group_id=lb_sg.id, ip_protocol="tcp",
                                        from_port=TRITON_HTTP, to_port=TRITON_HTTP,
                                        referenced_security_group_id=task_sg.id, opts=child(self))
        aws.vpc.SecurityGroupIngressRule(f"{name}-task-from-lb", security_group_id=task_sg.id, ip_protocol="tcp",
                                         from_port=TRITON_HTTP, to_port=TRITON_HTTP,
                                         referenced_security_group_id=lb_sg.id, opts=child(self))

        # GPU capacity: an autoscaling group of ECS GPU instances, scaled by the capacity provider.
        host_role = role(self, f"{name}-host", "ec2.amazonaws.com", managed=[MANAGED_POLICIES["ecs_instance"]])
        profile = aws.iam.InstanceProfile(f"{name}-host", role=host_role.name, opts=child(self))
        ami = aws.ssm.get_parameter_output(name=ECS_GPU_AMI, opts=pulumi.InvokeOptions(parent=self)).value
        user_data = cluster.name.apply(lambda c: base64.b64encode(
            f"#!/bin/bash\necho ECS_CLUSTER={c} >> /etc/ecs/ecs.config\n".encode()).decode())
        lt = aws.ec2.LaunchTemplate(name, image_id=ami, instance_type=p.instance_type, user_data=user_data,
                                    iam_instance_profile={"arn": profile.arn}, vpc_security_group_ids=[host_sg.id],
                                    metadata_options={"http_endpoint": "enabled", "http_tokens": "required",
                                                      "http_put_response_hop_limit": 1},
                                    block_device_mappings=[{"device_name": "/dev/xvda", "ebs": {
                                        "encrypted": "true", "volume_size": 100, "volume_type": "gp3"}}],
                                    opts=child(self))
        asg = aws.autoscaling.Group(name, min_size=0, max_size=p.max_capacity, vpc_zone_identifiers=net.private_subnet_ids,
                                    launch_template={"id": lt.id, "version": "$Latest"}, protect_from_scale_in=True,
                                    tags=[{"key": "AmazonECSManaged", "value": "true", "propagate_at_launch": True}],
                                    opts=child(self))
        cp = aws.ecs.CapacityProvider(name, auto_scaling_group_provider={
            "auto_scaling_group_arn": asg.arn, "managed_termination_protection": "ENABLED",
            "managed_scaling": {"status": "ENABLED", "target_capacity": 100,
                                "minimum_scaling_step_size": 1, "maximum_scaling_step_size": p.max_capacity}},
            opts=child(self))
        aws.ecs.ClusterCapacityProviders(name, cluster_name=cluster.name, capacity_providers=[cp.name],
                                         default_capacity_provider_strategies=[{"capacity_provider": cp.name, "weight": 1}],
                                         opts=child(self))

        lb = aws.lb.LoadBalancer(name, internal=not p.public, load_balancer_type="application",
                                 security_groups=[lb_sg.id], drop_invalid_header_fields=True,
                                 subnets=net.public_subnet_ids if p.public else net.private_subnet_ids, opts=child(self))
        tg = aws.lb.TargetGroup(name, port=TRITON_HTTP, protocol="HTTP", target_type="ip", vpc_id=net.vpc_id,
                                deregistration_delay=30, health_check={
                                    "path": "/v2/health/ready", "port": str(TRITON_HTTP), "protocol": "HTTP",
                                    "matcher": "200", "interval": 15, "healthy_threshold": 2, "unhealthy_threshold": 3},
                                opts=child(self))
        listener = aws.lb.Listener(name, load_balancer_arn=lb.arn, port=port, protocol="HTTPS" if p.certificate_arn else "HTTP",
                                   certificate_arn=p.certificate_arn,
                                   ssl_policy="ELBSecurityPolicy-TLS13-1-2-2021-06" if p.certificate_arn else None,
                                   default_actions=[{"type": "fixed-response", "fixed_response": {
                                       "content_type": "text/plain", "message_body": "not found", "status_code": "404"}}],
                                   opts=child(self))
        aws.lb.ListenerRule(f"{name}-inference", listener_arn=listener.arn, priority=10,
                            actions=[{"type": "forward", "target_group_arn": tg.arn}],
                            conditions=[{"path_pattern": {"values": PUBLIC_PATHS}}], opts=child(self))

        exec_role = role(self, f"{name}-exec", "ecs-tasks.amazonaws.com", [
            allow(["logs:CreateLogStream", "logs:PutLogEvents"], [pulumi.Output.concat(logs.arn, ":*")])])
        task_role = role(self, f"{name}-task", "ecs-tasks.amazonaws.com", read)
        command = pulumi.Output.concat(
            "tritonserver --model-repository=", self.model_repository, " --model-control-mode=poll",
            " --repository-poll-secs=30 --strict-readiness=true --exit-timeout-secs=30",
            f" --http-port={TRITON_HTTP} --grpc-port=8001 --metrics-port=8002")
        task = aws.ecs.TaskDefinition(name, family=name, requires_compatibilities=["EC2"], network_mode="awsvpc",
                                      execution_role_arn=exec_role.arn, task_role_arn=task_role.arn,
                                      container_definitions=pulumi.Output.json_dumps([{
                                          "name": "triton", "image": p.image, "essential": True,
                                          "entryPoint": ["/bin/sh", "-c"], "command": [command],
                                          "memoryReservation": 8192,
                                          "resourceRequirements": [{"type": "GPU", "value": "1"}],
                                          "portMappings": [{"containerPort": TRITON_HTTP, "protocol": "tcp"}],
                                          "environment": [{"name": "AWS_DEFAULT_REGION", "value": account.region}],
                                          "healthCheck": {"command": ["CMD-SHELL", f"curl -sf localhost:{TRITON_HTTP}/v2/health/ready || exit 1"],
                                                          "interval": 15, "timeout": 5, "retries": 3, "startPeriod": 120},
                                          "logConfiguration": {"logDriver": "awslogs", "options": {
                                              "awslogs-group": logs.name, "awslogs-region": account.region,
                                              "awslogs-stream-prefix": "triton"}},
                                      }]), opts=child(self))
        service = aws.ecs.Service(name, cluster=cluster.arn, task_definition=task.arn, desired_count=p.min_capacity,
                                  capacity_provider_strategies=[{"capacity_provider": cp.name, "weight": 1}],
                                  network_configuration={"subnets": net.private_subnet_ids, "security_groups": [task_sg.id]},
                                  load_balancers=[{"target_group_arn": tg.arn, "container_name": "triton",
                                                   "container_port": TRITON_HTTP}],
                                  health_check_grace_period_seconds=180,
                                  deployment_circuit_breaker={"enable": True, "rollback": True},
                                  opts=child(self, depends_on=[listener], ignore_changes=["desiredCount"]))
        self._autoscale(name, p, "ecs", "ecs:service:DesiredCount",
                        pulumi.Output.concat("service/", cluster.name, "/", service.name),
                        {"predefined_metric_type": "ALBRequestCountPerTarget",
                         "resource_label": pulumi.Output.concat(lb.arn_suffix, "/", tg.arn_suffix)})
        scheme = "https" if p.certificate_arn else "http"
        self.endpoint = pulumi.Output.concat(scheme, "://", lb.dns_name)

    def _sagemaker(self, name: str, p: ServingParams, store: ArtifactStore, account: Account, model_name: str,
                   read: list) -> None:
        image = p.sagemaker_image
        if image is None:
            if account.region != "us-east-1":
                raise ValueError(f"serving.sagemaker_image: name AWS's SageMaker Triton image for {account.region}")
            image = AWS_TRITON_IMAGE_US_EAST_1
        registry, _, repo = image.partition("/")
        ecr_account, _, _, ecr_region = registry.split(".")[:4]
        repo_arn = f"arn:aws:ecr:{ecr_region}:{ecr_account}:repository/{repo.split(':')[0]}"
        sm_role = role(self, f"{name}-sagemaker", "sagemaker.amazonaws.com", [
            *read,
            allow(["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"], [repo_arn]),
            allow(["ecr:GetAuthorizationToken"], ["*"]),  # unscopable (see UNSCOPABLE_ACTIONS)
            allow(["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                  [account.arn("logs", f"log-group:/aws/sagemaker/Endpoints/{name}*")]),
        ])
        model = aws.sagemaker.Model(name, execution_role_arn=sm_role.arn, enable_network_isolation=True,
                                    primary_container={"image": image, "mode": "SingleModel",
                                                       "model_data_url": store.uri("triton/model.tar.gz"),
                                                       "environment": {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": model_name}},
                                    opts=child(self))
        config = aws.sagemaker.EndpointConfiguration(name, production_variants=[{
            "variant_name": "AllTraffic", "model_name": model.name, "initial_instance_count": p.min_capacity,
            "instance_type": p.instance_type}], opts=child(self))
        ep = aws.sagemaker.Endpoint(name, name=name, endpoint_config_name=config.name, opts=child(self))
        self._autoscale(name, p, "sagemaker", "sagemaker:variant:DesiredInstanceCount",
                        pulumi.Output.concat("endpoint/", ep.name, "/variant/AllTraffic"),
                        {"predefined_metric_type": "SageMakerVariantInvocationsPerInstance"})
        self.endpoint = pulumi.Output.concat("sagemaker://", ep.name)

    def _autoscale(self, name: str, p: ServingParams, namespace: str, dimension: str, resource_id: pulumi.Output,
                   metric: dict) -> None:
        """Target tracking between the stack's min and max capacity (serving.min_capacity/max_capacity)."""
        target = aws.appautoscaling.Target(name, service_namespace=namespace, scalable_dimension=dimension,
                                           resource_id=resource_id, min_capacity=p.min_capacity,
                                           max_capacity=p.max_capacity, opts=child(self))
        aws.appautoscaling.Policy(name, policy_type="TargetTrackingScaling", service_namespace=target.service_namespace,
                                  scalable_dimension=target.scalable_dimension, resource_id=target.resource_id,
                                  target_tracking_scaling_policy_configuration={
                                      "target_value": p.target_requests_per_instance, "scale_in_cooldown": 300,
                                      "scale_out_cooldown": 60, "predefined_metric_specification": metric},
                                  opts=child(self))
