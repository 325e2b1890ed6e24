"""Network: a VPC with private subnets for compute, or an existing one (`network.vpc_id`)."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from mlops.infra.aws._common import child
from mlops.recipe.schema import NetworkParams


class Network(pulumi.ComponentResource):
    """Create: a VPC over two zones, private subnets behind one NAT gateway, public subnets for the
    load balancer and the NAT, an S3 gateway endpoint, and a default security group with no rules.
    Use existing: `vpc_id` + `subnet_ids` (+ `public_subnet_ids` for a public endpoint); creates nothing.
    """

    def __init__(self, name: str, params: NetworkParams, region: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:aws:Network", name, None, opts)
        self.region = region
        if params.vpc_id:
            self.vpc_id = pulumi.Output.from_input(params.vpc_id)
            self.cidr = aws.ec2.get_vpc_output(id=params.vpc_id, opts=pulumi.InvokeOptions(parent=self)).cidr_block
            self.private_subnet_ids = pulumi.Output.from_input(list(params.subnet_ids))
            self.public_subnet_ids = pulumi.Output.from_input(list(params.public_subnet_ids))
        else:
            self._create(name, params)
        self.register_outputs({"vpc_id": self.vpc_id, "private_subnet_ids": self.private_subnet_ids})

    def _create(self, name: str, params: NetworkParams) -> None:
        import ipaddress

        azs = aws.get_availability_zones_output(state="available", opts=pulumi.InvokeOptions(parent=self)).names
        vpc = aws.ec2.Vpc(name, cidr_block=params.cidr, enable_dns_hostnames=True, enable_dns_support=True,
                          opts=child(self))
        self.vpc_id, self.cidr = vpc.id, vpc.cidr_block
        # CIS: the default security group of a VPC allows nothing.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, opts=child(self))
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, opts=child(self))
        blocks = list(ipaddress.ip_network(params.cidr).subnets(new_prefix=max(ipaddress.ip_network(params.cidr).prefixlen + 2, 20)))
        public_rt = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id,
                                       routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}], opts=child(self))
        public, private = [], []
        for i in range(2):
            az = azs.apply(lambda n, i=i: n[i % len(n)])
            pub = aws.ec2.Subnet(f"{name}-public-{i}", vpc_id=vpc.id, cidr_block=str(blocks[i]), availability_zone=az,
                                 map_public_ip_on_launch=False, opts=child(self))
            aws.ec2.RouteTableAssociation(f"{name}-public-{i}", subnet_id=pub.id, route_table_id=public_rt.id,
                                          opts=child(self))
            public.append(pub)
        eip = aws.ec2.Eip(f"{name}-nat", domain="vpc", opts=child(self))
        nat = aws.ec2.NatGateway(f"{name}-nat", allocation_id=eip.id, subnet_id=public[0].id, opts=child(self))
        private_rt = aws.ec2.RouteTable(f"{name}-private", vpc_id=vpc.id,
                                        routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}], opts=child(self))
        for i in range(2):
            az = azs.apply(lambda n, i=i: n[i % len(n)])
            sub = aws.ec2.Subnet(f"{name}-private-{i}", vpc_id=vpc.id, cidr_block=str(blocks[2 + i]),
                                 availability_zone=az, opts=child(self))
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=sub.id, route_table_id=private_rt.id,
                                          opts=child(self))
            private.append(sub)
        aws.ec2.VpcEndpoint(f"{name}-s3", vpc_id=vpc.id, vpc_endpoint_type="Gateway",
                            service_name=f"com.amazonaws.{self.region}.s3",
                            route_table_ids=[private_rt.id], opts=child(self))
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private])
        self.public_subnet_ids = pulumi.Output.all(*[s.id for s in public])
