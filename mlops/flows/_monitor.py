"""The `mlops-monitor` flow (level 4, scheduled): judge closed traffic windows, quarantine garbage, emit
mlops.drift.detected.
"""

from __future__ import annotations

from typing import Any

from mlops._names import MONITOR_FLOW, MONITOR_STEP
from mlops.flows._pipeline import _recorded, flow, monitor, report
from mlops.recipe.schema import Config
from mlops.stack import Stack


@flow(name=MONITOR_FLOW, log_prints=False)
def monitor_flow(config: Config, project: str, state_dir: str, trigger: str = "schedule") -> dict[str, Any]:
    """Level 4: judge each closed window of the champion's served traffic, once (see mlops.steps.monitor)."""
    stack = Stack(config, project, state_dir)
    report.started(stack, trigger)
    with _recorded(stack, MONITOR_FLOW, trigger, [MONITOR_STEP]):
        return monitor(stack, trigger)
