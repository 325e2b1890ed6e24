"""The steps (mlops.steps) as unit tests with real objects: the real model store, whylogs and steps, and the
test-only `inprocess` server flavor (tests/_inprocess_server.py) in place of Triton. No Prefect, no services.

Versions are registered without training (a placeholder checkpoint and the metrics the gate reads), so the gate,
promote, rollback, quarantine and drift tests take milliseconds to a second and never import torch; one test runs
the whole pipeline on the bundled breast_cancer recipe and checks what the server predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _traffic import replay

from _inprocess_server import inprocess_stack

from mlops import steps
from mlops.artifacts import RegisteredVersion, TestMetrics
from mlops.errors import DataError, RegistryError, ServiceError
from mlops.plan import compile_plan
from mlops.recipe import load
from mlops.stack import Stack

ROOT = Path(__file__).resolve().parents[1]




_stack = inprocess_stack  # the churn recipe on the in-process server, state under tmp_path


def _register(stack: Stack, key: str, **metrics: float) -> RegisteredVersion:
    """A version as `register` leaves it, minus training: a placeholder checkpoint and the test metrics."""
    ckpt = stack.state_dir.parent / f"{key}.ckpt"
    ckpt.write_bytes(f"weights of {key}".encode())
    mv = stack.model_store.register(stack.cfg.name, {"model.ckpt": ckpt}, {"key": key, "metrics": metrics})
    return RegisteredVersion(model=mv.model, version=mv.version, path=str(mv.path))


# ---------------------------------------------------------------- the gate
GATED = ("maturity=3", "maturity.gate.metric=test_acc", "maturity.gate.min_improvement=0.01",
         "+maturity.gate.floors.test_auc=0.7")


def test_gate_passes_a_better_candidate_and_rejects_a_worse_one_with_reasons(tmp_path, inprocess_server):
    stack = _stack(tmp_path, *GATED)
    [spec] = compile_plan(stack.cfg).gates  # the gate the recipe's maturity section compiles to
    store, name = stack.model_store, stack.cfg.name
    v1 = _register(stack, "k1", test_acc=0.80, test_auc=0.85)
    steps.promote(stack, v1.version, by="test")

    better = _register(stack, "k2", test_acc=0.82, test_auc=0.86)
    verdict = steps.gate(stack, spec, better, TestMetrics(values={"test_acc": 0.82, "test_auc": 0.86}))
    assert verdict.passed and verdict.reasons == []
    assert (verdict.candidate, verdict.champion, verdict.champion_version) == (0.82, 0.80, 1)

    # Better, but by less than min_improvement.
    marginal = _register(stack, "k3", test_acc=0.805, test_auc=0.86)
    verdict = steps.gate(stack, spec, marginal, TestMetrics(values={"test_acc": 0.805, "test_auc": 0.86}))
    assert not verdict.passed
    assert verdict.reasons == ["test_acc=0.8050 does not beat the champion's 0.8000 by at least 0.01 (maximize) "
                               "<maturity.gate.min_improvement>"]

    # Worse on both counts: every failed condition is a reason.
    worse = _register(stack, "k4", test_acc=0.70, test_auc=0.60)
    verdict = steps.gate(stack, spec, worse, TestMetrics(values={"test_acc": 0.70, "test_auc": 0.60}))
    assert [r.rsplit("<", 1)[1] for r in verdict.reasons] == ["maturity.gate.floors.test_auc>",
                                                              "maturity.gate.min_improvement>"]
    assert verdict.reasons[0] == "test_auc=0.6000 is below the floor 0.7 <maturity.gate.floors.test_auc>"

    statuses = store.statuses(name)
    assert {v: s["status"] for v, s in statuses.items()} == {1: "registered", 2: "registered", 3: "rejected",
                                                             4: "rejected"}
    assert statuses[4]["reasons"] == verdict.reasons
    assert store.aliases(name)["champion"] == 1  # the gate judges; it moves nothing


def test_with_no_champion_only_the_floors_apply(tmp_path, inprocess_server):
    stack = _stack(tmp_path, *GATED)
    [spec] = compile_plan(stack.cfg).gates
    first = _register(stack, "k1", test_acc=0.55, test_auc=0.75)
    verdict = steps.gate(stack, spec, first, TestMetrics(values={"test_acc": 0.55, "test_auc": 0.75}))
    assert verdict.passed and verdict.champion is None and verdict.champion_version is None

    low = _register(stack, "k2", test_acc=0.99, test_auc=0.65)
    verdict = steps.gate(stack, spec, low, TestMetrics(values={"test_acc": 0.99, "test_auc": 0.65}))
    assert verdict.reasons == ["test_auc=0.6500 is below the floor 0.7 <maturity.gate.floors.test_auc>"]
    assert stack.model_store.statuses(stack.cfg.name)[low.version]["status"] == "rejected"


# ---------------------------------------------------------------- promote and rollback
def test_promote_serves_the_version_and_moves_the_champion_alias(tmp_path, inprocess_server):
    stack = _stack(tmp_path)
    store, name = stack.model_store, stack.cfg.name
    v1, v2 = _register(stack, "k1", test_acc=0.8), _register(stack, "k2", test_acc=0.7)
    store.set_status(name, v2.version, "rejected", ["test_acc=0.7000 does not beat the champion's 0.8000"])

    served = steps.promote(stack, v1.version, by="alice")
    assert (served.champion, served.previous, served.loaded) == (1, None, [1])
    assert store.aliases(name) == {"champion": 1} and store.champions(name)[-1]["by"] == "alice"
    assert stack.server.champion_served(1) and stack.server.answering_version() == 1

    with pytest.raises(RegistryError, match=r"churn@2 was rejected by the gate: test_acc=0.7000 does not beat "
                                            r"the champion's 0.8000\. Promote it anyway with --force\."):
        steps.promote(stack, v2.version, by="alice")
    assert store.aliases(name)["champion"] == 1 and stack.server.answering_version() == 1

    served = steps.promote(stack, v2.version, by="alice", force=True)
    assert (served.champion, served.previous, served.loaded) == (2, 1, [2, 1])
    assert store.aliases(name)["champion"] == 2
    # Another Stack over the same state directory (another process, the CLI) sees the same server.
    other = Stack(stack.cfg, ROOT)
    assert other.server.answering_version() == 2
    assert {(m["version"], m["state"]) for m in other.server.served()} == {(2, "READY"), (1, "READY")}


def test_a_deploy_that_cannot_serve_leaves_the_champion_where_it_was(tmp_path, inprocess_server):
    stack = _stack(tmp_path)
    v1, v2 = _register(stack, "k1", test_acc=0.8), _register(stack, "k2", test_acc=0.9)
    steps.promote(stack, v1.version, by="test")
    assert stack.server.stop() and not stack.server.live() and stack.server.served() == []
    with pytest.raises(ServiceError, match="not running"):
        steps.deploy(stack, steps.export(stack, v2), by="test")
    # The server refused first, so the alias never moved.
    assert stack.model_store.aliases(stack.cfg.name)["champion"] == 1
    stack.server.start()
    assert steps.deploy(stack, steps.export(stack, v2), by="test").champion == 2


def test_a_corrupt_export_is_never_served(tmp_path, inprocess_server):
    stack = _stack(tmp_path)
    v1, v2 = _register(stack, "k1", test_acc=0.8), _register(stack, "k2", test_acc=0.9)
    steps.promote(stack, v1.version, by="test")
    exported = steps.export(stack, v2)
    (Path(exported.dir) / "model.ckpt").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="does not match its checksum"):
        steps.deploy(stack, exported, by="test")
    assert stack.model_store.aliases(stack.cfg.name)["champion"] == 1 and stack.server.answering_version() == 1


def test_rollback_serves_the_previous_champion_and_points_the_alias_back(tmp_path, inprocess_server):
    stack = _stack(tmp_path)
    store, name = stack.model_store, stack.cfg.name
    v1, v2 = _register(stack, "k1", test_acc=0.8), _register(stack, "k2", test_acc=0.9)
    steps.promote(stack, v1.version, by="test")
    steps.promote(stack, v2.version, by="test")

    frm, to, served = steps.rollback(stack)
    assert (frm, to) == (2, 1)
    assert (served.champion, served.previous) == (1, 2)
    assert store.aliases(name)["champion"] == 1 and [e["version"] for e in store.champions(name)] == [1]
    assert Stack(stack.cfg, ROOT).server.answering_version() == 1

    # One champion left: nothing to roll back to, and nothing changes.
    with pytest.raises(RegistryError, match=r"no previous champion to roll back to \(champion history: \[1\]\)"):
        steps.rollback(stack)
    assert store.aliases(name)["champion"] == 1 and stack.server.answering_version() == 1


def test_rollback_with_one_champion_raises(tmp_path, inprocess_server):
    stack = _stack(tmp_path)
    steps.promote(stack, _register(stack, "k1", test_acc=0.8).version, by="test")
    with pytest.raises(RegistryError, match="no previous champion"):
        steps.rollback(stack)


def test_triton_refuses_another_flavors_export(tmp_path, inprocess_server):
    """Exports are each flavor's own format: a checkpoint export is no model.onnx for Triton."""
    stack = _stack(tmp_path)
    exported = steps.export(stack, _register(stack, "k1", test_acc=0.8))
    assert exported.onnx is None and (Path(exported.dir) / "model.ckpt").is_file()
    triton = Stack(load(["recipe=churn", f"target.state_dir={stack.state_dir}"], ROOT, check_data=False), ROOT)
    with pytest.raises(ServiceError, match=r"churn@1 was exported without model\.onnx"):
        triton.server.deploy(exported)


