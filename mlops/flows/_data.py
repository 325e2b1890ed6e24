"""The `mlops-data` flow (level 1+, scheduled; `mlops data refresh`): ingest → validate → snapshot, and the
mlops.dataset.validated event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlops import steps
from mlops._names import DATA_FLOW, DATASET_QUARANTINED, DATASET_VALIDATED, dataset_resource
from mlops.errors import DataError
from mlops.flows._pipeline import _emit, _log_run, _nothing_new, _recorded, flow, ingest, report, validate
from mlops.recipe.schema import Config
from mlops.stack import Stack


@flow(name=DATA_FLOW, log_prints=False)
def data_flow(config: Config, project: str, state_dir: str, trigger: str = "manual", full: bool = False
              ) -> dict[str, Any]:
    """Level 1+: look at the data (see _data); a run that fails is in the history with its reason."""
    with _recorded(Stack(config, project, state_dir), DATA_FLOW, trigger, ["ingest", "validate"]):
        return _data(config, project, state_dir, trigger, full)


def _data(config: Config, project: str, state_dir: str, trigger: str, full: bool = False) -> dict[str, Any]:
    """Level 1+: look at the data; new or changed data is validated, recorded and announced. With
    data.incremental only the rows past the watermark are read; `full` re-reads everything, a new chain."""
    from mlops.monitoring._batch import quarantined

    stack = Stack(config, project, state_dir)
    report.started(stack, trigger)
    snapshot = ingest(stack, full)
    if snapshot.incremental.get("new_rows") == 0:
        _log_run(stack, DATA_FLOW, trigger, steps=["ingest"], outcome="no new rows", reasons=[_nothing_new(snapshot)])
        return {"new": False, "snapshot": snapshot.path, "new_rows": 0, "message": _nothing_new(snapshot)}
    if snapshot.fingerprint in steps.validated_snapshots(stack) and not full:
        return {"new": False, "snapshot": snapshot.path}
    if (where := quarantined(stack.state_dir, config.name, snapshot.fingerprint)) is not None:
        Path(snapshot.path).unlink(missing_ok=True)  # the same bad file, looked at again: reported once
        return {"new": False, "quarantined": str(where)}
    try:
        validate(stack, snapshot)
    except DataError as exc:
        where = quarantined(stack.state_dir, config.name, snapshot.fingerprint)
        _log_run(stack, DATA_FLOW, trigger, steps=["ingest", "validate"], outcome="quarantined",
                 reasons=[str(exc)], quarantine=str(where))
        exc.mlops_recorded = True  # type: ignore[attr-defined]
        _emit(DATASET_QUARANTINED, dataset_resource(config.name), {"fingerprint": snapshot.fingerprint,
                                                             "quarantine": str(where)})
        raise
    if not steps.record_snapshot(stack, snapshot, trigger):
        return {"new": False, "snapshot": snapshot.path}
    _emit(DATASET_VALIDATED, dataset_resource(config.name), {"snapshot": snapshot.path,
                                                       "fingerprint": snapshot.fingerprint, "rows": snapshot.rows})
    _log_run(stack, DATA_FLOW, trigger, steps=["ingest", "validate"], outcome="new snapshot",
             snapshot=snapshot.path, rows=snapshot.rows, **({"incremental": snapshot.incremental}
                                                           if snapshot.incremental else {}))
    return {"new": True, "snapshot": snapshot.path, "fingerprint": snapshot.fingerprint, "rows": snapshot.rows,
            **({"incremental": snapshot.incremental} if snapshot.incremental else {})}
