"""Prefect flows over the steps (mlops.steps). Importing this imports Prefect: set its env first."""

from mlops.flows._pipeline import MANUAL_STEPS, UP_STEPS, data_flow, monitor_flow, step_flow, train_flow, up_flow

__all__ = sorted(["MANUAL_STEPS", "UP_STEPS", "data_flow", "monitor_flow", "step_flow", "train_flow", "up_flow"])
