"""Run a stack program offline under Pulumi's mocks and record every resource it declares.

Pulumi's mock engine answers resource registrations and provider calls in-process: no CLI, no
cloud, no credentials. Mocks echo inputs, so computed attributes (ARNs, names, URLs) are
synthesised here. Not thread-safe: the Pulumi runtime settings are process-global.
"""

from __future__ import annotations

from typing import Any

import pulumi

from mlops.infra._spec import InfraSpec

ACCOUNT = "123456789012"


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self, region: str = "us-east-1"):
        self.region = region
        self.resources: list[dict[str, Any]] = []
        self.calls: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append({"type": args.typ, "name": args.name, "custom": bool(args.custom),
                               "inputs": dict(args.inputs)})
        service = args.typ.split(":")[1].split("/")[0] if ":" in args.typ else "x"
        state = dict(args.inputs)
        state.setdefault("name", args.name)
        state.setdefault("arn", f"arn:aws:{service}:{self.region}:{ACCOUNT}:{args.name}")
        if args.typ == "aws:s3/bucket:Bucket":
            state.update(bucket=args.name, arn=f"arn:aws:s3:::{args.name}")
        elif args.typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{args.name}"
        elif args.typ == "aws:lb/loadBalancer:LoadBalancer":
            state.update(dnsName=f"{args.name}.{self.region}.elb.amazonaws.com", arnSuffix=f"app/{args.name}/1")
        elif args.typ == "aws:lb/targetGroup:TargetGroup":
            state["arnSuffix"] = f"targetgroup/{args.name}/1"
        elif args.typ == "aws:ec2/vpc:Vpc":
            state.setdefault("cidrBlock", "10.42.0.0/16")
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args.token)
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/mock", "userId": "mock", "id": ACCOUNT}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": [f"{self.region}a", f"{self.region}b"], "zoneIds": ["z1", "z2"], "id": self.region}
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": args.args.get("id"), "cidrBlock": "10.0.0.0/16"}
        if args.token == "aws:ssm/getParameter:getParameter":
            return {"name": args.args.get("name"), "value": "ami-0123456789abcdef0", "type": "String"}
        return {}


def planned_resources(spec: InfraSpec) -> list[dict[str, Any]]:
    """Every resource (components included) the program declares, in declaration order:
    ``[{"type", "name", "custom", "inputs"}]``. Raises what the program raises."""
    from mlops.infra.programs import program_for

    program = program_for(spec.program)
    mocks = RecordingMocks(spec.region)
    pulumi.runtime.set_mocks(mocks, project=spec.program, stack=spec.name, preview=False)

    @pulumi.runtime.test
    def run() -> None:
        program(spec)

    run()
    return mocks.resources
