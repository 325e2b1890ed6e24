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
    # The used columns' fingerprint without a copy of them: `up` asks this before its flow, in the same process
    # (bench/README.md, "bench: scale", third pass: the copy was `up`'s peak at 10M rows).
    fp = fingerprint(frame, [*cfg.data.features, cfg.data.target])
    del frame
    # model.init_from: champion puts the champion's version in the key (as `train` does, mlops.steps.training_data)
    return Stack(cfg, project, state_dir).warm_start(fp, training_key(cfg, fp))["key"]


def _incremental_ingest(cfg: Config, state_dir: Path) -> str:
    """What an incremental ingest (data.incremental, level 1+) reads now: past the latest chain's watermark."""
    import json

    index = Layout(state_dir).snapshot_index(cfg.name)
    entries = [d for d in (json.loads(index.read_text()) if index.is_file() else {}).values() if d.get("incremental")]
    assert cfg.data.incremental is not None
    column = cfg.data.incremental.column
    if not entries:
        return f"read every row (no snapshot yet: a new {column} watermark chain)"
    last = entries[-1]["incremental"]
    chain = [d for d in entries if d["incremental"]["chain"] == last["chain"]]
    return (f"read the rows with {column} > {last['watermark']} (chain {last['chain']}, {len(chain)} snapshot(s)); "
            "none: nothing is trained")


def build_plan(cfg: Config, project: Path, target: PlanTarget) -> dict[str, Any]:
    """The compiled Plan as JSON, with what `up` would do now on `target`: `services` and each step's `action`.

    With data.incremental at level 1+ the training data is the data.window over the snapshots once the new rows
    are read, so no training key can be told in advance: `training_key` is None and the steps say what they read
    and train on."""
    plan = compile_plan(cfg)
    services = target.planned_services()
    incremental = cfg.data.incremental is not None and cfg.maturity.level >= 1
    key = None if incremental else current_training_key(cfg, project, target.state_dir)
    existing = None if key is None else Stack(cfg, project, target.state_dir).model_store.find(cfg.name, key)
    steps = []
    for step in plan.to_json()["steps"]:
        name = step["name"]
        if existing is not None and name in ("train", "evaluate", "register"):
            action = f"reuse version {existing.version} (same config and data, key {key})"
        elif name == "ingest" and incremental:
            action = _incremental_ingest(cfg, target.state_dir)
        elif name == "train":
            c = cfg.compute
            nodes = f" x {c.num_nodes} nodes" if c.num_nodes > 1 else ""
            action = (f"train {cfg.model.flavor} {cfg.model.task} on {c.accelerator}, {c.devices} device(s){nodes}, "
                      f"strategy {c.strategy}")
            if incremental:
                window = cfg.data.window.model_dump(exclude_none=True) if cfg.data.window else "all"
                action += f" on data.window {window} of the chain's snapshots"
            if cfg.model.init_from != "none":
                action += f", warm-started from the {cfg.model.init_from} if there is one"
            action += " (key: told once the new rows are read)" if key is None else f" (key {key})"
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