# ---------------------------------------------------------------- the data gate: quarantine
def _bad_batch(kind: str, churn: pd.DataFrame) -> pd.DataFrame:
    bad = churn.iloc[600:].copy()
    if kind == "string in a numeric column":
        bad["monthly_charges"] = bad["monthly_charges"].astype(object)
        bad.iloc[3, bad.columns.get_loc("monthly_charges")] = "lots"
    elif kind == "half nulls":
        bad.loc[bad.index[: len(bad) // 2], "tenure_months"] = np.nan
    else:
        bad.iloc[5, bad.columns.get_loc("region")] = "antarctica"
    return bad


def _champion_with_reference(stack: Stack, profiler, reference: pd.DataFrame) -> int:
    """A champion whose reference profile is `reference` (register stores the training split's; made directly)."""
    profile = stack.state_dir.parent / "reference_profile.bin"
    profiler.write(profiler.profile(reference), profile)
    ckpt = stack.state_dir.parent / "model.ckpt"
    ckpt.write_bytes(b"weights")
    store = stack.model_store
    version = store.register(stack.cfg.name, {"reference_profile.bin": profile, "model.ckpt": ckpt},
                             {"key": "k1"}).version
    store.promote(stack.cfg.name, version, by="test")
    return version


@pytest.mark.parametrize(("kind", "column"), [("string in a numeric column", "monthly_charges"),
                                              ("half nulls", "tenure_months"), ("unseen category", "region")])
def test_validate_quarantines_a_failing_batch_so_training_never_sees_it(tmp_path, churn, profiler, kind, column,
                                                                       inprocess_server):
    (tmp_path / "data").mkdir()
    stack = _stack(tmp_path, f"data.path={tmp_path / 'data/churn.csv'}")
    _champion_with_reference(stack, profiler, churn.iloc[:600])
    _bad_batch(kind, churn).to_csv(tmp_path / "data/churn.csv", index=False)

    dataset = steps.ingest(stack)
    with pytest.raises(DataError) as err:
        steps.validate(stack, dataset)
    message = str(err.value)
    assert "failed validation and was quarantined" in message and f"column {column!r}" in message
    (folder,) = (stack.state_dir / "quarantine" / "churn").iterdir()
    report = json.loads((folder / "report.json").read_text())
    assert [f["column"] for f in report["failures"]] == [column]
    assert (folder / Path(dataset.path).name).is_file() and not Path(dataset.path).exists()
    assert steps.validated_snapshots(stack) == {}  # nothing for training to pick up
    with pytest.raises(DataError, match="no validated dataset snapshot"):
        steps.latest_snapshot(stack)

    # The clean data passes the same gate.
    churn.iloc[600:].to_csv(tmp_path / "data/churn.csv", index=False)
    clean = steps.ingest(stack)
    assert steps.validate(stack, clean).rows == 600


# ---------------------------------------------------------------- drift on served traffic
def test_drift_is_announced_once_then_again_only_after_repeat_after_windows(tmp_path, churn, profiler,
                                                                           inprocess_server):
    from mlops._names import DRIFT_DETECTED

    stack = _stack(tmp_path, "monitoring.window_s=60", "monitoring.drift.repeat_after_windows=3")
    version = _champion_with_reference(stack, profiler, churn)
    # Five closed one-minute windows of shifted traffic for the champion (windows start at 0, 60, ... 240).
    replay(profiler, stack.layout.windows(stack.cfg.name, version), churn, scale=3.0, windows_n=5)
    events = []

    def emit(event, payload):
        events.append((event, payload))

    judged = steps.monitor(stack, "test", emit=emit)["judged"]
    assert [(j["window"], j["outcome"]) for j in judged] == [(w, "drift") for w in (0, 60, 120, 180, 240)]
    # Drift lasts all five windows; it is announced at the first, then again 3 windows later, not in between.
    assert [(e, p["window"], p["drifted"]) for e, p in events] == [(DRIFT_DETECTED, 0, ["monthly_charges"]),
                                                                   (DRIFT_DETECTED, 180, ["monthly_charges"])]
    assert {e[1]["version"] for e in events} == {version}
    # Each window is judged once: a second pass finds nothing new and stays quiet.
    assert steps.monitor(stack, "test", emit=emit)["judged"] == [] and len(events) == 2


@pytest.mark.parametrize("retrain_on_output_drift", [False, True])
def test_output_drift_alone_retrains_only_when_configured(tmp_path, churn, profiler, inprocess_server,
                                                           retrain_on_output_drift, monkeypatch, capsys):
    """Unshifted inputs, shifted answers: reported as output drift; mlops.drift.detected only if configured."""
    from mlops._names import DRIFT_DETECTED
    from mlops.monitoring import TrafficProfiler

    stack = _stack(tmp_path, "monitoring.window_s=60",
                   f"monitoring.drift.retrain_on_output_drift={str(retrain_on_output_drift).lower()}")
    features = stack.cfg.data.features
    rng = np.random.default_rng(0)
    ref = churn[features].assign(**{"output.class": np.where(rng.random(len(churn)) < 0.2, "yes", "no")})
    version = _champion_with_reference(stack, profiler, ref)
    traffic = TrafficProfiler(profiler, stack.layout.windows(stack.cfg.name, version), sample_rate=1.0, window_s=60)
    traffic.submit(churn[features].assign(**{"output.class": np.where(rng.random(len(churn)) < 0.8, "yes", "no")}),
                   at=0.0)
    traffic.close()
    events = []
    [judged] = steps.monitor(stack, "test", emit=lambda event, payload: events.append((event, payload)))["judged"]
    assert judged["output_drifted"] == ["output.class"]
    if retrain_on_output_drift:
        assert judged["outcome"] == "drift" and judged["drifted"] == ["output.class"]
        assert [(e, p["drifted"]) for e, p in events] == [(DRIFT_DETECTED, ["output.class"])]
    else:
        assert judged["outcome"] == "output_drift" and judged["drifted"] == [] and events == []
        _output_drift_in_the_report(tmp_path, features, monkeypatch, capsys)


def _output_drift_in_the_report(tmp_path, features, monkeypatch, capsys):
    """`mlops monitor report`, in this process: the outputs apart from the inputs, as JSON, text and HTML."""
    import sys

    from mlops.cli import main

    def cli(*args):
        monkeypatch.setattr(sys, "argv", ["mlops", "-C", str(ROOT), "monitor", "report", "recipe=churn",
                                          f"target.state_dir={tmp_path / 'state'}", *args])
        with pytest.raises(SystemExit) as done:
            main()
        out, err = capsys.readouterr()
        assert done.value.code == 0, err
        return out

    report = json.loads(cli("--json"))
    assert report["inputs"] == features and report["outputs"] == ["output.class"]
    assert report["retrain_on_output_drift"] is False
    [window] = report["windows"]
    assert window["drift"] == [] and window["output_drift"] == ["output.class"]
    assert window["outputs"]["output.class"]["category"] == "DRIFT"
    text = cli("--html", str(tmp_path / "drift.html"))
    assert "outputs:" in text and "no retraining <monitoring.drift.retrain_on_output_drift=false>" in text
    assert "Output drift over time" in (tmp_path / "drift.html").read_text()


# ---------------------------------------------------------------- the whole pipeline, served in process
def test_the_pipeline_serves_what_it_trained(tmp_path, inprocess_server):
    from mlops.errors import PredictError
    from mlops.training import load_module, predict_frame

    cfg = load(["recipe=breast_cancer", "model.max_epochs=2", "serving=inprocess",
                f"target.state_dir={tmp_path / 'state'}"], ROOT)
    stack = Stack(cfg, ROOT)
    try:
        snapshot = steps.ingest(stack)
        steps.validate(stack, snapshot)
        trained = steps.train(stack, snapshot)
        metrics = steps.evaluate(stack, snapshot, trained)
        version = steps.register(stack, snapshot, trained, metrics)
    finally:
        steps.end_open_runs("FAILED")
    assert version.new and stack.model_store.get(cfg.name, version.version).lineage["metrics"]["test_acc"] == \
        metrics.values["test_acc"]
    # The reference holds the training split's columns and the model's answers on the validation split.
    mv = stack.model_store.get(cfg.name, version.version)
    reference = steps.batch_profiler(stack).read(mv.file("reference_profile.bin"))
    assert {"mean radius", "output.class", "output.confidence"} <= set(reference.get_columns())
    val_rows = reference.get_column("output.confidence").get_metric("counts").n.value
    assert 0 < val_rows < reference.get_column("mean radius").get_metric("counts").n.value  # val, not train
    assert {i.value for i in reference.get_column("output.class").get_metric("frequent_items").strings} == {"0", "1"}
    # The training rows were profiled by train before its fit freed them (Split.consume_train): the same profile.
    from mlops.training import split_frame

    train_rows = split_frame(pd.read_parquet(snapshot.path), cfg.data, cfg.model.task).train
    whole = steps.batch_profiler(stack).profile(train_rows).get_column("mean radius")
    for metric, value in (("counts", "n"), ("distribution", "mean")):
        assert getattr(reference.get_column("mean radius").get_metric(metric), value).value == \
            getattr(whole.get_metric(metric), value).value
    stack.server.start()
    served = steps.deploy(stack, steps.export(stack, version), by="test")
    assert served.champion == version.version and stack.model_store.aliases(cfg.name)["champion"] == version.version

    rows = pd.read_parquet(snapshot.path).sample(8, random_state=0)
    answer = stack.server.predict(rows.drop(columns=[cfg.data.target]))
    expected = predict_frame(load_module(Path(trained.checkpoint)), rows)  # the model `evaluate` scored
    assert answer["version"] == version.version and answer["classes"] == [0, 1]
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert answer["labels"] == [answer["classes"][i] for i in expected.argmax(axis=1)]
    # The rows are checked against the version's signature before the model sees them.
    with pytest.raises(PredictError, match="'mean radius' is missing"):
        stack.server.predict(rows.drop(columns=["mean radius"]))


def test_floors_hold_at_every_level_before_anything_is_served(tmp_path, inprocess_server):
    """Level 0 (no automated gate): `up`'s run still holds the version to the recipe's floors and ceilings, and to
    finite metrics; a version that fails is marked rejected and nothing is served."""
    from mlops.errors import GateRejected
    from mlops.plan import gate_spec

    stack = _stack(tmp_path, "maturity=0", "+maturity.gate.floors.test_acc=0.9", "+maturity.gate.ceilings.test_loss=1")
    assert compile_plan(stack.cfg).gates == ()  # no champion gate at level 0 ...
    spec = gate_spec(stack.cfg)  # ... but the bounds apply
    low = _register(stack, "k1", test_acc=0.8, test_loss=0.4)
    with pytest.raises(GateRejected, match=r"churn@1 is not served: test_acc=0.8000 is below the floor 0.9"):
        steps.hold_to_floors(stack, spec, low, TestMetrics(values={"test_acc": 0.8, "test_loss": 0.4}))
    assert stack.model_store.statuses("churn")[1]["status"] == "rejected"
    nan = _register(stack, "k2", test_acc=0.95, test_loss=float("nan"))
    with pytest.raises(GateRejected, match="test_loss=nan is not a finite number"):
        steps.hold_to_floors(stack, spec, nan, TestMetrics(values={"test_acc": 0.95, "test_loss": float("nan")}))
    good = _register(stack, "k3", test_acc=0.95, test_loss=0.2)
    assert steps.hold_to_floors(stack, spec, good, TestMetrics(values={"test_acc": 0.95, "test_loss": 0.2})).passed
    assert stack.model_store.aliases("churn") == {} and stack.server.served() == []


def test_an_image_models_reference_holds_image_summaries_and_its_answers(tmp_path):
    """The digits CNN: no named features, so drift is scored on per-image summaries and on the answers."""
    from mlops.monitoring._summaries import split_columns
    from mlops.training import split_frame

    cfg = load(["recipe=digits", "model.max_epochs=1", f"target.state_dir={tmp_path / 'state'}"], ROOT)
    stack = Stack(cfg, ROOT)
    try:
        snapshot = steps.ingest(stack)
        steps.validate(stack, snapshot)
        trained = steps.train(stack, snapshot)
        version = steps.register(stack, snapshot, trained, steps.evaluate(stack, snapshot, trained))
    finally:
        steps.end_open_runs("FAILED")
    profiler = steps.batch_profiler(stack)
    reference = profiler.read(stack.model_store.get(cfg.name, version.version).file("reference_profile.bin"))
    inputs, outputs = split_columns(profiler.columns(reference), cfg.data.features)
    assert inputs == ["input.image.brightness", "input.image.channel0_mean", "input.image.contrast",
                      "input.image.height", "input.image.width"]
    assert outputs == ["output.class", "output.confidence"]
    brightness = reference.get_column("input.image.brightness").to_summary_dict()
    val = split_frame(pd.read_parquet(snapshot.path), cfg.data, cfg.model.task).val
    assert brightness["counts/n"] == len(val)  # the validation split's images, as served (uint8, 8x8 grey)
    assert 40 < brightness["distribution/mean"] < 120
