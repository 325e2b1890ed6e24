"""The model-store interface: immutable, numbered versions with lineage, and movable aliases (champion).

A model-store flavor is constructed as ``Impl(root)`` with the folder the layout gives it
(``<state_dir>/registry``); the built-in `local` flavor is :class:`mlops.registry.Registry`.

Python::

    store = stack.model_store
    mv = store.register("churn", {"model.ckpt": ckpt, "history.json": hist}, lineage)   # -> ModelVersion
    store.promote("churn", mv.version, by="flow:run-42")                                 # champion alias
    store.rollback("churn")                                                              # (from, to)

YAML::

    registry:
      flavor: local           # conf/registry/local.yaml; a plugin's flavor: conf/registry/<name>.yaml

Invariants every flavor keeps: a version never changes once registered (a second register with the same
lineage `key` returns the existing version), a reader never sees half a version, and version numbers are
allocated under a lock, so two registrations at once get two numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mlops.registry._registry import ModelVersion


class ModelStore(Protocol):
    def register(self, model: str, files: dict[str, Path], lineage: dict[str, Any]) -> ModelVersion: ...

    def get(self, model: str, ref: int | str) -> ModelVersion: ...

    def find(self, model: str, key: str) -> ModelVersion | None: ...

    def versions(self, model: str) -> list[ModelVersion]: ...

    def verify(self, mv: ModelVersion) -> None: ...

    def aliases(self, model: str) -> dict[str, int]: ...

    def statuses(self, model: str) -> dict[int, dict[str, Any]]: ...

    def set_status(self, model: str, version: int, status: str, reasons: list[str] | tuple[str, ...] = ()) -> None: ...

    def champions(self, model: str) -> list[dict[str, Any]]: ...

    def promote(self, model: str, version: int, by: str) -> bool: ...

    def rollback(self, model: str) -> tuple[int, int]: ...
