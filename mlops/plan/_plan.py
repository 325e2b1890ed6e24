"""`mlops plan`: the services `up` would start or reuse and the steps it would run or skip.

Read-only: it probes health endpoints, reads the data to fingerprint it and
looks the training key up in the registry, but starts and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlops.recipe.schema import Config

STEPS = ("ingest", "validate", "train", "evaluate", "register", "export", "deploy")


def current_training_key(cfg: Config, project: Path, state_dir: Path) -> str:
    """The key `up` would train under now: config that shapes the model + the data's fingerprint (read-only)."""
    from mlops.data import fingerprint, read_frame
    from mlops.recipe.keys import training_key

    frame = read_frame(cfg.data, project, cache_dir=state_dir / "cache")
    return training_key(cfg, fingerprint(frame[[*cfg.data.features, cfg.data.target]]))


def build_plan(cfg: Config, project: Path) -> dict[str, Any]:
    from mlops.registry import Registry
    from mlops.targets import get_target

    target = get_target(cfg, project)
    services = target.planned_services()
    key = current_training_key(cfg, project, target.state_dir)
    existing = Registry(target.state_dir / "registry").find(cfg.name, key)
    steps = []
    for name in STEPS:
        if existing is not None and name in ("train", "evaluate", "register"):
            action = f"reuse version {existing.version} (same config and data, key {key})"
        elif name == "train":
            action = f"train {cfg.model.flavor} {cfg.model.task} on {cfg.compute.accelerator} (key {key})"
        elif name == "deploy":
            action = f"load on Triton at {services[-1]['url']} as {cfg.serving.model_name}"
        else:
            action = "run"
        steps.append({"name": name, "action": action, "automated": True})
    return {
        "recipe": cfg.name,
        "stack": cfg.stack.name,
        "target": cfg.target.kind,
        "maturity": cfg.maturity.level,
        "state_dir": str(target.state_dir),
        "training_key": key,
        "services": services,
        "steps": steps,
        "components": {k: getattr(v, cfg.target.kind) for k, v in cfg.stack.components.items()},
    }
