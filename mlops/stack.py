"""The Stack: the components a validated Config selects, each built from its registered flavor.

Flows, targets, the plan preview and the CLI ask the stack for a role ("the tracker", "the data source"),
never for a tool by name::

    stack = Stack(cfg, project)
    frame = stack.data_source.read(project)
    tracker = stack.tracker()                 # one per run
    store = stack.model_store                 # versions and aliases
    server = stack.server                     # start, export, deploy, predict (mlops/serving/_server_api.py)
    stack.components                          # {"data_source": "file", "tracker": "mlflow", ...}

Each component's implementation is imported on first use (mlops.flavors), so building a Stack is cheap.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops._layout import Layout
from mlops.flavors import get
from mlops.recipe.schema import Config

if TYPE_CHECKING:
    from mlops.data import DataSource
    from mlops.monitoring import Profiler
    from mlops.registry import ModelStore
    from mlops.serving._server_api import ModelServer
    from mlops.tracking import Tracker


class Stack:
    def __init__(self, cfg: Config, project: Path | str, state_dir: Path | str | None = None):
        self.cfg = cfg
        self.project = Path(project).resolve()
        self.state_dir = Path(state_dir).resolve() if state_dir is not None else \
            (self.project / cfg.target.state_dir).resolve()

    @property
    def components(self) -> dict[str, str]:
        """Each component kind and the flavor the config chose for it: what runs."""
        return self.cfg.components

    def flavor(self, kind: str) -> Any:
        return get(kind, self.components[kind])

    def implementation_modules(self) -> list[str]:
        """The modules of the chosen flavors' implementations, and those each declares it imports on first use
        (`Flavor.warm`): what a process that will run this stack's steps can import ahead (mlops.steps._warm),
        named without importing anything now."""
        flavors = [self.flavor(kind) for kind in self.components]
        return list(dict.fromkeys([m for f in flavors for m in (f.implementation.partition(":")[0], *f.warm)]))

    @cached_property
    def data_source(self) -> DataSource:
        return self.flavor("data_source").load()(self.cfg.data)

    def tracker(self) -> Tracker:
        """A new tracker (one run each)."""
        return self.flavor("tracker").load()(self.cfg.tracking, self.state_dir)

    @cached_property
    def monitor(self) -> Profiler | None:
        """The profiler, or None when the recipe has no monitoring."""
        return self.flavor("monitor").load()()

    @cached_property
    def model_store(self) -> ModelStore:
        return self.flavor("model_store").load()(self.layout.registry)

    @cached_property
    def server(self) -> ModelServer:
        return self.flavor("server").load()(self.cfg, self.state_dir)

    @cached_property
    def layout(self) -> Layout:
        return Layout(self.state_dir)

    @cached_property
    def target(self) -> Any:
        return self.flavor("target").load()(self.cfg, self.project)

    def warm_start(self, fingerprint: str, key: str) -> dict[str, Any]:
        """With `model.init_from: champion`, what training on data ``fingerprint`` starts from and its key:
        ``{"warm_from": <version or None>, "key"}``. The champion's version joins the key, unless the champion
        is what this config already trained on this data (then its own start and key: nothing is retrained).
        ``key`` is the cold key, kept when there is no champion."""
        from mlops.recipe.keys import training_key

        if self.cfg.model.init_from == "none":  # nothing to look up: no registry read for a cold start
            return {"warm_from": None, "key": key}
        store, name = self.model_store, self.cfg.name
        champion = store.aliases(name).get("champion")
        if champion is None:
            return {"warm_from": None, "key": key}
        lineage = store.get(name, champion).lineage
        own = (lineage.get("warm_start") or {}).get("from_version")
        if lineage.get("data_fingerprint") == fingerprint and \
                lineage.get("key") == training_key(self.cfg, fingerprint, own):
            return {"warm_from": own, "key": lineage["key"]}
        return {"warm_from": champion, "key": training_key(self.cfg, fingerprint, champion)}


__all__ = ["Stack"]
