"""Helpers shared by the AWS components: child options, IAM documents, secret references."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

# AWS actions that cannot be scoped to a resource (the Service Authorization Reference lists no
# resource type for them), so a statement with `Resource: "*"` may hold these and nothing else.
# All are read-only or a registry token; tests/test_infra.py enforces the list.
UNSCOPABLE_ACTIONS = frozenset({"ecr:GetAuthorizationToken", "ecs:DescribeTaskDefinition", "batch:DescribeJobs"})

# AWS-managed policies attached by ARN, each for a reason stated where it is used.
MANAGED_POLICIES = {
    # The ECS agent on GPU instances (Batch, Triton on ECS) registers itself with ECS and pulls images.
    "ecs_instance": "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role",
}


def child(parent: pulumi.Resource, **kw: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **kw)


def policy(*statements: dict[str, Any]) -> pulumi.Output[str]:
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(actions: list[str], resources: list[Any], **condition: Any) -> dict[str, Any]:
    st: dict[str, Any] = {"Effect": "Allow", "Action": sorted(actions), "Resource": resources}
    if condition:
        st["Condition"] = condition
    return st


def assume_role(service: str) -> str:
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})


class Account:
    """Region, account and partition, for ARNs the program builds itself (secrets, buses, log groups)."""

    def __init__(self, parent: pulumi.Resource, region: str):
        ident = aws.get_caller_identity_output(opts=pulumi.InvokeOptions(parent=parent))
        self.region = region
        self.id = ident.account_id

    def arn(self, service: str, resource: str) -> pulumi.Output[str]:
        return pulumi.Output.concat("arn:aws:", service, ":", self.region, ":", self.id, ":", resource)

    def secret(self, ref: str) -> tuple[pulumi.Output[str], pulumi.Output[str], str]:
        """(ARN for ECS `valueFrom`, ARN pattern for IAM, the read action) of a secret reference.

        `ssm:/path` is an SSM SecureString parameter; anything else a Secrets Manager secret, by name or ARN.
        """
        if ref.startswith("ssm:"):
            arn = self.arn("ssm", "parameter/" + ref[4:].lstrip("/"))
            return arn, arn, "ssm:GetParameters"
        if ref.startswith("arn:"):
            return pulumi.Output.from_input(ref), pulumi.Output.from_input(ref), "secretsmanager:GetSecretValue"
        # Secrets Manager appends six random characters to the ARN of a named secret.
        return (self.arn("secretsmanager", "secret:" + ref), self.arn("secretsmanager", f"secret:{ref}-??????"),
                "secretsmanager:GetSecretValue")


def role(parent: pulumi.Resource, name: str, service: str, statements: list[dict[str, Any]] | None = None,
         managed: list[str] | None = None) -> aws.iam.Role:
    """An IAM role for one service, with its own inline least-privilege policy."""
    r = aws.iam.Role(name, assume_role_policy=assume_role(service), opts=child(parent))
    if statements:
        aws.iam.RolePolicy(f"{name}-policy", role=r.id, policy=policy(*statements), opts=child(parent))
    for i, arn in enumerate(managed or []):
        aws.iam.RolePolicyAttachment(f"{name}-managed-{i}", role=r.name, policy_arn=arn, opts=child(parent))
    return r
