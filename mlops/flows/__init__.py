"""Prefect flows compiled from the validated config. Importing this imports Prefect: set its env first."""

from mlops.flows._pipeline import (
    MANUAL_STEPS,
    data_flow,
    monitor_flow,
    step_flow,
    train_flow,
    up_flow,
    validated_snapshots,
)
from mlops.recipe.keys import config_hash, training_key

__all__ = sorted(["MANUAL_STEPS", "config_hash", "data_flow", "monitor_flow", "step_flow", "train_flow",
                  "training_key", "up_flow", "validated_snapshots"])
