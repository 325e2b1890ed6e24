"""Prefect flows over the steps (mlops.steps). Importing a flow imports Prefect: set its env first.

One module per flow (`_up`, `_data`, `_train`, `_monitor`, `_step`; the tasks they share are in
`_pipeline`), loaded when first named here: Prefect builds a flow's parameter schema (the whole Config, ~0.07 s
each) when the flow is defined, and `mlops up` needs one flow, not five.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlops._names import MANUAL_STEPS, UP_STEPS

_MODULES = {"up_flow": "_up", "data_flow": "_data", "train_flow": "_train", "monitor_flow": "_monitor",
            "step_flow": "_step"}

__all__ = ["MANUAL_STEPS", "UP_STEPS", "data_flow", "in_this_process", "monitor_flow", "step_flow", "train_flow",
           "up_flow"]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(f"mlops.flows.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def in_this_process() -> Iterator[None]:
    """Around a flow the CLI runs in its own process (`up`, `data refresh`, `run <step>`): no heartbeats.

    Prefect 3.8 gives every flow run a heartbeat thread (every 180 s by default) that sleeps in 1 s steps, and
    joins it when the run ends: up to 1 s more on every command (py-spy: `_send_heartbeats` → `Thread.join`).
    Heartbeats exist to find runs whose process died; for these runs `mlops up` does that itself (orphaned
    runs of the project are marked Crashed: mlops.targets._recover). The runner's runs keep Prefect's setting.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
