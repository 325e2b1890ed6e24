"""The stack programs: one function per Pulumi project, from an :class:`InfraSpec` to resources.

A program builds the components the spec lists (`spec.has`), which are the Plan's infrastructure
components, and schedules the Plan's deployments (`spec.schedule`): it keeps no level table of its own.

`infra/<project>/__main__.py` runs the same function for a standalone `pulumi up`; `mlops up
target=aws` runs it inline through the Automation API; `mlops plan` runs it under mocks.
Third parties register more programs under the `mlops.pulumi_programs` entry point (a name and a
callable taking an InfraSpec), and name them in their stack YAML as `pulumi_project: <name>`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

import pulumi
import pulumi_aws as aws

from mlops.errors import ConfigError, Problem
from mlops.infra._spec import InfraSpec
from mlops.infra.aws import (
    Account, ArtifactStore, DataSchedule, Monitoring, Network, Orchestration, RuntimeImage, TrainingCompute,
    Tracking, TritonServing,
)

ENTRY_POINTS = "mlops.pulumi_programs"


def _aws(spec: InfraSpec) -> pulumi.ResourceOptions:
    provider = aws.Provider("aws", region=spec.region, default_tags={"tags": spec.tags})
    return pulumi.ResourceOptions(provider=provider)


def _store(spec: InfraSpec, opts: pulumi.ResourceOptions) -> tuple[ArtifactStore, Account]:
    p, pre = spec.params, spec.prefix
    store = ArtifactStore(f"{pre}-artifacts", p.artifacts, p.monitoring.profile_prefix, opts=opts)
    tracking = Tracking(f"{pre}-tracking", store, pre, opts=opts)
    pulumi.export("bucket", store.bucket_name)
    pulumi.export("tracking_artifact_uri", tracking.artifact_uri)
    return store, Account(store, spec.region)


def reasonable_scale(spec: InfraSpec) -> None:
    """S3 artifacts, Batch GPU training, a Prefect ECS work pool, Triton on ECS GPU (or SageMaker), drift alarms."""
    p, pre = spec.params, spec.prefix
    opts = _aws(spec)
    store, account = _store(spec, opts)
    if spec.has("data_schedule"):
        DataSchedule(f"{pre}-data", spec.schedule("data_schedule"), spec.name, account, opts=opts)
    ecs_serving = spec.has("serving") and p.serving.mode == "ecs"
    network = (Network(f"{pre}-net", p.network, spec.region, opts=opts)
               if spec.has("training") or spec.has("orchestration") or ecs_serving else None)
    runtime = (RuntimeImage(f"{pre}-runtime", opts=opts)
               if spec.has("orchestration") or (spec.has("training") and p.training.image is None) else None)
    training = orchestration = None
    if spec.has("training"):
        assert network is not None
        image = p.training.image or runtime.image  # type: ignore[union-attr]
        training = TrainingCompute(f"{pre}-train", p.training, network, store, image, spec.devices, spec.num_nodes,
                                   opts=opts)
        pulumi.export("training_job_queue", training.job_queue_arn)
    if spec.has("orchestration"):
        assert network is not None and runtime is not None
        orchestration = Orchestration(f"{pre}-orch", p.orchestration, network, store, runtime, account,
                                      training.submit_statements() if training else None, opts=opts)
        pulumi.export("work_pool_base_job_template", orchestration.base_job_template)
    if spec.has("serving"):
        serving = TritonServing(f"{pre}-triton", p.serving, store, account, spec.model_name, network, opts=opts)
        pulumi.export("endpoint", serving.endpoint)
    if spec.has("monitoring"):
        mon = Monitoring(f"{pre}-monitor", p.monitoring, spec.schedule("monitoring"), store, spec.name, account,
                         opts=opts)
        if orchestration is not None:  # the drift deployment runs as a flow: let it publish drift events
            aws.iam.RolePolicyAttachment(f"{pre}-flow-drift-publisher", role=orchestration.flow_task_role.name,
                                         policy_arn=mon.publisher_policy.arn, opts=opts)
        pulumi.export("drift_topic", mon.topic_arn)


def kubernetes(spec: InfraSpec) -> None:
    """Artifacts in S3; Prefect Kubernetes work pool, Lightning Indexed Jobs and Triton with an HPA in a cluster."""
    from mlops.infra import k8s

    p, pre = spec.params, spec.prefix
    store, _ = _store(spec, _aws(spec))
    labels = {"app.kubernetes.io/part-of": "mlops", "mlops/recipe": spec.name, **p.tags}
    ns = k8s.Namespace(f"{pre}-ns", p.kubernetes, labels)
    from mlops.infra.aws._compute import _version

    image = p.training.image or f"mlops-runtime:{_version()}"
    if spec.has("data_schedule"):
        k8s.DataSchedule(f"{pre}-data", ns.name, labels, spec.schedule("data_schedule"), image, p.kubernetes)
    if spec.has("training"):
        k8s.TrainingJobs(f"{pre}-train", ns.name, labels, image, spec.devices, spec.num_nodes, p.kubernetes)
    if spec.has("orchestration"):
        k8s.PrefectWorker(f"{pre}-worker", ns.name, labels, p.orchestration, p.kubernetes)
    if spec.has("serving"):
        triton = k8s.TritonDeployment(f"{pre}-triton", ns.name, labels, p.serving, store.uri("triton/"), p.kubernetes)
        pulumi.export("endpoint", triton.endpoint)
    if spec.has("monitoring"):
        k8s.DriftCheck(f"{pre}-drift", ns.name, labels, spec.schedule("monitoring"), image, p.kubernetes)
        pulumi.export("profiles", store.uri(p.monitoring.profile_prefix))


PROGRAMS: dict[str, Callable[[InfraSpec], None]] = {"reasonable_scale": reasonable_scale, "k8s": kubernetes}


def program_for(name: str) -> Callable[[InfraSpec], None]:
    if name in PROGRAMS:
        return PROGRAMS[name]
    for ep in metadata.entry_points(group=ENTRY_POINTS):
        if ep.name == name:
            return ep.load()
    known = sorted({*PROGRAMS, *(ep.name for ep in metadata.entry_points(group=ENTRY_POINTS))})
    raise ConfigError([Problem("stack.pulumi_project", f"names no registered Pulumi program; got {name!r}, "
                               f"registered: {', '.join(known)}", "",
                               f"register one under the `{ENTRY_POINTS}` entry point, or pick a listed one")])


def run_from_pulumi_config() -> None:
    """The body of `infra/<project>/__main__.py`: the spec comes from the stack's `mlops:spec` config."""
    spec = InfraSpec.from_json(pulumi.Config("mlops").require_object("spec"))
    program_for(spec.program)(spec)
