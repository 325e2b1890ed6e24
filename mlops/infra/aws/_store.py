"""ArtifactStore (S3) and Tracking: where models, profiles and experiment data live."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from mlops.infra.aws._common import allow, child
from mlops.recipe.schema import ArtifactParams

PREFIXES = ("data/", "models/", "triton/", "mlflow/", "profiles/")


class ArtifactStore(pulumi.ComponentResource):
    """The S3 bucket of artifacts: create (default) or use an existing one (`artifacts.bucket`).

    A created bucket is private (all four public-access blocks, bucket-owner-enforced), encrypted
    (SSE-KMS with a bucket key), versioned, TLS-only, and expires old profiles. It has no
    force_destroy and is retained on `down`: model artifacts outlive the infrastructure.
    """

    def __init__(self, name: str, params: ArtifactParams, profile_prefix: str = "profiles/",
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:aws:ArtifactStore", name, None, opts)
        self.created = params.bucket is None
        self.kms_key_arn = params.kms_key_arn
        if params.bucket:
            self.bucket_name = pulumi.Output.from_input(params.bucket)
            self.bucket_arn = pulumi.Output.from_input(f"arn:aws:s3:::{params.bucket}")
        else:
            keep = {"retain_on_delete": True}
            bucket = aws.s3.Bucket(name, force_destroy=False, opts=child(self, **keep))
            self.bucket_name, self.bucket_arn = bucket.bucket, bucket.arn
            aws.s3.BucketOwnershipControls(f"{name}-ownership", bucket=bucket.id,
                                           rule={"object_ownership": "BucketOwnerEnforced"}, opts=child(self, **keep))
            pab = aws.s3.BucketPublicAccessBlock(
                f"{name}-public-access-block", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
                ignore_public_acls=True, restrict_public_buckets=True, opts=child(self, **keep))
            sse: dict[str, Any] = {"sse_algorithm": "aws:kms"}
            if params.kms_key_arn:
                sse["kms_master_key_id"] = params.kms_key_arn
            aws.s3.BucketServerSideEncryptionConfiguration(
                f"{name}-sse", bucket=bucket.id,
                rules=[{"apply_server_side_encryption_by_default": sse, "bucket_key_enabled": True}],
                opts=child(self, **keep))
            versioning = aws.s3.BucketVersioning(f"{name}-versioning", bucket=bucket.id,
                                                 versioning_configuration={"status": "Enabled"}, opts=child(self, **keep))
            aws.s3.BucketPolicy(f"{name}-tls-only", bucket=bucket.id, policy=pulumi.Output.json_dumps({
                "Version": "2012-10-17",
                "Statement": [{"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                               "Resource": [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
                               "Condition": {"Bool": {"aws:SecureTransport": "false"}}}],
            }), opts=child(self, depends_on=[pab], **keep))
            aws.s3.BucketLifecycleConfiguration(f"{name}-lifecycle", bucket=bucket.id, rules=[
                {"id": "expire-old-profiles", "status": "Enabled", "filter": {"prefix": profile_prefix},
                 "expiration": {"days": params.profile_retention_days}},
                {"id": "expire-replaced-versions", "status": "Enabled", "filter": {"prefix": ""},
                 "noncurrent_version_expiration": {"noncurrent_days": params.noncurrent_version_days},
                 "abort_incomplete_multipart_upload": {"days_after_initiation": 7}},
            ], opts=child(self, depends_on=[versioning], **keep))
        self.register_outputs({"bucket": self.bucket_name, "bucket_arn": self.bucket_arn})

    def uri(self, prefix: str) -> pulumi.Output[str]:
        return pulumi.Output.concat("s3://", self.bucket_name, "/", prefix)

    def statements(self, read: tuple[str, ...] = (), write: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Least-privilege S3 (and KMS) statements for these prefixes of this bucket."""
        out = []
        prefixes = sorted(set(read) | set(write))
        out.append(allow(["s3:ListBucket"], [self.bucket_arn],
                         StringLike={"s3:prefix": [p + "*" for p in prefixes]}))
        if read:
            out.append(allow(["s3:GetObject", "s3:GetObjectVersion"],
                             [pulumi.Output.concat(self.bucket_arn, "/", p, "*") for p in sorted(set(read) | set(write))]))
        if write:
            out.append(allow(["s3:PutObject", "s3:AbortMultipartUpload"],
                             [pulumi.Output.concat(self.bucket_arn, "/", p, "*") for p in sorted(write)]))
        if self.kms_key_arn:
            out.append(allow(["kms:Decrypt", "kms:GenerateDataKey"], [self.kms_key_arn]))
        return out


class Tracking(pulumi.ComponentResource):
    """Experiment tracking on AWS: MLflow's artifact root in the store, published as an SSM parameter.

    Flows read `/<prefix>/tracking/artifact-uri`; the tracking database itself stays the
    recipe's `tracking.uri` (sqlite under the state dir by default).
    """

    def __init__(self, name: str, store: ArtifactStore, prefix: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:aws:Tracking", name, None, opts)
        self.artifact_uri = store.uri("mlflow/")
        param = aws.ssm.Parameter(f"{name}-artifact-uri", name=f"/{prefix}/tracking/artifact-uri", type="String",
                                  value=self.artifact_uri, opts=child(self))
        self.parameter_name = param.name
        self.register_outputs({"artifact_uri": self.artifact_uri, "parameter": param.name})
