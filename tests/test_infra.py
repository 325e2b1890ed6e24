"""The stack programs under Pulumi's mocks: which resources exist per stack × level, and the
security rules as assertions over the mocked resources' inputs. No CLI, no AWS, no network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pulumi
import pytest

from mlops.errors import ConfigError, TargetUnavailable
from mlops.infra._offline import RecordingMocks
from mlops.recipe import load

# Before the programs are imported (pulumi/examples:testing-unit-py).
pulumi.runtime.set_mocks(RecordingMocks(), project="mlops-test", stack="test", preview=False)

from mlops.infra.aws import UNSCOPABLE_ACTIONS, MANAGED_POLICIES, PUBLIC_PATHS, ArtifactStore  # noqa: E402
from mlops.targets._aws import AwsTarget, infra_spec, planned_resources, resource_diff  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STACKS = ("reasonable-scale", "k8s")
SECRET_VALUE = re.compile(r"(pnu_[A-Za-z0-9]{8,}|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY)")


def _cfg(stack: str, *overrides: str):
    return load([f"stack={stack}", "recipe=breast_cancer", "target=aws", *overrides], ROOT, check_data=False)


_CACHE: dict[tuple, list[dict]] = {}


def _plan(stack: str, level: int, *overrides: str) -> list[dict]:
    key = (stack, level, overrides)
    if key not in _CACHE:
        _CACHE[key] = planned_resources(_cfg(stack, *overrides), level)
    return _CACHE[key]


def _of(resources: list[dict], suffix: str) -> list[dict]:
    return [r for r in resources if r["type"].endswith(suffix)]


def _types(resources: list[dict]) -> Counter:
    return Counter(r["type"].rsplit(":", 1)[-1] for r in resources if r["custom"])


# ---------------------------------------------------------------- what exists, per stack × level
BUCKET = {"Bucket": 1, "BucketOwnershipControls": 1, "BucketPublicAccessBlock": 1, "BucketPolicy": 1,
          "BucketServerSideEncryptionConfiguration": 1, "BucketVersioning": 1, "BucketLifecycleConfiguration": 1,
          "Parameter": 1, "aws": 1}
EXPECTED_COMPONENTS = {
    "reasonable-scale": [
        {"ArtifactStore", "Tracking"},
        {"ArtifactStore", "Tracking", "DataSchedule"},
        {"ArtifactStore", "Tracking", "DataSchedule", "Network", "RuntimeImage", "TrainingCompute", "Orchestration"},
        {"ArtifactStore", "Tracking", "DataSchedule", "Network", "RuntimeImage", "TrainingCompute", "Orchestration",
         "TritonServing"},
        {"ArtifactStore", "Tracking", "DataSchedule", "Network", "RuntimeImage", "TrainingCompute", "Orchestration",
         "TritonServing", "Monitoring"},
    ],
    "k8s": [
        {"ArtifactStore", "Tracking", "Namespace"},
        {"ArtifactStore", "Tracking", "Namespace", "DataSchedule"},
        {"ArtifactStore", "Tracking", "Namespace", "DataSchedule", "TrainingJobs", "PrefectWorker"},
        {"ArtifactStore", "Tracking", "Namespace", "DataSchedule", "TrainingJobs", "PrefectWorker", "TritonDeployment"},
        {"ArtifactStore", "Tracking", "Namespace", "DataSchedule", "TrainingJobs", "PrefectWorker", "TritonDeployment",
         "DriftCheck"},
    ],
}
# Resources each level adds (type → count), on top of the level below.
ADDED = {
    "reasonable-scale": [
        BUCKET,
        {"Schedule": 1, "Role": 1, "RolePolicy": 1},
        {"Vpc": 1, "DefaultSecurityGroup": 1, "InternetGateway": 1, "Subnet": 4, "RouteTable": 2,
         "RouteTableAssociation": 4, "Eip": 1, "NatGateway": 1, "VpcEndpoint": 1, "Repository": 1,
         "SecurityGroup": 2, "SecurityGroupIngressRule": 0, "Role": 6, "RolePolicy": 5, "RolePolicyAttachment": 1,
         "InstanceProfile": 1, "ComputeEnvironment": 1, "JobQueue": 1, "JobDefinition": 1, "Cluster": 1,
         "LogGroup": 1, "TaskDefinition": 2, "Service": 1},
        {"Cluster": 1, "LogGroup": 1, "SecurityGroup": 3, "SecurityGroupIngressRule": 2, "SecurityGroupEgressRule": 1,
         "Role": 3, "RolePolicy": 2, "RolePolicyAttachment": 1, "InstanceProfile": 1, "LaunchTemplate": 1, "Group": 1,
         "CapacityProvider": 1, "ClusterCapacityProviders": 1, "LoadBalancer": 1, "TargetGroup": 1, "Listener": 1,
         "ListenerRule": 1, "TaskDefinition": 1, "Service": 1, "Target": 1, "Policy": 1},
        {"Schedule": 1, "Role": 1, "RolePolicy": 1, "Topic": 1, "EventRule": 1, "TopicPolicy": 1, "EventTarget": 1,
         "Policy": 1, "RolePolicyAttachment": 1},
    ],
    "k8s": [
        {**BUCKET, "Namespace": 1},
        {"CronJob": 1},
        {"ServiceAccount": 2, "Service": 1, "ConfigMap": 1, "Role": 1, "RoleBinding": 1, "Deployment": 1},
        {"Deployment": 1, "Service": 1, "HorizontalPodAutoscaler": 1, "PodDisruptionBudget": 1, "NetworkPolicy": 1},
        {"CronJob": 1},
    ],
}


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("level", range(5))
def test_exactly_the_expected_resources(stack, level):
    res = _plan(stack, level)
    components = {r["type"].rsplit(":", 1)[-1] for r in res if not r["custom"]}
    assert components == EXPECTED_COMPONENTS[stack][level]
    expected: Counter = Counter()
    for lv in range(level + 1):
        expected.update(ADDED[stack][lv])
    assert _types(res) == +expected
    names = [(r["type"], r["name"]) for r in res]
    assert len(names) == len(set(names)), "duplicate resource names"


def test_level_diff_lists_the_added_resources():
    diff = resource_diff(_plan("reasonable-scale", 2), _plan("reasonable-scale", 3))
    assert diff["remove"] == [] and diff["change"] == []
    assert {"type": "aws:lb/loadBalancer:LoadBalancer", "name": "mlops-breast-cancer-triton"} in diff["add"]


def test_the_local_stack_provisions_nothing():
    with pytest.raises(TargetUnavailable, match="provisions nothing"):
        planned_resources(_cfg("local"), 0)


# ---------------------------------------------------------------- the programs follow the Plan
def _plan_of(stack: str, level: int):
    from mlops.targets._aws import plan_at

    return plan_at(_cfg(stack), level)


@pytest.mark.parametrize("level", range(5))
def test_every_cronjob_runs_one_of_the_plans_deployments(level):
    plan = _plan_of("k8s", level)
    # `prefect deployment run` names a deployment `<flow name>/<deployment name>`.
    scheduled = [f"{d.flow}/{d.name}" for d in plan.deployments if d.interval_s is not None]
    run = []
    for cj in _of(_plan("k8s", level), ":CronJob"):
        [container] = cj["inputs"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["prefect", "deployment", "run"], cj["name"]
        run.append(container["command"][3])
    assert sorted(run) == sorted(scheduled)


@pytest.mark.parametrize("level", range(5))
def test_every_aws_event_name_is_one_the_plans_deployments_emit(level):
    from mlops._names import EVENT_SOURCE, RUN_REQUESTED, model_resource

    plan = _plan_of("reasonable-scale", level)
    emitted = {e for d in plan.deployments for e in d.emits}
    refs = {f"{d.flow}/{d.name}" for d in plan.deployments}
    res = _plan("reasonable-scale", level)
    for rule in _of(res, ":EventRule"):
        pattern = json.loads(rule["inputs"]["eventPattern"])
        assert pattern["source"] == [EVENT_SOURCE]
        assert pattern["detail-type"] and set(pattern["detail-type"]) <= emitted, (pattern, emitted)
        assert pattern["resources"] == [model_resource(plan.recipe)]
    for sched in _of(res, ":Schedule"):
        target = sched["inputs"]["target"]
        assert target["eventbridgeParameters"] == {"detailType": RUN_REQUESTED, "source": EVENT_SOURCE}
        assert json.loads(target["input"])["deployment"] in refs
    assert len(_of(res, ":Schedule")) == sum(d.interval_s is not None for d in plan.deployments)
    assert bool(_of(res, ":EventRule")) == (level == 4)


@pytest.mark.parametrize("stack", STACKS)
def test_the_programs_build_the_components_of_plan_infrastructure(stack):
    cfg = _cfg(stack, "maturity=4")
    full = _plan_of(stack, 4)
    # What each Plan component is built as, per program (a component resource type).
    built_as = {"reasonable-scale": {"data_schedule": "DataSchedule", "training": "TrainingCompute",
                                     "orchestration": "Orchestration", "serving": "TritonServing",
                                     "monitoring": "Monitoring"},
                "k8s": {"data_schedule": "DataSchedule", "training": "TrainingJobs", "orchestration": "PrefectWorker",
                        "serving": "TritonDeployment", "monitoring": "DriftCheck"}}[stack]
    for name, component in built_as.items():
        plan = full.model_copy(update={"infrastructure": tuple(c for c in full.infrastructure if c.name != name)})
        components = {r["type"].rsplit(":", 1)[-1] for r in planned_resources(cfg, plan=plan) if not r["custom"]}
        assert components == EXPECTED_COMPONENTS[stack][4] - {component}, name


def test_a_standalone_spec_carries_the_plans_components_and_schedules():
    from mlops.infra import InfraSpec

    cfg = _cfg("k8s", "maturity=4")
    spec = infra_spec(cfg)
    assert spec.components == tuple(c.name for c in _plan_of("k8s", 4).infrastructure)
    assert InfraSpec.from_json(json.dumps(spec.to_json())) == spec
    assert {s.ref for s in spec.schedules} == {"mlops-data/breast_cancer-data", "mlops-monitor/breast_cancer-monitor"}
    old = {k: v for k, v in spec.to_json().items() if k not in ("components", "schedules")}
    with pytest.raises(ConfigError, match="mlops stack show k8s recipe=breast_cancer maturity=4 --pulumi-config"):
        InfraSpec.from_json(old)


# ---------------------------------------------------------------- security rules, every stack × level
def _all_plans():
    return [(s, lv, _plan(s, lv)) for s in STACKS for lv in range(5)] + [
        ("reasonable-scale", 4, _plan("reasonable-scale", 4, "stack.parameters.serving.mode=sagemaker",
                                      "stack.parameters.serving.instance_type=ml.g4dn.xlarge")),
        ("reasonable-scale", 4, _plan("reasonable-scale", 4, "stack.parameters.serving.public=true",
                                      "+stack.parameters.serving.certificate_arn=arn:aws:acm:us-east-1:1:certificate/x",
                                      "compute.num_nodes=2", "compute.devices=4")),
    ]


def _policies(res: list[dict]) -> list[dict]:
    docs = []
    for r in res:
        if r["type"] in ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy"):
            docs.append(json.loads(r["inputs"]["policy"]))
    return docs


def test_buckets_are_private_encrypted_versioned_tls_only_and_expire_old_profiles():
    for stack, level, res in _all_plans():
        where = f"{stack} level {level}"
        [bucket] = _of(res, ":Bucket")
        assert bucket["inputs"].get("forceDestroy") in (None, False), where
        [pab] = _of(res, ":BucketPublicAccessBlock")
        assert all(pab["inputs"][k] is True for k in
                   ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")), where
        [sse] = _of(res, ":BucketServerSideEncryptionConfiguration")
        assert sse["inputs"]["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms", where
        [ver] = _of(res, ":BucketVersioning")
        assert ver["inputs"]["versioningConfiguration"]["status"] == "Enabled", where
        [pol] = _of(res, ":BucketPolicy")
        [st] = json.loads(pol["inputs"]["policy"])["Statement"]
        assert (st["Effect"], st["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": "false"}}), where
        [lc] = _of(res, ":BucketLifecycleConfiguration")
        profiles = [r for r in lc["inputs"]["rules"] if r["filter"].get("prefix") == "profiles/"]
        assert profiles and profiles[0]["expiration"]["days"] == 90, where


def test_an_existing_bucket_is_used_not_created():
    res = planned_resources(_cfg("reasonable-scale", "+stack.parameters.artifacts.bucket=acme-ml"), 2)
    assert not _of(res, ":Bucket") and not _of(res, ":BucketPolicy")
    assert any("arn:aws:s3:::acme-ml/models/*" in json.dumps(d) for d in _policies(res))


def test_iam_has_no_wildcard_actions_or_resources():
    for stack, level, res in _all_plans():
        for doc in _policies(res):
            for st in doc["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                assert all("*" not in a for a in actions), (stack, level, st)
                if "*" in resources:  # only what AWS cannot scope, and nothing else in that statement
                    assert resources == ["*"] and set(actions) <= UNSCOPABLE_ACTIONS, (stack, level, st)
                assert all(r == "*" or not r.endswith(":*:*") for r in resources), (stack, level, st)
        attached = {r["inputs"]["policyArn"] for r in _of(res, ":RolePolicyAttachment")
                    if r["inputs"]["policyArn"].startswith("arn:aws:iam::aws:")}
        assert attached <= set(MANAGED_POLICIES.values()), (stack, level, attached)


def test_no_security_group_open_to_the_world_except_a_public_listener():
    for stack, level, res in _all_plans():
        public = any(r["inputs"].get("internal") is False for r in _of(res, ":LoadBalancer"))
        for sg in _of(res, ":SecurityGroup"):
            assert all("0.0.0.0/0" not in rule.get("cidrBlocks", []) for rule in sg["inputs"].get("ingress", [])), sg
        for rule in _of(res, ":SecurityGroupIngressRule"):
            if rule["inputs"].get("cidrIpv4") == "0.0.0.0/0":
                assert public and rule["inputs"]["fromPort"] == rule["inputs"]["toPort"] == 443, (stack, level, rule)


def test_the_load_balancer_is_internal_unless_asked_and_https_when_public():
    [lb] = _of(_plan("reasonable-scale", 3), ":LoadBalancer")
    assert lb["inputs"]["internal"] is True
    [rule] = [r for r in _of(_plan("reasonable-scale", 3), ":SecurityGroupIngressRule") if r["name"].endswith("-lb-in-0")]
    assert rule["inputs"]["cidrIpv4"] == "10.42.0.0/16"  # the VPC, not the world
    with pytest.raises(ConfigError, match="certificate_arn"):
        _cfg("reasonable-scale", "stack.parameters.serving.public=true")


def test_triton_management_api_is_not_public():
    for stack, level, res in _all_plans():
        for rule in _of(res, ":ListenerRule"):
            paths = rule["inputs"]["conditions"][0]["pathPattern"]["values"]
            assert paths == PUBLIC_PATHS and not any("repository" in p for p in paths)
        for lst in _of(res, ":Listener"):
            assert lst["inputs"]["defaultActions"][0]["type"] == "fixed-response"
        for td in _of(res, "ecs/taskDefinition:TaskDefinition"):
            for c in json.loads(td["inputs"]["containerDefinitions"]):
                if c["name"] == "triton":
                    assert "--model-control-mode=poll" in c["command"][0]
                    assert [p["containerPort"] for p in c["portMappings"]] == [8000]
        for svc in _of(res, "core/v1:Service"):
            assert svc["inputs"]["spec"].get("type", "ClusterIP") == "ClusterIP"
            assert all(p["port"] in (8000, 29500) for p in svc["inputs"]["spec"]["ports"])
        for dep in _of(res, "apps/v1:Deployment"):
            c = dep["inputs"]["spec"]["template"]["spec"]["containers"][0]
            if c["name"] == "triton":
                assert "--model-control-mode=poll" in c["args"] and c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_health_checks_and_autoscaling_bounds():
    res = _plan("reasonable-scale", 3, "stack.parameters.serving.max_capacity=6")
    [tg] = _of(res, ":TargetGroup")
    assert tg["inputs"]["healthCheck"]["path"] == "/v2/health/ready"
    [target] = _of(res, "appautoscaling/target:Target")
    assert (target["inputs"]["minCapacity"], target["inputs"]["maxCapacity"]) == (1, 6)
    [hpa] = _of(_plan("k8s", 3), ":HorizontalPodAutoscaler")
    assert (hpa["inputs"]["spec"]["minReplicas"], hpa["inputs"]["spec"]["maxReplicas"]) == (1, 4)
    with pytest.raises(ConfigError, match="exceeds max_capacity"):
        _cfg("reasonable-scale", "stack.parameters.serving.min_capacity=5", "stack.parameters.serving.max_capacity=2")


def test_no_plaintext_secret_in_any_resource_input():
    for stack, level, res in _all_plans():
        text = json.dumps([r["inputs"] for r in res])
        assert not SECRET_VALUE.search(text), (stack, level)
        for td in _of(res, "ecs/taskDefinition:TaskDefinition"):
            for c in json.loads(td["inputs"]["containerDefinitions"]):
                env = {e["name"] for e in c.get("environment", [])}
                assert not env & {"PREFECT_API_KEY", "PREFECT_API_URL"}, c
                assert all(s["valueFrom"].startswith("arn:aws:") for s in c.get("secrets", []))
        for dep in _of(res, "apps/v1:Deployment") + _of(res, ":CronJob"):
            for e in re.findall(r'\{"name": "(PREFECT_API_KEY)", "value"', json.dumps(dep["inputs"])):
                pytest.fail(f"{e} as a literal value in {dep['name']}")


def test_kubernetes_rbac_lists_its_verbs_and_resources():
    for role in _of(_plan("k8s", 2), ":Role"):
        for rule in role["inputs"]["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule


def test_multi_node_training_is_on_demand_and_multinode():
    res = _plan("reasonable-scale", 2, "compute.num_nodes=2", "compute.devices=4")
    [env] = _of(res, ":ComputeEnvironment")
    assert env["inputs"]["computeResources"]["type"] == "EC2"
    [jd] = _of(res, ":JobDefinition")
    props = json.loads(jd["inputs"]["nodeProperties"])
    assert jd["inputs"]["type"] == "multinode" and props["numNodes"] == 2
    gpu = props["nodeRangeProperties"][0]["container"]["resourceRequirements"][0]
    assert gpu == {"type": "GPU", "value": "4"}
    [single] = _of(_plan("reasonable-scale", 2), ":ComputeEnvironment")
    assert single["inputs"]["computeResources"]["type"] == "SPOT"


def test_parameters_are_overridable_without_code():
    res = _plan("reasonable-scale", 2, "+stack.parameters.tags.team=ml", "stack.parameters.region=eu-west-1",
                "+stack.parameters.network.vpc_id=vpc-1", "stack.parameters.network.subnet_ids=[subnet-a,subnet-b]")
    [prov] = _of(res, "providers:aws")
    assert prov["inputs"]["region"] == "eu-west-1" and json.loads(prov["inputs"]["defaultTags"])["tags"]["team"] == "ml"
    assert not _of(res, ":Vpc") and not _of(res, ":NatGateway")
    [env] = _of(res, ":ComputeEnvironment")
    assert env["inputs"]["computeResources"]["subnets"] == ["subnet-a", "subnet-b"]


def test_a_plaintext_secret_in_a_recipe_is_rejected():
    with pytest.raises(ConfigError, match="looks like a secret"):
        _cfg("reasonable-scale", "+stack.parameters.tags.api_token=pnu_abcdefgh12345678")


# ---------------------------------------------------------------- a component under @pulumi.runtime.test
@pulumi.runtime.test
def test_artifact_store_outputs_and_statements_are_scoped():
    from mlops.recipe.schema import ArtifactParams

    store = ArtifactStore("unit", ArtifactParams())

    def check(args):
        name, statements = args
        assert name == "unit"
        text = json.dumps(statements)
        assert "arn:aws:s3:::unit/models/*" in text and '"Resource": ["*"]' not in text

    return pulumi.Output.all(store.bucket_name, pulumi.Output.from_input(
        store.statements(read=("data/",), write=("models/",)))).apply(check)


# ---------------------------------------------------------------- target=aws without the CLI
def test_missing_cli_or_credentials_stop_before_any_side_effect(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                "PULUMI_CONFIG_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    target = AwsTarget(_cfg("reasonable-scale"), tmp_path)
    for call in (target.up, target.down, target.status):
        with pytest.raises(TargetUnavailable) as info:
            call()
        msg = str(info.value)
        assert "the `pulumi` CLI is not on PATH" in msg and "no AWS credentials" in msg
        assert "nothing was changed" in msg and info.value.exit_code == 5
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not __import__("shutil").which("pulumi"), reason="needs the pulumi CLI (not installable here)")
def test_preview_on_a_file_backend(tmp_path, monkeypatch):  # pragma: no cover - runs where the CLI exists
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "test")
    cfg = _cfg("reasonable-scale", "maturity=0")
    target = AwsTarget(cfg, tmp_path)
    stack = target._stack(infra_spec(cfg), "preview", "reasonable_scale", (tmp_path / "state").as_uri())
    stack.set_config("aws:region", __import__("pulumi.automation", fromlist=["ConfigValue"]).ConfigValue("us-east-1"))
    stack.set_config("aws:skipCredentialsValidation", __import__("pulumi.automation", fromlist=["x"]).ConfigValue("true"))
    assert stack.preview().change_summary


def test_import_mlops_does_not_import_pulumi():
    code = "import mlops, mlops.infra, mlops.targets, sys; print(any(m.startswith('pulumi') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_plan_lists_aws_resources_offline_and_diffs_levels():
    import json
    import subprocess
    import sys

    def plan(*args: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "mlops.cli", "plan", "stack=reasonable-scale", "target=aws",
                               *args, "--json"], capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    types = {r["type"] for r in plan("maturity=3")["plan"]["resources"]}
    assert {"aws:s3/bucket:Bucket", "aws:ecs/service:Service", "aws:batch/jobQueue:JobQueue"} <= types
    added = {r["type"] for r in plan("maturity=3", "--diff", "maturity=2")["diff"]["resources"]["add"]}
    assert "aws:ecs/service:Service" in added and "aws:s3/bucket:Bucket" not in added
