"""Kubernetes ComponentResources of the `k8s` stack (imports pulumi_kubernetes).

Triton as a Deployment with an HPA, a Prefect Kubernetes work pool's worker, Lightning multi-node
jobs as an Indexed Job template with a headless rendezvous Service. Secrets are Secret references
(`secretKeyRef`), never values; RBAC is namespaced and lists its verbs and resources.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlops.infra._spec import Schedule
from mlops.recipe.schema import KubernetesParams, OrchestrationParams, ServingParams

TRITON_HTTP = 8000


def cron(expression: str) -> str:
    """An EventBridge schedule expression as a Kubernetes CronJob schedule."""
    m = re.fullmatch(r"cron\((.+)\)", expression.strip())
    if m:
        return " ".join(f.replace("?", "*") for f in m.group(1).split()[:5])
    m = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression.strip())
    if not m:
        raise ValueError(f"schedule {expression!r}: expected cron(...) or rate(N minutes|hours|days)")
    n, unit = int(m.group(1)), m.group(2).rstrip("s")
    return {"minute": f"*/{n} * * * *", "hour": f"0 */{n} * * *", "day": f"0 0 */{n} * *" if n > 1 else "0 0 * * *"}[unit]


def _child(parent: pulumi.Resource, **kw: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **kw)


def _meta(name: str, ns: Any, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": ns, "labels": labels}


def _prefect_env(k: KubernetesParams) -> list[dict[str, Any]]:
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": k.prefect_secret_name, "key": key}}}
            for key in ("PREFECT_API_URL", "PREFECT_API_KEY")]


RESTRICTED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
              "seccompProfile": {"type": "RuntimeDefault"}}


def _run_deployment_cronjob(parent: pulumi.Resource, name: str, ns: Any, labels: dict[str, str], schedule: Schedule,
                            image: str, k: KubernetesParams) -> k8s.batch.v1.CronJob:
    """Runs the Plan's deployment: `prefect deployment run <flow>/<deployment>`, the name Prefect knows it by."""
    return k8s.batch.v1.CronJob(name, metadata=_meta(name, ns, labels), spec={
        "schedule": cron(schedule.expression), "concurrencyPolicy": "Forbid",
        "jobTemplate": {"spec": {"backoffLimit": 2, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "run", "image": image, "env": _prefect_env(k), "securityContext": RESTRICTED,
                            "command": ["prefect", "deployment", "run", schedule.ref]}]}}}}},
        opts=_child(parent))


