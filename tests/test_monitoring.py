"""Monitoring with real whylogs: batch constraints, traffic windows, drift power at the default sample rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _traffic import replay

from mlops.monitoring import drift_history, make_profiler, render_html, windows
from mlops.recipe.schema import FileData, MonitoringConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = FileData(source="file", path="recipes/data/churn.csv", target="churned",
                numeric=["tenure_months", "monthly_charges", "support_calls", "data_gb"],
                categorical=["contract", "payment_method", "region"])
MON = MonitoringConfig()




@pytest.fixture(scope="module")
def reference(profiler, churn):
    return profiler.profile(churn.iloc[:800])


def test_a_clean_batch_passes(profiler, reference, churn):
    assert profiler.validate(churn.iloc[800:], reference, DATA, MON).failures == []


def test_a_string_in_a_numeric_column_is_caught(profiler, reference, churn):
    bad = churn.iloc[800:].copy()
    bad["monthly_charges"] = bad["monthly_charges"].astype(object)
    bad.iloc[3, bad.columns.get_loc("monthly_charges")] = "lots"
    [failure] = profiler.validate(bad, reference, DATA, MON).failures
    assert failure.column == "monthly_charges" and "allows for types" in failure.constraint
    assert failure.details == {"string": 1, "fractional": 399}


def test_half_nulls_are_caught(profiler, reference, churn):
    bad = churn.iloc[800:].copy()
    bad.loc[bad.index[:200], "tenure_months"] = np.nan
    [failure] = profiler.validate(bad, reference, DATA, MON).failures
    assert failure.column == "tenure_months"
    assert failure.constraint == "null percentage of tenure_months lower than 0.05"
    assert failure.details["null"] == 200 and failure.details["n"] == 400


def test_an_unseen_category_is_caught(profiler, reference, churn):
    bad = churn.iloc[800:].copy()
    bad.iloc[5, bad.columns.get_loc("region")] = "antarctica"
    [failure] = profiler.validate(bad, reference, DATA, MON).failures
    assert failure.column == "region" and "antarctica:1" in failure.details["frequent_strings_top_10"]
    allowed = MonitoringConfig(allow_new_categories=True)
    assert profiler.validate(bad, reference, DATA, allowed).failures == []


def test_bounds_come_from_the_recipe(profiler, reference, churn):
    shifted = churn.iloc[800:].copy()
    shifted["monthly_charges"] *= 3  # a real shift: not garbage, passes
    assert profiler.validate(shifted, reference, DATA, MON).failures == []
    bounded = MonitoringConfig(bounds={"monthly_charges": (0, 200)})
    [failure] = profiler.validate(shifted, reference, DATA, bounded).failures
    assert failure.column == "monthly_charges" and "range" in failure.constraint


def test_no_false_alarm_on_unshifted_traffic(profiler, tmp_path, churn):
    ref = profiler.profile(churn)
    replay(profiler, tmp_path, churn, scale=1.0)
    history = drift_history(profiler, ref, tmp_path, DATA.features, MON.drift)
    assert len(history) == 3 and all(h["rows"] > 400 for h in history)  # ~10% of 6000 sampled per window
    assert all(h["drift"] == [] for h in history), history


def test_a_real_shift_is_caught_at_the_default_sample_rate(profiler, tmp_path, churn):
    ref = profiler.profile(churn)
    replay(profiler, tmp_path, churn, scale=3.0, windows_n=1)
    [window] = drift_history(profiler, ref, tmp_path, DATA.features, MON.drift)
    assert window["drift"] == ["monthly_charges"]
    assert window["columns"]["tenure_months"]["category"] != "DRIFT"


def test_small_windows_get_no_verdict(profiler, churn):
    ref = profiler.profile(churn)
    scores = profiler.drift(ref, profiler.profile(churn.head(50)), DATA.features, MON.drift)
    assert {d.category for d in scores.values()} == {"NO_VERDICT"}


def test_windows_are_written_atomically_and_the_report_renders(profiler, tmp_path, churn):
    ref = profiler.profile(churn)
    replay(profiler, tmp_path, churn, scale=3.0, windows_n=1)
    assert [p.name for p in tmp_path.iterdir()] == [p.name for _s, p in windows(tmp_path)]  # no temp files left
    history = drift_history(profiler, ref, tmp_path, DATA.features, MON.drift)
    page = render_html("churn@1", profiler, ref, profiler.read(windows(tmp_path)[-1][1]), history, DATA.features,
                       MON.drift)
    assert page.count("data:image/png;base64,") == 1 + len(DATA.features)
    assert "<td class='DRIFT'>DRIFT</td>" in page


def test_capture_samples_served_arrays_into_windows(tmp_path, churn):
    from mlops.monitoring._capture import Capture

    signature = {"inputs": [{"name": "numeric", "datatype": "FP32", "columns": DATA.numeric},
                            {"name": "categorical", "datatype": "BYTES", "columns": DATA.categorical}],
                 "outputs": [{"name": "probabilities", "datatype": "FP32", "dims": [2]}], "classes": ["no", "yes"]}
    cap = Capture(signature, tmp_path / "windows", sample_rate=0.5, window_s=60)
    rows = churn.head(400)
    numeric = rows[DATA.numeric].to_numpy(np.float32)
    categorical = np.array([[v.encode() for v in r] for r in rows[DATA.categorical].to_numpy()], dtype=object)
    probs = np.tile(np.array([[0.7, 0.3]], np.float32), (400, 1))
    cap.observe({"numeric": numeric, "categorical": categorical}, {"probabilities": probs})
    cap.close()
    [(_start, path)] = windows(tmp_path / "windows")
    view = make_profiler("whylogs").read(path)
    assert 120 < make_profiler("whylogs").rows(view) < 280  # about half of 400
    regions = {i.value for i in view.get_column("region").get_metric("frequent_items").strings}
    assert regions <= {"north", "south", "east", "west"}  # decoded, not "b'north'"
    # The outputs as the worker summarises them: the predicted class and its probability.
    assert {"output.class", "output.confidence"} <= set(view.get_columns()) and "probabilities" not in str(
        list(view.get_columns()))
    assert {i.value for i in view.get_column("output.class").get_metric("frequent_items").strings} == {"no"}


def test_the_worker_profiles_a_poll_of_spool_in_one_call_per_window(tmp_path):
    from mlops.monitoring._spool import drain, write_chunk

    served = []

    class Traffic:  # records what the worker hands to the TrafficProfiler
        window_s = 60.0

        def submit(self, frame, at):
            served.append((at, len(frame)))

    # Three spooled seconds: two in the window starting at 0, one straddling into the window at 60.
    for seq, times in enumerate([np.full(10, 5.0), np.full(20, 30.0), np.array([59.0] * 5 + [61.0] * 7)]):
        write_chunk(tmp_path, {"x": np.arange(len(times), dtype=np.float32)}, times, seq)

    assert drain(tmp_path, Traffic()) == 42
    assert served == [(0.0, 35), (60.0, 7)]  # whylogs costs mostly per call: one per window, not per file
    assert list(tmp_path.iterdir()) == []


def test_the_worker_runs_only_on_idle_cpu(tmp_path):
    import os
    import time

    from mlops.monitoring._capture import Capture

    signature = {"inputs": [{"name": "numeric", "datatype": "FP32", "columns": ["a"]}], "outputs": []}
    cap = Capture(signature, tmp_path / "windows", sample_rate=1.0, window_s=60)
    try:
        tasks = Path(f"/proc/{cap.worker.pid}/task")
        deadline, policies = time.monotonic() + 60, set()
        while time.monotonic() < deadline:
            policies = {os.sched_getscheduler(int(t.name)) for t in tasks.iterdir()}
            if policies == {os.SCHED_IDLE}:
                break
            time.sleep(0.2)
        # Every thread, numpy's BLAS threads included: serving preempts the worker at once.
        assert policies == {os.SCHED_IDLE} and len(list(tasks.iterdir())) > 1
    finally:
        cap.close()


def test_one_worker_drains_a_spool_at_a_time(tmp_path, profiler):
    """Triton starts a worker per model instance; rows must be profiled once, not once per worker."""
    import fcntl
    import subprocess
    import sys
    import time

    from mlops.monitoring._spool import write_chunk

    spool, out = tmp_path / "spool", tmp_path / "windows"

    def worker():
        return subprocess.Popen([sys.executable, "-m", "mlops.monitoring._spool", str(spool), str(out), "3600"],
                                stdin=subprocess.PIPE, cwd=ROOT)

    def held() -> bool:
        with open(spool / ".worker.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    spool.mkdir()
    first = worker()
    deadline = time.monotonic() + 60
    while not held() and time.monotonic() < deadline:
        time.sleep(0.2)
    second = worker()  # another instance of the same version
    time.sleep(2)
    now = time.time()
    for seq in range(3):
        write_chunk(spool, {"x": np.arange(100, dtype=np.float32)}, np.full(100, now), seq)
    second.stdin.close()  # the waiting worker stops: it leaves the spool to the one draining it
    assert second.wait(60) == 0
    assert len(list(spool.glob("*.npz"))) == 3 and windows(out) == []
    first.stdin.close()
    assert first.wait(60) == 0
    [(_start, path)] = windows(out)
    assert profiler.rows(profiler.read(path)) == 300  # each row once


# ---------------------------------------------------------------- tensor inputs and served outputs
IMAGE_SIGNATURE = {"task": "classification", "inputs": [{"name": "image", "datatype": "UINT8", "dims": [8, 8, 1]}],
                   "outputs": [{"name": "probabilities", "datatype": "FP32", "dims": [10]}], "classes": list(range(10))}


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits as the uint8 NHWC images image_classifier serves, shuffled, and a classifier of them."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.images))
    images = (data.images[order] * 255 / 16).round().astype(np.uint8)[..., None]
    model = LogisticRegression(max_iter=2000).fit(images[:900].reshape(900, -1) / 255, data.target[order][:900])
    return images, lambda batch: model.predict_proba(batch.reshape(len(batch), -1) / 255).astype(np.float32)


def _worker_window(tmp_path, profiler, signature, inputs, outputs):
    """What the profiling worker makes of arrays spooled by the backend: the window's profile."""
    import json

    from mlops.monitoring import TrafficProfiler
    from mlops.monitoring._spool import drain, write_chunk

    n = len(next(iter(inputs.values())))
    arrays = {**{f"input.{k}": v for k, v in inputs.items()}, **{f"output.{k}": v for k, v in outputs.items()}}
    write_chunk(tmp_path / "spool", arrays, np.full(n, 30.0), 1, signature=json.dumps(signature))
    traffic = TrafficProfiler(profiler, tmp_path / "windows", sample_rate=1.0, window_s=60)
    assert drain(tmp_path / "spool", traffic) == n
    traffic.close()
    [(_start, path)] = windows(tmp_path / "windows")
    return path


