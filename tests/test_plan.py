"""The Plan: golden JSON for every shipped stack × maturity level, levels as pure additions, the diff, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.plan import LEVELS, Plan, compile_plan, diff_plans
from mlops.recipe import load

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "plan"
STACKS = sorted(p.stem for p in (ROOT / "stacks").glob("*.yaml"))
REGEN = os.environ.get("MLOPS_REGEN_GOLDEN") == "1"


def _plan(*overrides: str) -> Plan:
    return compile_plan(load(["recipe=breast_cancer", *overrides], ROOT, check_data=False))


@pytest.mark.parametrize("level", range(5))
@pytest.mark.parametrize("stack", STACKS)
def test_plan_matches_golden_json(stack, level):
    got = _plan(f"stack={stack}", f"maturity={level}").to_json()
    path = GOLDEN / f"{stack}-{level}.json"
    if REGEN:
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text()), f"regenerate with MLOPS_REGEN_GOLDEN=1 if intended: {path}"


def test_plan_is_immutable_and_round_trips_through_json():
    plan = _plan("maturity=3")
    with pytest.raises(Exception):
        plan.maturity = 1  # type: ignore[misc]
    assert Plan.model_validate_json(json.dumps(plan.to_json())) == plan
    assert plan.digest() == _plan("maturity=3").digest() != _plan("maturity=2").digest()


def test_each_level_only_adds_to_the_one_below():
    cfg = load(["recipe=breast_cancer", "maturity=4"], ROOT, check_data=False)
    plan = Plan(recipe=cfg.name, stack=cfg.stack.name, target=cfg.target.kind, maturity=4)
    previous = None
    for level in LEVELS:
        plan = level(plan, cfg)
        if previous is not None:
            for section in ("deployments", "automations", "gates", "infrastructure", "events", "services"):
                names = [getattr(e, "name", e) for e in getattr(plan, section)]
                assert [getattr(e, "name", e) for e in getattr(previous, section)] == names[: len(getattr(previous, section))]
            assert {s.name for s in previous.steps if s.automated} <= {s.name for s in plan.steps if s.automated}
        previous = plan


def test_what_each_level_automates():
    automated = {lv: [s.name for s in _plan(f"maturity={lv}").steps if s.automated] for lv in range(5)}
    assert automated[0] == []
    assert automated[1] == ["ingest", "validate"]
    assert automated[2] == ["ingest", "validate", "train", "evaluate", "register"]
    assert automated[3] == ["ingest", "validate", "train", "evaluate", "register", "gate", "export", "deploy"]
    assert automated[4] == [*automated[3], "monitor"]
    p4 = _plan("maturity=4", "monitoring.window_s=30")
    assert p4.deployment("breast_cancer-monitor").interval_s == 30
    (drift,) = [a for a in p4.automations if a.event == "mlops.drift.detected"]
    assert (drift.deployment, drift.resource, drift.parameters["refresh"]) == ("breast_cancer-train",
                                                                               "mlops.model.breast_cancer", True)
    p0 = _plan("maturity=0")
    assert p0.step("train").command == "mlops run train recipe=breast_cancer"
    assert p0.step("deploy").command == "mlops deploy breast_cancer@<version>"
    assert _plan("maturity=2").step("deploy").command == "mlops promote breast_cancer@<version>"
    p1 = _plan("maturity=1", "maturity.data_interval_s=5")
    assert p1.deployment("breast_cancer-data").interval_s == 5 and p1.automations == ()
    assert "prefect-runner" not in p0.services and "prefect-runner" in p1.services


def test_gate_comes_from_the_recipe():
    (gate,) = _plan("maturity=3", "maturity.gate.metric=test_loss", "maturity.gate.min_improvement=0.01",
                   "+maturity.gate.floors.test_acc=0.9").gates
    assert (gate.metric, gate.direction, gate.min_improvement, gate.floors) == ("test_loss", "minimize", 0.01,
                                                                                {"test_acc": 0.9})


def test_a_gate_metric_the_task_does_not_evaluate_is_a_config_error():
    from mlops.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load(["recipe=breast_cancer", "maturity.gate.metric=test_rmse"], ROOT, check_data=False)
    assert "unknown gate metric (maturity.gate.metric: 'test_rmse'); task=classification evaluates test_acc, test_f1, " \
           "test_auc, test_loss" in str(e.value)


def test_diff_between_levels_2_and_3():
    d = diff_plans(_plan("maturity=2"), _plan("maturity=3"))
    assert d["steps"] == {"automated": ["deploy", "export", "gate"], "added": ["gate"]}
    assert [g["name"] for g in d["gates"]["added"]] == ["champion"]
    assert [c["name"] for c in d["infrastructure"]["added"]] == ["serving"]
    (changed,) = d["deployments"]["changed"]
    assert changed["name"] == "breast_cancer-train" and changed["parameters"] == {"from": {"release": False},
                                                                                   "to": {"release": True}}
    assert "automations" not in d  # the level-2 trigger stays as it is
    down = diff_plans(_plan("maturity=2"), _plan("maturity=1"))
    assert [a["name"] for a in down["automations"]["removed"]] == ["breast_cancer: train on new data"]
    assert diff_plans(_plan(), _plan()) == {}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_plan_diff():
    proc = _cli("plan", "maturity=3", "--diff", "maturity=2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "# maturity=2 -> maturity=3"
    assert {"+ automated step: gate", "+ automated step: export", "+ automated step: deploy",
            "+ gate: champion after register: test_acc (maximize) beats the champion by >= 0",
            "+ component: serving (triton-python-onnxruntime)"} <= set(lines)
    js = json.loads(_cli("plan", "maturity=1", "--diff", "maturity=2", "--json").stdout)
    assert js["diff"]["steps"] == {"manual": ["evaluate", "register", "train"]}


def test_cli_plan_bad_config_exits_2_without_traceback():
    proc = _cli("plan", "maturity=7")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "level must be an integer from 0 to 4, got '7'" in proc.stderr


def test_the_plan_reports_the_flavors_that_run_not_the_stacks_labels():
    """The stack labels its components per target (mlflow-sqlite); a recipe that picks another flavor is planned
    as that flavor, and the Plan's components are the config's chosen flavors: what `up` builds."""
    plan = _plan("stack=reasonable-scale", "tracking=neptune", "monitoring=none", "maturity=3")
    infra = {c.name: c.flavor for c in plan.infrastructure}
    assert infra["tracking"] == "neptune" and infra["serving"] == "triton-python-onnxruntime"
    assert plan.components["tracker"] == "neptune" and plan.components["monitor"] == "none"
    assert _plan("stack=reasonable-scale", "maturity=1").components["tracker"] == "mlflow"
    assert {c.name: c.flavor for c in _plan("stack=reasonable-scale", "maturity=1").infrastructure}["tracking"] \
        == "mlflow-sqlite"
