"""Recipes: Hydra composes, pydantic validates; see README.md in this folder."""

from mlops.recipe._batch import load_many
from mlops.recipe._loader import GROUPS, load, project_dir, resolved_yaml
from mlops.recipe.schema import Config

__all__ = sorted(["GROUPS", "Config", "load", "load_many", "project_dir", "resolved_yaml"])
