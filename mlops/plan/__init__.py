"""What `mlops up` would do, computed without side effects (the maturity-levels issue grows this into the Plan)."""

from mlops.plan._plan import STEPS, build_plan, current_training_key

__all__ = sorted(["STEPS", "build_plan", "current_training_key"])
