"""The Plan: what a recipe at a maturity level sets up, as immutable, JSON-serialisable data.

:func:`compile_plan` turns a validated Config into a Plan by applying the level functions in
order (`mlops.plan._levels`): level N is level N-1 plus what N automates. Prefect code
(`mlops.targets._runner`) and Pulumi code read the Plan, never the raw recipe.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Frozen):
    """One step of the pipeline: who runs it at this level."""

    name: str
    automated: bool = False
    run_by: str = Field(description="`person` (a CLI command) or `deployment:<name>`.")
    command: str | None = Field(None, description="How a person runs it when it is manual.")


class Deployment(_Frozen):
    """A Prefect deployment served by the project's runner (`serve()`), one flow each."""

    name: str
    flow: str = Field(description="The Prefect flow's name (mlops.flows).")
    steps: tuple[str, ...]
    interval_s: float | None = Field(None, description="Interval schedule; None: runs only when triggered.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    emits: tuple[str, ...] = ()
    on_overlap: Literal["skip", "queue"] = Field(
        "queue", description="One run at a time (a Prefect deployment concurrency limit of 1). What happens to a "
        "run that comes due while one is running: `skip` cancels it (a poll that would look at the same data), "
        "`queue` waits (an event that must not be lost).")


class Automation(_Frozen):
    """A Prefect automation: a DeploymentEventTrigger that runs `deployment` when `event` occurs."""

    name: str
    deployment: str
    event: str
    resource: str = Field(description="prefect.resource.id the event must match.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Strings are templated from the event.")


class Gate(_Frozen):
    """Level 3: what a candidate must satisfy to replace the champion."""

    name: str
    after: str
    metric: str
    direction: Literal["maximize", "minimize"]
    min_improvement: float
    floors: dict[str, float] = Field(default_factory=dict)
    ceilings: dict[str, float] = Field(default_factory=dict)
    on_pass: str
    on_fail: str


class Component(_Frozen):
    """An infrastructure component and the flavor the stack gives it on this target."""

    name: str
    flavor: str


class Plan(_Frozen):
    recipe: str
    stack: str
    target: str
    maturity: int
    steps: tuple[Step, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    automations: tuple[Automation, ...] = ()
    gates: tuple[Gate, ...] = ()
    infrastructure: tuple[Component, ...] = ()
    components: dict[str, str] = Field(default_factory=dict, description="Each component kind and the flavor "
                                       "that runs it (mlops.flavors), from the config: what `up` builds the stack of.")
    services: tuple[str, ...] = Field((), description="Background processes `up` starts on target=local.")
    events: tuple[str, ...] = Field((), description="Prefect events the deployments emit.")
    initial_run: bool = Field(True, description="`up` runs the whole pipeline once when nothing is served, "
                              "so every level starts with a champion.")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """Identifies the Plan: the runner is restarted when it changes."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def deployment(self, name: str) -> Deployment:
        return next(d for d in self.deployments if d.name == name)
