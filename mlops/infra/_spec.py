"""What a Pulumi program is given: the pure, Pulumi-free input of every stack program.

The Plan decides the components and the scheduled deployments: the caller (mlops.targets, above the
Plan) compiles it and builds the spec from `plan.infrastructure` and `plan.deployments`, so no level
table lives here. The stack's parameters decide how each component is built. Nothing here imports Pulumi.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mlops._names import deployment_ref
from mlops.errors import ConfigError, Problem
from mlops.recipe.schema import Config, StackParameters


@dataclass(frozen=True)
class Schedule:
    """A Plan deployment the cloud starts on a schedule: `prefect deployment run <flow>/<deployment>`.

    `component` is the infrastructure component that owns the schedule (`data_schedule`, `monitoring`);
    `emits` are the events the deployment emits (the Plan's `Deployment.emits`), for the rules that route them.
    """

    component: str
    flow: str
    deployment: str
    expression: str  # EventBridge syntax, cron(...) or rate(...); the k8s program converts it for a CronJob
    emits: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return deployment_ref(self.flow, self.deployment)

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "flow": self.flow, "deployment": self.deployment,
                "expression": self.expression, "emits": list(self.emits)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Schedule:
        return cls(component=d["component"], flow=d["flow"], deployment=d["deployment"],
                   expression=d["expression"], emits=tuple(d.get("emits", ())))


@dataclass(frozen=True)
class InfraSpec:
    """The input of a stack program: everything it needs, nothing it doesn't."""

    name: str  # the recipe/model name: one Pulumi stack per recipe
    stack: str  # stack template name (stacks/<stack>.yaml)
    program: str  # registered Pulumi program, e.g. reasonable_scale
    level: int
    components: tuple[str, ...]  # the Plan's infrastructure components, in provisioning order
    params: StackParameters
    region: str
    model_name: str
    devices: int = 1
    num_nodes: int = 1
    schedules: tuple[Schedule, ...] = ()  # the Plan's scheduled deployments

    @property
    def prefix(self) -> str:
        # S3 bucket and Kubernetes object names allow neither `_` nor capitals.
        raw = self.params.name_prefix or f"mlops-{self.name}"
        return re.sub(r"[^a-z0-9-]", "-", raw.lower())[:40].rstrip("-")

    @property
    def tags(self) -> dict[str, str]:
        return {"mlops:recipe": self.name, "mlops:stack": self.stack,
                "managed-by": "pulumi", **self.params.tags}

    def has(self, component: str) -> bool:
        return component in self.components

    def schedule(self, component: str) -> Schedule:
        """The scheduled deployment `component` runs; the Plan that gives the component gives its deployment."""
        for s in self.schedules:
            if s.component == component:
                return s
        raise ValueError(f"the spec of {self.name!r} has component {component!r} but no scheduled deployment for "
                         f"it (schedules: {[s.component for s in self.schedules]}); build the spec from the Plan")

    @classmethod
    def build(cls, cfg: Config, level: int, components: Iterable[str], schedules: Iterable[Schedule] = ()) -> InfraSpec:
        """The spec of `cfg` at `level`, with the components and schedules of that level's Plan."""
        if cfg.stack.pulumi_project is None:
            raise ConfigError([Problem(
                "stack.pulumi_project", f"is null in stack {cfg.stack.name!r}: it provisions nothing, so there is no "
                "Pulumi program, spec or `mlops:spec` config for it",
                f"stack={cfg.stack.name}", "`mlops stack list` shows the stacks with a Pulumi project, e.g. "
                "stack=reasonable-scale")])
        p = cfg.stack.parameters
        return cls(
            name=cfg.name, stack=cfg.stack.name, program=cfg.stack.pulumi_project, level=level,
            components=tuple(components), params=p,
            region=p.region or cfg.target.region or "us-east-1", model_name=cfg.serving.model_name,
            devices=cfg.compute.devices if isinstance(cfg.compute.devices, int) else 1,
            num_nodes=cfg.compute.num_nodes, schedules=tuple(schedules),
        )

    # Standalone `pulumi up` reads the same spec from the stack's config (Pulumi.<stack>.yaml, `mlops:spec`),
    # as `mlops stack show <stack> --pulumi-config` prints it: components and schedules included, since only
    # the Plan knows them and the standalone program compiles none.
    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "stack": self.stack, "program": self.program, "level": self.level,
                "components": list(self.components), "schedules": [s.to_json() for s in self.schedules],
                "region": self.region, "model_name": self.model_name, "devices": self.devices,
                "num_nodes": self.num_nodes, "parameters": self.params.model_dump(mode="json", exclude_defaults=True)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> InfraSpec:
        d = json.loads(data) if isinstance(data, str) else dict(data)
        if "components" not in d:
            raise ConfigError([Problem(
                "mlops:spec.components", "is missing: the spec must list the components (and schedules) of the "
                "recipe's Plan", "Pulumi.<stack>.yaml", f"print a complete spec with `mlops stack show "
                f"{d.get('stack', d.get('program', '<stack>'))} recipe={d.get('name', '<recipe>')} "
                f"maturity={d.get('level', '<level>')} --pulumi-config`")])
        return cls(name=d["name"], stack=d.get("stack", d["program"]), program=d["program"],
                   level=int(d.get("level", 0)), components=tuple(d["components"]),
                   params=StackParameters.model_validate(d.get("parameters") or {}),
                   region=d.get("region") or "us-east-1", model_name=d.get("model_name", d["name"]),
                   devices=int(d.get("devices", 1)), num_nodes=int(d.get("num_nodes", 1)),
                   schedules=tuple(Schedule.from_json(s) for s in d.get("schedules", ())))
