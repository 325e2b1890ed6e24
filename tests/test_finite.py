"""Garbage in never becomes a served model (issue 16, first half): non-finite values and values beyond float32
stop at the data gate (or are repaired when the recipe says so), training and register refuse non-finite
metrics, predictions refuse non-finite rows, monitoring quarantines and skips poisoned windows, and
`mlops validate` is the pipeline's own gate. Steps with real objects and the `inprocess` server; the CLI
in process through its one error path (`main()`), and once in a subprocess.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _traffic import traffic

from _inprocess_server import inprocess_stack

from mlops import steps
from mlops.artifacts import DatasetSnapshot, TestMetrics, TrainedModel
from mlops.errors import DataError, MlopsError, PredictError
from mlops.features import FLOAT32_MAX, bad_values, repair
from mlops.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
EXTREMES = [np.inf, -np.inf, 1e39, -1e308, 3.5e38]




_stack = inprocess_stack  # the churn recipe on the in-process server, state under tmp_path


def _poison(churn: pd.DataFrame, cells: dict[tuple[int, str], float]) -> pd.DataFrame:
    bad = churn.copy()
    for col in {c for _r, c in cells}:
        bad[col] = bad[col].astype(float)
    for (row, col), value in cells.items():
        bad.loc[row, col] = value
    return bad


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`mlops <args>` in this process, through main()'s one error path: (exit code, stdout, stderr)."""
    from mlops.cli import main

    monkeypatch.setattr(sys, "argv", ["mlops", "-C", str(ROOT), *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


# ---------------------------------------------------------------- what "unusable" means
def test_bad_values_counts_inf_and_float32_overflow_per_column_and_leaves_nan_to_the_null_checks():
    frame = pd.DataFrame({"a": [1.0, np.inf, np.nan, -1e308, 2.0], "b": [3.4e38, 1.0, 2.0, 3.0, 4.0],
                          "c": ["x", "1e39", "y", "z", "w"]})
    found = {b.column: b for b in bad_values(frame, ["a", "b", "c"])}
    assert sorted(found) == ["a", "c"]  # 3.4e38 fits float32; NaN is a missing value; "1e39" is a number
    assert found["a"].count == 2 and found["a"].rows == [1, 3]
    assert "row 1: inf" in found["a"].render() and "row 3: -1e+308" in found["a"].render()

    dropped, _ = repair(frame, ["a", "b"], "drop")
    assert len(dropped) == 3 and np.isfinite(dropped["a"].dropna()).all()
    clipped, _ = repair(frame, ["a", "b"], "clip")
    assert clipped["a"].tolist()[:2] == [1.0, 2.0] and clipped["a"].iloc[3] == 1.0  # the column's own extremes
    assert math.isnan(clipped["a"].iloc[2])  # missing stays missing


# ---------------------------------------------------------------- the data gate
def test_validate_rejects_non_finite_values_naming_column_rows_and_the_setting(tmp_path, churn, inprocess_server):
    (tmp_path / "data").mkdir()
    stack = _stack(tmp_path, f"data.path={tmp_path / 'data/churn.csv'}", "monitoring=none")
    _poison(churn, {(3, "monthly_charges"): np.inf, (7, "tenure_months"): -1e308,
                    (9, "tenure_months"): 1e39}).to_csv(tmp_path / "data/churn.csv", index=False)
    snapshot = steps.ingest(stack)
    with pytest.raises(DataError) as err:
        steps.validate(stack, snapshot)
    message = str(err.value)
    assert "column 'monthly_charges' has 1 non-finite or out-of-float32-range value(s) (row 3: inf)" in message
    assert "column 'tenure_months' has 2 " in message and "row 7: -1e+308" in message and "row 9: 1e+39" in message
    assert "data.checks.non_finite=reject" in message and "quarantined" in message
    assert steps.validated_snapshots(stack) == {}


@pytest.mark.parametrize("policy", ["drop", "clip"])
def test_drop_and_clip_repair_before_the_snapshot_and_the_lineage_says_so(tmp_path, churn, policy,
                                                                         inprocess_server):
    (tmp_path / "data").mkdir()
    stack = _stack(tmp_path, f"data.path={tmp_path / 'data/churn.csv'}", f"data.checks.non_finite={policy}",
                   "model.max_epochs=1", "monitoring=none")
    _poison(churn, {(3, "monthly_charges"): np.inf, (7, "tenure_months"): -1e308}).to_csv(
        tmp_path / "data/churn.csv", index=False)
    snapshot = steps.ingest(stack)
    stored = pd.read_parquet(snapshot.path)
    assert bad_values(stored, stack.cfg.data.numeric) == []
    assert len(stored) == (len(churn) - 2 if policy == "drop" else len(churn))
    assert snapshot.repairs["policy"] == policy and snapshot.repairs["rows_after"] == len(stored)
    assert {c["column"]: c["rows"] for c in snapshot.repairs["columns"]} == {"monthly_charges": [3],
                                                                             "tenure_months": [7]}
    if policy == "clip":
        assert stored.loc[3, "monthly_charges"] == churn["monthly_charges"].drop(3).max()
        return
    steps.validate(stack, snapshot)
    steps.record_snapshot(stack, snapshot, "test")
    assert steps.latest_snapshot(stack).repairs == snapshot.repairs  # level 2 trains from the index
    try:
        trained = steps.train(stack, snapshot)
        version = steps.register(stack, snapshot, trained, steps.evaluate(stack, snapshot, trained))
    finally:
        steps.end_open_runs("FAILED")
    assert stack.model_store.get("churn", version.version).lineage["data_repairs"] == snapshot.repairs


# ---------------------------------------------------------------- training and register
def test_training_stops_with_an_error_naming_the_epoch_and_metric_when_the_loss_is_nan(tmp_path, inprocess_server):
    stack = _stack(tmp_path, "model.max_epochs=3", "monitoring=none")
    # model_copy skips validation: an lr no settings bound would allow, to make the loss overflow for sure.
    cfg = stack.cfg.model_copy(update={"model": stack.cfg.model.model_copy(update={"lr": 1e30})})
    stack = Stack(cfg, ROOT)
    snapshot = steps.ingest(stack)
    try:
        with pytest.raises(MlopsError, match=r"training stopped at epoch 0: .*loss=nan \(not finite\)"):
            steps.train(stack, snapshot)
    finally:
        steps.end_open_runs("FAILED")
    assert stack.model_store.versions("churn") == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_register_refuses_a_version_with_a_non_finite_metric(tmp_path, bad, inprocess_server):
    stack = _stack(tmp_path)
    snapshot = DatasetSnapshot(fingerprint="sha256:x", path=str(tmp_path / "x.parquet"), rows=1, key="k" * 64)
    trained = TrainedModel(dir=str(tmp_path), checkpoint=str(tmp_path / "model.ckpt"), val_metrics={"val_loss": 0.5},
                           epochs=1, tracking_run_id="none")
    with pytest.raises(MlopsError, match=rf"non-finite metrics \(test_loss={bad}\); it is not registered"):
        steps.register(stack, snapshot, trained, TestMetrics(values={"test_acc": 0.9, "test_loss": bad}))
    assert stack.model_store.versions("churn") == []


def test_the_gate_rejects_a_nan_metric_that_no_floor_comparison_would_catch():
    from mlops.plan import Gate

    spec = Gate(name="gate", after="register", metric="test_acc", direction="maximize", min_improvement=0.0,
                floors={"test_auc": 0.7}, on_pass="deploy", on_fail="reject")
    verdict = steps.judge(spec, {"test_acc": 0.9, "test_auc": float("nan")}, None)
    assert not verdict.passed and verdict.reasons == ["test_auc=nan is not a finite number"]


# ---------------------------------------------------------------- at the edge
def test_predict_refuses_non_finite_rows_naming_row_and_column(tmp_path, churn, inprocess_server):
    from mlops.serving._client import validate

    signature = {"inputs": [{"name": "numeric", "datatype": "FP32", "columns": ["tenure_months", "monthly_charges"]},
                            {"name": "categorical", "datatype": "BYTES", "columns": ["contract"]}]}
    rows = _poison(churn.head(5), {(1, "monthly_charges"): np.inf, (4, "tenure_months"): 1e39})
    with pytest.raises(PredictError) as err:
        validate(signature, rows)
    message = str(err.value)
    assert "2 problems with the rows to predict" in message
    assert "column 'monthly_charges' has 1 non-finite or out-of-float32-range value(s) (row 1: inf)" in message
    assert "column 'tenure_months' has 1 " in message and "(row 4: 1e+39)" in message
    validate(signature, _poison(churn.head(5), {(1, "monthly_charges"): np.nan}))  # missing values are allowed


def test_the_served_model_answers_400_for_a_request_with_inf(monkeypatch):
    """The Triton python backend (model.py) under a stand-in for `triton_python_backend_utils`."""
    import types

    class TritonError(Exception):
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            super().__init__(message)
            self.code = code

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    pb = types.SimpleNamespace(TritonError=TritonError, Tensor=Tensor, InferenceResponse=InferenceResponse,
                               get_input_tensor_by_name=lambda request, name: request.get(name))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace())
    sys.modules.pop("mlops.serving._backend_model", None)
    from mlops.serving import _backend_model

    model = _backend_model.TritonPythonModel()
    model.inputs = [("numeric", "FP32", [2])]  # a tabular input: its column count past the batch
    model.columns = {"numeric": ["tenure_months", "monthly_charges"]}
    model.outputs = ["probabilities"]
    model.capture = None
    model.session = types.SimpleNamespace(run=lambda outputs, feed: [np.full((len(feed["numeric"]), 2), 0.5)])
    good = {"numeric": Tensor("numeric", np.array([[1.0, np.nan]], dtype=np.float32))}
    bad = {"numeric": Tensor("numeric", np.array([[1.0, 2.0], [3.0, np.inf]], dtype=np.float32))}
    ok, refused = model.execute([good, bad])
    assert ok.error is None and ok.output_tensors[0].array.shape == (1, 2)
    assert refused.error.code == TritonError.INVALID_ARG and refused.output_tensors == []
    assert "row 1 column 'monthly_charges': inf" in str(refused.error)
    sys.modules.pop("mlops.serving._backend_model", None)


def test_json_output_is_strict_json(capsys):
    from mlops.cli._app import _print_json

    _print_json({"labels": [1], "probabilities": [[float("nan"), float("inf")]], "ok": 1.5})
    text = capsys.readouterr().out
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in --json output"))
    assert data["probabilities"] == [[None, None]] and data["ok"] == 1.5
    assert data["non_finite"]["paths"] == ["probabilities[0][0]", "probabilities[0][1]"]


# ---------------------------------------------------------------- monitoring
def _champion(stack: Stack, profiler, reference: pd.DataFrame) -> int:
    profile = stack.state_dir.parent / "reference_profile.bin"
    profiler.write(profiler.profile(reference), profile)
    ckpt = stack.state_dir.parent / "model.ckpt"
    ckpt.write_bytes(b"weights")
    version = stack.model_store.register(stack.cfg.name, {"reference_profile.bin": profile, "model.ckpt": ckpt},
                                         {"key": "k1"}).version
    stack.model_store.promote(stack.cfg.name, version, by="test")
    return version


def _windows(stack: Stack, profiler, version: int, churn: pd.DataFrame, poisoned: dict[int, float]) -> None:
    """Windows 0, 60, 120 of traffic; the one at each key of `poisoned` carries that value in a few rows."""
    folder = stack.layout.windows(stack.cfg.name, version)
    rng = np.random.default_rng(0)
    for start in (0, 60, 120):
        rows = traffic(churn, 600, rng)
        if start in poisoned:
            rows["monthly_charges"] = rows["monthly_charges"].astype(float)
            rows.loc[rows.index[:5], "monthly_charges"] = poisoned[start]
        profiler.write(profiler.profile(rows), folder / f"{start}.bin")


@pytest.mark.parametrize("value", [np.inf, -np.inf, -1e308])
def test_a_poisoned_window_is_quarantined_and_the_others_still_score(tmp_path, churn, profiler, value,
                                                                    inprocess_server):
    from mlops.monitoring import drift_history

    stack = _stack(tmp_path, "monitoring.window_s=60")
    version = _champion(stack, profiler, churn)
    _windows(stack, profiler, version, churn, {60: value})
    history = drift_history(profiler, profiler.read(stack.model_store.get("churn", version).file(
        "reference_profile.bin")), stack.layout.windows("churn", version), stack.cfg.data.features,
        stack.cfg.monitoring.drift)
    assert [h.get("non_finite", []) for h in history] == [[], ["monthly_charges"], []]
    assert history[1]["columns"]["monthly_charges"]["category"] == "NO_VERDICT"

    judged = {j["window"]: j for j in steps.monitor(stack, "test")["judged"]}
    assert [judged[w]["outcome"] for w in (0, 60, 120)] == ["ok", "quarantined", "ok"]
    report = json.loads((Path(judged[60]["quarantine"]) / "report.json").read_text())
    assert ("monthly_charges", "non-finite or out-of-float32-range values") in [
        (f["column"], f["constraint"]) for f in report["failures"]]
    assert {f["column"] for f in report["failures"]} == {"monthly_charges"}
    assert all(h["columns"]["monthly_charges"]["score"] is not None for h in (history[0], history[2]))


def test_monitor_report_does_not_crash_on_a_window_with_inf(tmp_path, churn, profiler, monkeypatch, capsys,
                                                             inprocess_server):
    stack = _stack(tmp_path, "monitoring.window_s=60")
    version = _champion(stack, profiler, churn)
    _windows(stack, profiler, version, churn, {120: np.inf})
    (stack.layout.windows("churn", version) / "180.bin").write_bytes(b"not a profile")  # and one unreadable
    state = f"target.state_dir={tmp_path / 'state'}"
    code, out, err = _cli(monkeypatch, capsys, "monitor", "report", "recipe=churn", state, "--json")
    assert code == 0, err
    history = json.loads(out)["windows"]
    assert [h["window"] for h in history] == [0, 60, 120, 180]
    assert history[2]["non_finite"] == ["monthly_charges"] and "skipped" in history[3]
    code, out, err = _cli(monkeypatch, capsys, "monitor", "report", "recipe=churn", state, "--html",
                          str(tmp_path / "drift.html"))
    assert code == 0 and "window 120: not scored: non-finite" in out and "window 180: not scored" in out


# ---------------------------------------------------------------- one gate: mlops validate
def _write(path: Path, frame: pd.DataFrame | None = None, raw: bytes | None = None) -> Path:
    if raw is not None:
        path.write_bytes(raw)
    else:
        assert frame is not None
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("case", "expected"), [
    ("one row", "1 rows, fewer than data.checks.min_rows=500"),
    ("single class", "target 'churned' has fewer than 2 classes"),
    ("inf", "column 'monthly_charges' has 1 non-finite or out-of-float32-range value(s) (row 2: inf)"),
    ("empty", "is empty (read 0 byte(s))"),
    ("header only", "has a header but no rows"),
    ("latin-1", "is not UTF-8"),
    ("csv named parquet", "cannot be read as PARQUET"),
    ("semicolons", "the file seems to use another delimiter"),
])
def test_validate_is_the_pipelines_gate_and_never_crashes(tmp_path, churn, monkeypatch, capsys, case, expected):
    big = churn.head(600)
    files = {
        "one row": lambda p: _write(p.with_suffix(".csv"), churn.head(1)),
        "single class": lambda p: _write(p.with_suffix(".csv"), big.assign(churned=0)),
        "inf": lambda p: _write(p.with_suffix(".csv"), _poison(big, {(2, "monthly_charges"): np.inf})),
        "empty": lambda p: _write(p.with_suffix(".csv"), raw=b""),
        "header only": lambda p: _write(p.with_suffix(".csv"), churn.head(0)),
        "latin-1": lambda p: _write(p.with_suffix(".csv"),
                                    raw=big.to_csv(index=False).replace("north", "n\xf6rth").encode("latin-1")),
        "csv named parquet": lambda p: _write(p.with_suffix(".parquet"), raw=big.to_csv(index=False).encode()),
        "semicolons": lambda p: _write(p.with_suffix(".csv"), raw=big.to_csv(index=False, sep=";").encode()),
    }
    path = files[case](tmp_path / "batch")
    state = tmp_path / "state"
    code, out, err = _cli(monkeypatch, capsys, "validate", "recipe=churn", f"target.state_dir={state}",
                          "--input", str(path))
    assert code == 3 and "Traceback" not in err and expected in err, err
    assert not state.exists()  # it writes nothing


