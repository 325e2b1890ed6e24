"""What the steps hand each other: frozen, typed artifacts (no ``dict[str, Any]`` between steps).

    ingest    -> DatasetSnapshot        validate(DatasetSnapshot) -> ValidatedData
    train     -> TrainedModel           evaluate -> TestMetrics
    register  -> RegisteredVersion      gate -> GateVerdict
    export    -> ExportedModel          deploy -> ServedModel

They are plain pydantic models, so a Prefect task result, the level-0 work file (`mlops run <step>`) and a
test all hold the same thing, and `model_dump(mode="json")` is what a run log or `--json` prints.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Artifact(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetSnapshot(Artifact):
    """The rows one ingest read, as an immutable Parquet snapshot, and the training key they give."""

    fingerprint: str = Field(description="Content hash of the rows and columns used (sha256:...).")
    path: str = Field(description="The snapshot's Parquet file.")
    rows: int
    key: str = Field(description="The training key: config that shapes the model + this fingerprint.")
    repairs: dict[str, Any] = Field(default_factory=dict, description="What `data.checks.non_finite` (drop, clip) "
                                    "did to the rows read before the snapshot was written; empty if nothing.")
    incremental: dict[str, Any] = Field(default_factory=dict, description="`data.incremental`: column, watermark "
                                        "(the largest value read), after (the watermark it read past; None for a "
                                        "full read), chain (its full read's id), new_rows (0: nothing new).")
    window: dict[str, Any] = Field(default_factory=dict, description="A training set over incremental snapshots: "
                                   "the rule (`data.window`) and the snapshots that went in (ids + watermarks).")
    warm_from: int | None = Field(None, description="`model.init_from: champion`: the version whose weights the "
                                  "training starts from (part of the training key).")


class ValidatedData(Artifact):
    """A snapshot that passed the data gate (the recipe's checks and the constraints)."""

    snapshot: DatasetSnapshot
    rows: int
    null_fractions: dict[str, float] = Field(default_factory=dict)


class TrainedModel(Artifact):
    """A fitted checkpoint, its validation metrics and the tracking run it was logged to."""

    dir: str
    checkpoint: str
    val_metrics: dict[str, float]
    epochs: int
    tracking_run_id: str


class TestMetrics(Artifact):
    """The test split's metrics (test_acc, test_f1, test_auc, test_loss, or test_rmse, test_mae, test_r2, ...)."""

    __test__ = False  # not a pytest class
    values: dict[str, float]


class RegisteredVersion(Artifact):
    """A model version in the model store. `new`: registered by this run (False: the same training key was
    registered before and is reused)."""

    model: str
    version: int
    path: str
    new: bool = True


class GateVerdict(Artifact):
    """The level-3 gate's decision on a candidate, with every failed condition as a reason."""

    passed: bool
    reasons: list[str] = Field(default_factory=list)
    metric: str
    candidate: float | None = None
    champion: float | None = None
    champion_version: int | None = None


class ExportedModel(Artifact):
    """A version exported for serving: what the server flavor wrote into `dir`. An ONNX server (triton) writes
    model.onnx, its signature and the stock server repository beside it; a flavor that serves another format
    (the checkpoint itself) leaves `onnx` and `signature` None."""

    model: str
    version: int
    dir: str
    onnx: str | None = None
    signature: dict[str, Any] | None = None
    stock_repository: str | None = None


class ServedModel(Artifact):
    """What the model server answers with now."""

    model: str
    champion: int
    previous: int | None = None
    loaded: list[int] = Field(default_factory=list)
    endpoint: str
    url: str


__all__ = sorted(["Artifact", "DatasetSnapshot", "ExportedModel", "GateVerdict", "RegisteredVersion", "ServedModel",
                  "TestMetrics", "TrainedModel", "ValidatedData"])
