"""Maturity levels as pure functions: each takes the Plan of the level below and adds to it.

    level 0  no MLOps          every step is a CLI command a person runs
    level 1  data prep         a scheduled deployment ingests + validates new data, emits mlops.dataset.validated
    level 2  training          an automation on that event runs the training deployment (ends registered)
    level 3  deployment        the training deployment also runs the gate; a passing candidate is deployed
    level 4  monitoring        a scheduled deployment judges served-traffic windows; drift retrains (then level 3's gate)
"""

from __future__ import annotations

from collections.abc import Callable

from mlops._names import (
    DATA_FLOW,
    DATASET_VALIDATED,
    DRIFT_DETECTED,
    GATE_PASSED,
    GATE_REJECTED,
    MODEL_DEPLOYED,
    MODEL_REGISTERED,
    MONITOR_FLOW,
    MONITOR_STEP,
    STEPS,
    TRAFFIC_QUARANTINED,
    TRAIN_FLOW,
    data_deployment,
    dataset_resource,
    model_resource,
    monitor_deployment,
    train_deployment,
)
from mlops.plan._model import Automation, Component, Deployment, Gate, Plan, Step
from mlops.recipe.schema import Config

# Which stack component (stacks/*.yaml `components:`) gives each infrastructure component its flavor.
_STACK_COMPONENT = {"store": "storage", "tracking": "tracker", "data_schedule": "orchestrator",
                    "training": "trainer", "orchestration": "orchestrator", "serving": "server",
                    "monitoring": "monitor"}


# Stack components that a flavor of the config selects: what runs is that flavor, whatever the stack's label.
_FLAVOR_SECTION = {"tracker": "tracking", "server": "serving", "monitor": "monitoring"}


def _component(cfg: Config, name: str) -> Component:
    """The infrastructure component and the flavor that runs it: the stack's label for this target (its
    variant, e.g. `mlflow-sqlite`) when it names the flavor the config chose, else the chosen flavor itself,
    so a recipe that picks `tracking=neptune` on a stack labelled for MLflow is planned as what runs."""
    stack_component = _STACK_COMPONENT[name]
    flavors = cfg.stack.components.get(stack_component)  # type: ignore[call-overload]
    label = (getattr(flavors, cfg.target.kind, None) if flavors is not None else None) or "none"
    if (section := _FLAVOR_SECTION.get(stack_component)) is not None:
        chosen = getattr(cfg, section).flavor
        if chosen == "none" or not (label == chosen or label.startswith(chosen + "-")):
            label = chosen
    return Component(name=name, flavor=label)


def _automate(plan: Plan, names: tuple[str, ...], deployment: str) -> tuple[Step, ...]:
    return tuple(s.model_copy(update={"automated": True, "run_by": f"deployment:{deployment}", "command": None})
                 if s.name in names else s for s in plan.steps)


def level_0(plan: Plan, cfg: Config) -> Plan:
    """No MLOps: storage, tracking and the services; a person runs every step."""
    manual = {"export": f"mlops deploy {cfg.name}@<version>", "deploy": f"mlops deploy {cfg.name}@<version>"}
    steps = tuple(Step(name=s, run_by="person", command=manual.get(s, f"mlops run {s} recipe={cfg.name}"))
                  for s in STEPS if s != "gate")
    return plan.model_copy(update={
        "steps": steps,
        "infrastructure": (_component(cfg, "store"), _component(cfg, "tracking")),
        "services": ("prefect-server", cfg.serving.flavor),
    })


def level_1(plan: Plan, cfg: Config) -> Plan:
    """Data prep automated: a scheduled deployment ingests and validates new or changed data."""
    name = data_deployment(cfg.name)
    dep = Deployment(name=name, flow=DATA_FLOW, steps=("ingest", "validate"),
                     interval_s=cfg.maturity.data_interval_s, parameters={"trigger": "schedule"},
                     emits=(DATASET_VALIDATED,), on_overlap="skip")
    return plan.model_copy(update={
        "steps": _automate(plan, ("ingest", "validate"), name),
        "deployments": (*plan.deployments, dep),
        "infrastructure": (*plan.infrastructure, _component(cfg, "data_schedule")),
        "services": (*plan.services, "prefect-runner"),
        "events": (*plan.events, DATASET_VALIDATED),
    })


