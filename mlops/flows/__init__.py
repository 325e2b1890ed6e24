"""Prefect flows compiled from the validated config. Importing this imports Prefect: set its env first."""

from mlops.flows._pipeline import up_flow
from mlops.recipe.keys import config_hash, training_key

__all__ = sorted(["config_hash", "training_key", "up_flow"])