def test_darkened_images_drift_and_a_fresh_sample_does_not(profiler, tmp_path, digits):
    import pandas as pd

    from mlops.monitoring._summaries import served_columns, split_columns

    images, predict = digits
    ref_images = images[:900]
    reference = profiler.profile(pd.DataFrame(served_columns(IMAGE_SIGNATURE, {"image": ref_images},
                                                             {"probabilities": predict(ref_images)})))
    inputs, outputs = split_columns(profiler.columns(reference), features=[])
    assert inputs == ["input.image.brightness", "input.image.channel0_mean", "input.image.contrast",
                      "input.image.height", "input.image.width"]
    assert outputs == ["output.class", "output.confidence"]
    fresh, dark = images[900:], (images[900:] * 0.3).astype(np.uint8)
    history = {}
    for name, batch in (("fresh", fresh), ("dark", dark)):
        (tmp_path / name).mkdir()
        _worker_window(tmp_path / name, profiler, IMAGE_SIGNATURE, {"image": batch}, {"probabilities": predict(batch)})
        [history[name]] = drift_history(profiler, reference, tmp_path / name / "windows", inputs, MON.drift, outputs)
    assert history["fresh"]["rows"] == len(fresh)
    assert history["fresh"]["drift"] == [] and history["fresh"]["output_drift"] == [], history["fresh"]
    assert {"input.image.brightness", "input.image.contrast"} <= set(history["dark"]["drift"])
    assert history["dark"]["columns"]["input.image.width"]["category"] == "NO_DRIFT"  # same size, darker
    # The classifier never saw dark digits: its answers move too, reported apart from the inputs.
    assert "output.confidence" in history["dark"]["output_drift"]
    page = render_html("digits@1", profiler, reference, profiler.read(windows(tmp_path / "dark" / "windows")[-1][1]),
                       [history["dark"]], inputs, MON.drift, outputs)
    assert "Output drift over time" in page and "Input drift over time" in page
    assert page.count("data:image/png;base64,") == 2 + len(inputs) + len(outputs)