def level_2(plan: Plan, cfg: Config) -> Plan:
    """Training automated: a validated new dataset triggers training; promotion stays manual."""
    name = train_deployment(cfg.name)
    dep = Deployment(name=name, flow=TRAIN_FLOW, steps=("train", "evaluate", "register"),
                     parameters={"release": False}, emits=(MODEL_REGISTERED,))
    auto = Automation(name=f"{cfg.name}: train on new data", deployment=name, event=DATASET_VALIDATED,
                      resource=dataset_resource(cfg.name),
                      parameters={"snapshot": "{{ event.payload.snapshot }}", "trigger": "event:{{ event.event }}"})
    steps = _automate(plan, ("train", "evaluate", "register"), name)
    steps = tuple(s.model_copy(update={"command": f"mlops promote {cfg.name}@<version>"})
                  if s.name in ("export", "deploy") else s for s in steps)
    return plan.model_copy(update={
        "steps": steps,
        "deployments": (*plan.deployments, dep),
        "automations": (*plan.automations, auto),
        "infrastructure": (*plan.infrastructure, _component(cfg, "training"), _component(cfg, "orchestration")),
        "events": (*plan.events, MODEL_REGISTERED),
    })


def gate_spec(cfg: Config) -> Gate:
    """The recipe's gate (`maturity.gate`). Level 3+ judges every candidate with it against the champion; at
    every level, `up`'s own run holds a version to its absolute floors and ceilings before serving it."""
    metric, direction = cfg.gate_metric
    return Gate(name="champion", after="register", metric=metric, direction=direction,
                min_improvement=cfg.maturity.gate.min_improvement, floors=dict(cfg.maturity.gate.floors),
                ceilings=dict(cfg.maturity.gate.ceilings), on_pass=f"promote and deploy to {cfg.serving.flavor}",
                on_fail="mark the version rejected with the reasons; champion and served version unchanged")


def level_3(plan: Plan, cfg: Config) -> Plan:
    """Deployment automated: the training deployment gates the candidate and deploys it if it passes."""
    name = train_deployment(cfg.name)
    gate = gate_spec(cfg)
    deployments = tuple(
        d.model_copy(update={"steps": (*d.steps, "gate", "export", "deploy"), "parameters": {"release": True},
                             "emits": (*d.emits, GATE_PASSED, GATE_REJECTED, MODEL_DEPLOYED)})
        if d.name == name else d for d in plan.deployments)
    steps = list(plan.steps)
    steps.insert([s.name for s in steps].index("export"),
                 Step(name="gate", automated=True, run_by=f"deployment:{name}"))
    plan = plan.model_copy(update={"steps": tuple(steps)})
    return plan.model_copy(update={
        "steps": _automate(plan, ("export", "deploy"), name),
        "deployments": deployments,
        "gates": (*plan.gates, gate),
        "infrastructure": (*plan.infrastructure, _component(cfg, "serving")),
        "events": (*plan.events, GATE_PASSED, GATE_REJECTED, MODEL_DEPLOYED),
    })


def level_4(plan: Plan, cfg: Config) -> Plan:
    """Monitoring automated: a scheduled deployment judges each closed window of served traffic against the
    champion's reference profile; drift (from traffic that passes the data constraints) triggers the training
    deployment, which first takes the latest data through the validation gate, then level 3's gate decides."""
    name = monitor_deployment(cfg.name)
    dep = Deployment(name=name, flow=MONITOR_FLOW, steps=(MONITOR_STEP,), interval_s=cfg.monitoring.window_s,
                     parameters={"trigger": "schedule"}, emits=(DRIFT_DETECTED, TRAFFIC_QUARANTINED),
                     on_overlap="skip")
    auto = Automation(name=f"{cfg.name}: retrain on drift", deployment=train_deployment(cfg.name),
                      event=DRIFT_DETECTED, resource=model_resource(cfg.name),
                      parameters={"trigger": "event:{{ event.event }}", "refresh": True,
                                  "drift_window": "{{ event.payload.window }}"})
    return plan.model_copy(update={
        "steps": (*plan.steps, Step(name=MONITOR_STEP, automated=True, run_by=f"deployment:{name}")),
        "deployments": (*plan.deployments, dep),
        "automations": (*plan.automations, auto),
        "infrastructure": (*plan.infrastructure, _component(cfg, "monitoring")),
        "events": (*plan.events, DRIFT_DETECTED, TRAFFIC_QUARANTINED),
    })


LEVELS: tuple[Callable[[Plan, Config], Plan], ...] = (level_0, level_1, level_2, level_3, level_4)


def compile_plan(cfg: Config) -> Plan:
    """The Plan of `cfg` at its maturity level: level 0, then each level up to it, in order."""
    plan = Plan(recipe=cfg.name, stack=cfg.stack.name, target=cfg.target.kind, maturity=cfg.maturity.level,
                components=cfg.components)
    for level in LEVELS[: cfg.maturity.level + 1]:
        plan = level(plan, cfg)
    return plan