class Namespace(pulumi.ComponentResource):
    def __init__(self, name: str, k: KubernetesParams, labels: dict[str, str], opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:k8s:Namespace", name, None, opts)
        ns = k8s.core.v1.Namespace(name, metadata={"name": k.namespace, "labels": {
            **labels, "pod-security.kubernetes.io/enforce": "baseline"}}, opts=_child(self))
        self.name = ns.metadata["name"]
        self.register_outputs({"namespace": self.name})


class DataSchedule(pulumi.ComponentResource):
    """Level 1: a CronJob that runs the Plan's data deployment (`mlops-data/<recipe>-data`) on `schedules.data`."""

    def __init__(self, name: str, ns: Any, labels: dict[str, str], schedule: Schedule, image: str,
                 k: KubernetesParams, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:k8s:DataSchedule", name, None, opts)
        cj = _run_deployment_cronjob(self, name, ns, labels, schedule, image, k)
        self.register_outputs({"cronjob": cj.metadata["name"]})


class TrainingJobs(pulumi.ComponentResource):
    """Level 2: Lightning multi-node DDP as an Indexed Job: `num_nodes` pods with `devices` GPUs each,
    found through a headless Service. The Job template is published in a ConfigMap for the flow."""

    def __init__(self, name: str, ns: Any, labels: dict[str, str], image: str, devices: int, num_nodes: int,
                 k: KubernetesParams, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:k8s:TrainingJobs", name, None, opts)
        sa = k8s.core.v1.ServiceAccount(name, metadata=_meta(name, ns, labels), opts=_child(self))
        svc = k8s.core.v1.Service(f"{name}-rendezvous", metadata=_meta(f"{name}-rendezvous", ns, labels), spec={
            "clusterIP": "None", "selector": {"mlops/training": name}, "ports": [{"name": "c10d", "port": 29500}]},
            opts=_child(self))
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"generateName": f"{name}-", "labels": labels},
               "spec": {"completionMode": "Indexed", "completions": num_nodes, "parallelism": num_nodes,
                        "backoffLimit": 0, "template": {"metadata": {"labels": {"mlops/training": name}}, "spec": {
                            "serviceAccountName": name, "subdomain": f"{name}-rendezvous", "restartPolicy": "Never",
                            "containers": [{"name": "lightning", "image": image, "securityContext": RESTRICTED,
                                            "env": [{"name": "MLOPS_DEVICES", "value": str(devices)},
                                                    {"name": "MLOPS_NUM_NODES", "value": str(num_nodes)},
                                                    {"name": "MASTER_PORT", "value": "29500"}],
                                            "resources": {"limits": {k.gpu_resource: str(devices)}}}]}}}}
        cm = k8s.core.v1.ConfigMap(f"{name}-job-template", metadata=_meta(f"{name}-job-template", ns, labels),
                                   data={"job.json": pulumi.Output.json_dumps(job)}, opts=_child(self))
        self.service_account = sa.metadata["name"]
        self.register_outputs({"service_account": sa.metadata["name"], "rendezvous": svc.metadata["name"],
                               "job_template": cm.metadata["name"]})


class PrefectWorker(pulumi.ComponentResource):
    """Level 2: a Prefect Kubernetes work pool's worker, allowed to run Jobs in this namespace only."""

    def __init__(self, name: str, ns: Any, labels: dict[str, str], p: OrchestrationParams, k: KubernetesParams,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:k8s:PrefectWorker", name, None, opts)
        sa = k8s.core.v1.ServiceAccount(name, metadata=_meta(name, ns, labels), opts=_child(self))
        role = k8s.rbac.v1.Role(name, metadata=_meta(name, ns, labels), rules=[
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete", "get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": ["get", "list", "watch"]},
        ], opts=_child(self))
        k8s.rbac.v1.RoleBinding(name, metadata=_meta(name, ns, labels),
                                role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role.metadata["name"]},
                                subjects=[{"kind": "ServiceAccount", "name": sa.metadata["name"], "namespace": ns}],
                                opts=_child(self))
        sel = {"app": name}
        dep = k8s.apps.v1.Deployment(name, metadata=_meta(name, ns, labels), spec={
            "replicas": 1, "selector": {"matchLabels": sel}, "template": {"metadata": {"labels": {**labels, **sel}}, "spec": {
                "serviceAccountName": sa.metadata["name"],
                "containers": [{"name": "worker", "image": p.worker_image, "securityContext": RESTRICTED,
                                "command": ["prefect", "worker", "start", "--pool", p.work_pool, "--type", "kubernetes"],
                                "env": [{"name": "EXTRA_PIP_PACKAGES", "value": "prefect-kubernetes"},
                                        *_prefect_env(k)],
                                "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                                              "limits": {"memory": f"{p.worker_memory}Mi"}}}]}}}, opts=_child(self))
        self.register_outputs({"deployment": dep.metadata["name"], "work_pool": p.work_pool})


class TritonDeployment(pulumi.ComponentResource):
    """Level 3: stock Triton polling the model repository, a ClusterIP Service on the HTTP port only,
    readiness/liveness probes, an HPA between `min_capacity` and `max_capacity`, a
    PodDisruptionBudget, and a NetworkPolicy that admits inference traffic on 8000 only."""

    def __init__(self, name: str, ns: Any, labels: dict[str, str], p: ServingParams, model_repository: Any,
                 k: KubernetesParams, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:k8s:TritonDeployment", name, None, opts)
        sel = {"app": name}
        probe = {"httpGet": {"path": "/v2/health/ready", "port": TRITON_HTTP}, "periodSeconds": 10, "failureThreshold": 3}
        dep = k8s.apps.v1.Deployment(name, metadata=_meta(name, ns, labels), spec={
            "replicas": p.min_capacity, "selector": {"matchLabels": sel},
            "template": {"metadata": {"labels": {**labels, **sel}}, "spec": {"containers": [{
                "name": "triton", "image": p.image, "securityContext": {"allowPrivilegeEscalation": False},
                "args": ["tritonserver", pulumi.Output.concat("--model-repository=", model_repository),
                         "--model-control-mode=poll", "--repository-poll-secs=30", "--strict-readiness=true",
                         f"--http-port={TRITON_HTTP}", "--grpc-port=8001", "--metrics-port=8002"],
                "ports": [{"name": "http", "containerPort": TRITON_HTTP}, {"name": "metrics", "containerPort": 8002}],
                "envFrom": [{"secretRef": {"name": k.storage_secret_name}}],
                "readinessProbe": probe, "startupProbe": {**probe, "failureThreshold": 30},
                "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": TRITON_HTTP}, "periodSeconds": 15},
                "resources": {"requests": {"cpu": "1", "memory": "4Gi"},
                              "limits": {k.gpu_resource: "1", "memory": "8Gi"}}}]}}}, opts=_child(self))
        svc = k8s.core.v1.Service(name, metadata=_meta(name, ns, labels), spec={
            "type": "ClusterIP", "selector": sel, "ports": [{"name": "http", "port": TRITON_HTTP, "targetPort": TRITON_HTTP}]},
            opts=_child(self))
        k8s.autoscaling.v2.HorizontalPodAutoscaler(name, metadata=_meta(name, ns, labels), spec={
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep.metadata["name"]},
            "minReplicas": p.min_capacity, "maxReplicas": p.max_capacity,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                                   "averageUtilization": 70}}}]},
            opts=_child(self))
        k8s.policy.v1.PodDisruptionBudget(name, metadata=_meta(name, ns, labels),
                                          spec={"minAvailable": 1, "selector": {"matchLabels": sel}}, opts=_child(self))
        k8s.networking.v1.NetworkPolicy(name, metadata=_meta(name, ns, labels), spec={
            "podSelector": {"matchLabels": sel}, "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": TRITON_HTTP}]}]}, opts=_child(self))
        self.endpoint = pulumi.Output.concat("http://", svc.metadata["name"], ".", ns, ".svc:", str(TRITON_HTTP))
        self.register_outputs({"endpoint": self.endpoint})


class DriftCheck(pulumi.ComponentResource):
    """Level 4: a CronJob that runs the Plan's monitor deployment (`mlops-monitor/<recipe>-monitor`) on
    `schedules.drift`."""

    def __init__(self, name: str, ns: Any, labels: dict[str, str], schedule: Schedule, image: str,
                 k: KubernetesParams, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:k8s:DriftCheck", name, None, opts)
        cj = _run_deployment_cronjob(self, name, ns, labels, schedule, image, k)
        self.register_outputs({"cronjob": cj.metadata["name"]})