def test_float_tensors_are_summarised_per_sample():
    from mlops.monitoring._summaries import served_columns

    signature = {"task": "regression", "inputs": [{"name": "input", "datatype": "FP32", "dims": [2, 3]}],
                 "outputs": [{"name": "prediction", "datatype": "FP32", "dims": [1]}]}
    x = np.array([[[0, 1, 2], [3, 4, 5]], [[1, 1, 1], [1, 1, 1]]], np.float32)
    cols = served_columns(signature, {"input": x}, {"prediction": np.array([[0.5], [2.0]], np.float32)})
    assert sorted(cols) == ["input.input.max", "input.input.mean", "input.input.min", "input.input.std",
                            "output.prediction"]
    np.testing.assert_allclose(cols["input.input.mean"], [2.5, 1.0])
    np.testing.assert_allclose(cols["input.input.max"], [5, 1])
    np.testing.assert_allclose(cols["input.input.std"], [np.std(np.arange(6)), 0])
    np.testing.assert_allclose(cols["output.prediction"], [0.5, 2.0])


def test_a_shift_of_the_predicted_classes_is_output_drift_alone(profiler, tmp_path, churn):
    """Same inputs, other answers (a model served with a wrong threshold, or the world's label mix moving)."""
    from mlops.monitoring._summaries import served_columns, split_columns

    signature = {"task": "classification", "inputs": [{"name": "numeric", "datatype": "FP32", "columns": DATA.numeric}],
                 "outputs": [{"name": "probabilities", "datatype": "FP32", "dims": [2]}], "classes": ["no", "yes"]}
    rng = np.random.default_rng(0)

    def answers(n, p_yes):  # probabilities whose argmax is "yes" for about p_yes of the rows
        yes = rng.random(n) < p_yes
        p = np.where(yes, rng.uniform(0.55, 0.95, n), rng.uniform(0.05, 0.45, n)).astype(np.float32)
        return np.stack([1 - p, p], axis=1)

    ref_rows = churn.iloc[:800]
    reference = profiler.profile(ref_rows.assign(**served_columns(signature, {}, {"probabilities": answers(800, 0.2)})))
    inputs, outputs = split_columns(profiler.columns(reference), DATA.features)
    assert inputs == DATA.features and outputs == ["output.class", "output.confidence"]
    served = churn.iloc[800:]
    _worker_window(tmp_path, profiler, signature, {"numeric": served[DATA.numeric].to_numpy(np.float32)},
                   {"probabilities": answers(len(served), 0.8)})
    [window] = drift_history(profiler, reference, tmp_path / "windows", DATA.numeric, MON.drift, outputs)
    assert window["drift"] == [] and window["output_drift"] == ["output.class"], window


