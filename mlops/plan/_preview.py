"""`mlops plan`'s live part: the services `up` would start or reuse and the steps it would run or reuse.

Read-only: it probes health endpoints, reads the data to fingerprint it and looks the training key
up in the registry, but starts and writes nothing. The compiled Plan itself is pure (golden-tested).
The target comes from the caller (`mlops.targets.get_target`): targets sit above the plan and run it,
so the plan asks for the role (:class:`PlanTarget`), never for a target module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from mlops._layout import Layout
from mlops.plan._levels import compile_plan
from mlops.recipe.keys import training_key
from mlops.recipe.schema import Config
from mlops.stack import Stack


class PlanTarget(Protocol):
    """What the preview needs of a target (LocalTarget and AwsTarget have it): its state folder and services."""

    state_dir: Path

    def planned_services(self) -> list[dict[str, Any]]:
        """Each service `up` would start or reuse: name, action, url (read-only probes)."""
        ...


def current_training_key(cfg: Config, project: Path, state_dir: Path) -> str:
    """The key `up` would train under now: config that shapes the model + the data's fingerprint (read-only)."""
    # heavy: pandas (and scikit-learn for a bundled dataset) on first use, not on `import mlops.plan`.
    from mlops.data import fingerprint, read_frame

    frame = read_frame(cfg.data, project, cache_dir=Layout(state_dir).cache)
    return training_key(cfg, fingerprint(frame[[*cfg.data.features, cfg.data.target]]))


def build_plan(cfg: Config, project: Path, target: PlanTarget) -> dict[str, Any]:
    """The compiled Plan as JSON, with what `up` would do now on `target`: `services` and each step's `action`."""
    plan = compile_plan(cfg)
    services = target.planned_services()
    key = current_training_key(cfg, project, target.state_dir)
    existing = Stack(cfg, project, target.state_dir).model_store.find(cfg.name, key)
    steps = []
    for step in plan.to_json()["steps"]:
        name = step["name"]
        if existing is not None and name in ("train", "evaluate", "register"):
            action = f"reuse version {existing.version} (same config and data, key {key})"
        elif name == "train":
            c = cfg.compute
            nodes = f" x {c.num_nodes} nodes" if c.num_nodes > 1 else ""
            action = (f"train {cfg.model.flavor} {cfg.model.task} on {c.accelerator}, {c.devices} device(s){nodes}, "
                      f"strategy {c.strategy} (key {key})")
        elif name == "deploy":
            action = f"load on {cfg.serving.flavor} at {services[1]['url']} as {cfg.serving.model_name}"
        elif name == "gate":
            metric, direction = cfg.gate_metric
            action = f"compare {metric} ({direction}) with the champion"
        else:
            action = "run"
        steps.append({**step, "action": action})
    return {**plan.to_json(), "state_dir": str(target.state_dir), "training_key": key, "services": services,
            "steps": steps, "digest": plan.digest()}