def test_validate_passes_clean_data_and_reports_a_repair_it_would_make(tmp_path, churn, monkeypatch, capsys):
    path = _write(tmp_path / "batch.csv", _poison(churn.head(600), {(2, "monthly_charges"): -np.inf}))
    code, out, err = _cli(monkeypatch, capsys, "validate", "recipe=churn", f"target.state_dir={tmp_path / 's'}",
                          "data.checks.non_finite=drop", "--input", str(path), "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["rows"] == 599
    assert result["repairs"]["columns"] == [{"column": "monthly_charges", "count": 1, "rows": [2],
                                             "values": ["-inf"]}]


def test_validate_in_a_subprocess_exits_3_without_a_traceback(tmp_path):
    path = _write(tmp_path / "batch.parquet", raw=b"a,b\n1,2\n")
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "-C", str(ROOT), "validate", "recipe=churn",
                           f"target.state_dir={tmp_path / 'state'}", "--input", str(path)],
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "It looks like CSV text: name it .csv" in proc.stderr


# ---------------------------------------------------------------- property: random garbage through every stage
def test_random_non_finite_and_extreme_values_never_crash_a_stage_or_serve_non_finite_metrics(
        tmp_path, churn, profiler, inprocess_server):
    """Seeded: random cells of the numeric columns get ±inf, NaN, values beyond float32 or huge finite ones; each
    stage either refuses with an MlopsError (one of the tree's, never a crash) or yields finite results."""
    rng = np.random.default_rng(16)
    numeric = ["tenure_months", "monthly_charges", "support_calls", "data_gb"]
    values = [np.inf, -np.inf, np.nan, 1e39, -1e308, 3e38, -3e38, 1e30]
    (tmp_path / "data").mkdir()
    trained_once = False
    for trial in range(4):
        cells = {(int(rng.integers(len(churn))), str(rng.choice(numeric))): float(rng.choice(values))
                 for _ in range(int(rng.integers(1, 6)))}
        frame = _poison(churn, cells)
        data = tmp_path / "data" / f"t{trial}.csv"
        frame.to_csv(data, index=False)
        policy = ["reject", "drop", "clip"][trial % 3]
        stack = _stack(tmp_path / f"t{trial}", f"data.path={data}", f"data.checks.non_finite={policy}",
                       "model.max_epochs=1")
        unusable = bad_values(frame, numeric)
        snapshot = steps.ingest(stack)
        try:
            steps.validate(stack, snapshot)
        except DataError as e:
            assert policy == "reject" and unusable and "non-finite" in str(e)
            continue
        assert policy != "reject" or not unusable
        stored = pd.read_parquet(snapshot.path)
        assert not bad_values(stored, numeric)
        if trained_once:
            continue
        trained_once = True
        try:
            trained = steps.train(stack, snapshot)
            metrics = steps.evaluate(stack, snapshot, trained)
            version = steps.register(stack, snapshot, trained, metrics)
        except MlopsError:
            assert stack.model_store.versions("churn") == []
            continue
        finally:
            steps.end_open_runs("FAILED")
        lineage = stack.model_store.get("churn", version.version).lineage
        assert all(math.isfinite(v) for v in lineage["metrics"].values())
        stack.server.start()
        steps.deploy(stack, steps.export(stack, version), by="test")
        garbage = _poison(churn.drop(columns=["churned"]).head(20), {(3, numeric[trial % 4]): np.inf})
        with pytest.raises(PredictError, match="row 3"):
            stack.server.predict(garbage)
        answer = stack.server.predict(stored.drop(columns=["churned"]).head(20))
        assert np.isfinite(answer["probabilities"]).all()
        # Served traffic with the same garbage: the window is quarantined, never a crash, never drift.
        folder = stack.layout.windows("churn", version.version)
        profiler.write(profiler.profile(_poison(traffic(churn, 300, rng), {(0, "data_gb"): -np.inf})),
                       folder / "0.bin")
        (judged,) = steps.monitor(stack, "test")["judged"]
        assert judged["outcome"] == "quarantined"
    assert trained_once
    assert FLOAT32_MAX < 1e39