def test_the_fast_profile_counts_what_a_single_whylogs_pass_counts():
    """mlops.monitoring._fastlog cuts columns into the values whylogs' homogeneous path takes and the rest, and
    merges: every count, type, frequent item and moment must be those of `why.log(frame)`; quantiles within KLL's
    error."""
    import pandas as pd
    import whylogs as why

    from mlops.monitoring._fastlog import log_frame

    rng = np.random.default_rng(7)
    n = 20_000
    x = rng.normal(10, 3, n)
    x[rng.random(n) < 0.05] = np.nan
    x[[3, 50, 900]] = [np.inf, -np.inf, np.inf]
    region = rng.choice(np.array(["north", "south", "east", "west"], dtype=object), n)
    region[rng.random(n) < 0.02] = None
    mixed = np.array([1, "a", 2.5, None] * (n // 4), dtype=object)  # no fast path: whylogs' own split
    frame = pd.DataFrame({"x": x, "clean": rng.random(n), "region": region, "plan": region.copy(), "mixed": mixed,
                          "k": rng.integers(0, 5, n), "flag": rng.random(n) < 0.3},
                         index=rng.permutation(n) + 1000)  # not a RangeIndex: the homogeneous path reads series[0]
    frame.loc[frame.index[~frame["plan"].isna()], "plan"] = "basic"  # all one string except the missing
    fast, slow = log_frame(frame).get_columns(), why.log(frame).view().get_columns()
    assert set(fast) == set(slow)
    for c in frame.columns:
        a, b = fast[c].to_summary_dict(), slow[c].to_summary_dict()
        assert set(a) == set(b), c
        for key, want in b.items():
            got = a[key]
            if want is None or got is None:
                assert got is want, (c, key)
            elif key.startswith("distribution/") and key not in ("distribution/n",):
                if key in ("distribution/mean", "distribution/stddev", "distribution/min", "distribution/max") or \
                        not isinstance(want, float) or not np.isfinite(want):
                    assert got == pytest.approx(want, rel=1e-9, nan_ok=True), (c, key)
                else:  # a quantile: within a few percent of the column's spread (KLL's rank error is ~1%)
                    assert abs(got - want) <= 0.05 * (b["distribution/max"] - b["distribution/min"]), (c, key)
            elif key.startswith("cardinality/"):  # a merged HLL sketch estimates within its own error (~1%)
                assert got == pytest.approx(want, rel=1e-2), (c, key)
            else:  # counts (n, null, nan, inf), types, frequent items: exactly
                assert got == want, (c, key)
    assert fast["x"].to_summary_dict()["counts/inf"] == 3
    assert fast["x"].to_summary_dict()["counts/null"] == int(frame["x"].isna().sum())
