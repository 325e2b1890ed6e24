"""Experiment tracking: one run per training, in the backend the recipe names.

``make_tracker(cfg.tracking, state_dir)`` returns a :class:`Tracker`; the
backends (MLflow, Neptune, or an installed plugin's flavor) are imported only when a tracker of theirs is made.
"""

from mlops.tracking._base import RunStatus, Tracker, flatten_params, make_tracker

__all__ = ["RunStatus", "Tracker", "flatten_params", "make_tracker"]
