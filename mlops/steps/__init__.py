"""The steps: plain functions over a Stack and typed artifacts (mlops.artifacts); the flows wrap them."""

from mlops.steps._steps import (
    batch_profiler,
    check_frame,
    deploy,
    end_open_runs,
    evaluate,
    export,
    gate,
    hold_to_floors,
    ingest,
    judge,
    latest_snapshot,
    leave_open_runs,
    log_run,
    monitor,
    open_runs,
    promote,
    record_snapshot,
    reference_profile,
    register,
    reopen_run,
    require_finite,
    require,
    rollback,
    train,
    validate,
    validated_snapshots,
)

__all__ = sorted([
    "batch_profiler", "check_frame", "deploy", "end_open_runs", "evaluate", "export", "gate", "hold_to_floors", "ingest", "judge", "latest_snapshot",
    "leave_open_runs", "log_run", "monitor", "open_runs", "promote", "record_snapshot", "reference_profile", "register", "reopen_run",
    "require", "require_finite", "rollback", "train", "validate", "validated_snapshots",
])
