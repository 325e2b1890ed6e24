"""`data.incremental`, `data.window` and `model.init_from: champion`, in process: real DuckDB, Arrow, Lightning and
the model store; no services. Rows are appended to the source between ingests, as a warehouse would get them."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from mlops import steps
from mlops.errors import ConfigError, DataError
from mlops.recipe import load
from mlops.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
START = pd.Timestamp("2024-01-01")


def _rows(churn: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    """Rows lo..hi of churn.csv, row i updated i hours after START."""
    part = churn.iloc[lo:hi].copy()
    part["updated_at"] = [START + pd.Timedelta(hours=i) for i in range(lo, hi)]
    return part


def _db(path: Path, frame: pd.DataFrame) -> None:
    with duckdb.connect(str(path)) as con:
        con.register("f", frame)
        if con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'events'").fetchone()[0]:
            con.execute("INSERT INTO events SELECT * FROM f")
        else:
            con.execute("CREATE TABLE events AS SELECT * FROM f")


def _sql_stack(tmp_path: Path, *overrides: str, check_data: bool = False) -> Stack:
    cfg = load(["recipe=warehouse", f"data.url=duckdb:///{tmp_path / 'w.duckdb'}", "data.query=SELECT * FROM events",
                "+data.incremental.column=updated_at", "data.checks.min_rows=100", "maturity=1",
                "model.max_epochs=2", "monitoring=none", f"target.state_dir={tmp_path / 'state'}", *overrides],
               ROOT, check_data=check_data)
    return Stack(cfg, ROOT)


def _ingest(stack: Stack, full: bool = False):
    snapshot = steps.ingest(stack, full)
    if snapshot.incremental.get("new_rows") != 0:
        steps.validate(stack, snapshot)
        steps.record_snapshot(stack, snapshot, "test")
    return snapshot


def test_each_ingest_reads_only_the_rows_past_the_watermark(tmp_path, churn):
    _db(tmp_path / "w.duckdb", _rows(churn, 0, 600))
    stack = _sql_stack(tmp_path)
    first = _ingest(stack)
    assert first.rows == 600 and first.incremental["after"] is None
    assert first.incremental["watermark"] == (START + pd.Timedelta(hours=599)).isoformat()

    _db(tmp_path / "w.duckdb", _rows(churn, 600, 680))  # rows arrive between two ingests
    second = _ingest(stack)
    assert (second.rows, second.incremental["new_rows"]) == (80, 80)
    assert second.incremental["after"] == first.incremental["watermark"]
    assert second.incremental["chain"] == first.incremental["chain"]
    new = pd.read_parquet(second.path)
    assert new["updated_at"].min() == START + pd.Timedelta(hours=600) and len(new) == 80

    # Nothing past the watermark: no new snapshot; the chain's latest comes back with new_rows 0.
    again = steps.ingest(stack)
    assert again.incremental["new_rows"] == 0 and again.fingerprint == second.fingerprint
    assert [d["fingerprint"] for d in steps.chain(stack)] == [first.fingerprint, second.fingerprint]
    index = steps.validated_snapshots(stack)
    assert index[second.fingerprint]["incremental"]["watermark"] == (START + pd.Timedelta(hours=679)).isoformat()

    # The training set is the union of the chain (no data.window), its snapshots in the lineage.
    data = steps.training_data(stack, second)
    assert data.rows == 680 and data.window["rule"] == "all"
    assert [(s["fingerprint"], s["rows"]) for s in data.window["snapshots"]] == [(first.fingerprint, 600),
                                                                                (second.fingerprint, 80)]
    assert list(pd.read_parquet(data.path).columns) == [*stack.cfg.data.features, "churned"]


def test_a_small_delta_is_validated_as_rows_and_the_window_as_a_training_set(tmp_path, churn):
    _db(tmp_path / "w.duckdb", _rows(churn, 0, 600))
    stack = _sql_stack(tmp_path, "data.checks.min_rows=500")
    _ingest(stack)
    _db(tmp_path / "w.duckdb", _rows(churn, 600, 603))  # 3 rows: fewer than min_rows, maybe one class
    delta = _ingest(stack)
    assert delta.rows == 3
    small = _sql_stack(tmp_path, "data.checks.min_rows=500", "+data.window.rows=200")
    with pytest.raises(DataError, match=r"training window .* has 200 rows, fewer than data.checks.min_rows=500"):
        steps.training_data(small, delta)


def test_the_window_selects_the_latest_rows_or_days(tmp_path, churn):
    _db(tmp_path / "w.duckdb", _rows(churn, 0, 600))
    stack = _sql_stack(tmp_path)
    first = _ingest(stack)
    _db(tmp_path / "w.duckdb", _rows(churn, 600, 700))
    second = _ingest(stack)

    by_rows = steps.training_data(_sql_stack(tmp_path, "+data.window.rows=250"), second)
    assert by_rows.rows == 250
    assert [(s["fingerprint"], s["rows"]) for s in by_rows.window["snapshots"]] == [(first.fingerprint, 150),
                                                                                   (second.fingerprint, 100)]
    assert by_rows.window["rule"] == {"rows": 250}
    expected = _rows(churn, 450, 700)[[*stack.cfg.data.features, "churned"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_parquet(by_rows.path), expected, check_dtype=False)

    # Inside the latest snapshot only: the older one is not even read.
    recent = steps.training_data(_sql_stack(tmp_path, "+data.window.rows=100"), second)
    assert [s["fingerprint"] for s in recent.window["snapshots"]] == [second.fingerprint]

    # 5 days = 120 hours back from the newest row (hour 699): hours 579..699.
    by_days = steps.training_data(_sql_stack(tmp_path, "+data.window.days=5"), second)
    assert by_days.rows == 121 and by_days.window["snapshots"][0]["rows"] == 21
    assert by_days.key != by_rows.key != steps.training_data(stack, second).key


def test_full_refresh_rereads_everything_and_starts_a_new_chain(tmp_path, churn):
    _db(tmp_path / "w.duckdb", _rows(churn, 0, 600))
    stack = _sql_stack(tmp_path)
    first = _ingest(stack)
    _db(tmp_path / "w.duckdb", _rows(churn, 600, 650))
    _ingest(stack)
    full = _ingest(stack, full=True)
    assert full.rows == 650 and full.incremental["after"] is None
    assert full.incremental["chain"] != first.incremental["chain"]
    assert [d["fingerprint"] for d in steps.chain(stack)] == [full.fingerprint]
    assert steps.training_data(stack, full).window["snapshots"] == [
        {"fingerprint": full.fingerprint, "watermark": full.incremental["watermark"], "rows": 650}]
    # The same rows read in full again are a new chain too (the snapshot is recorded again, last).
    same = _ingest(stack, full=True)
    assert same.fingerprint == full.fingerprint and same.incremental["chain"] != full.incremental["chain"]
    assert [d["incremental"]["chain"] for d in steps.chain(stack)] == [same.incremental["chain"]]
    full = same
    # The next incremental read continues the new chain.
    _db(tmp_path / "w.duckdb", _rows(churn, 650, 660))
    nxt = _ingest(stack)
    assert nxt.rows == 10 and nxt.incremental["chain"] == full.incremental["chain"]


def test_level_0_reads_everything(tmp_path, churn):
    _db(tmp_path / "w.duckdb", _rows(churn, 0, 600))
    stack = _sql_stack(tmp_path, "maturity=0")
    snapshot = steps.ingest(stack)
    assert snapshot.rows == 600 and snapshot.incremental == {}


def test_parquet_dataset_and_csv_sources_read_incrementally(tmp_path, churn):
    folder = tmp_path / "events"
    folder.mkdir()
    _rows(churn, 0, 300).to_parquet(folder / "part-0.parquet")
    base = ["recipe=churn", "+data.incremental.column=updated_at", "data.checks.min_rows=50", "data.checks.max_null_fraction=0.3", "maturity=1",
            "monitoring=none", f"target.state_dir={tmp_path / 'state'}"]
    cfg = load([*base, "data.source=parquet_dataset", f"data.path={folder}"], ROOT)
    stack = Stack(cfg, ROOT)
    assert _ingest(stack).rows == 300
    _rows(churn, 300, 340).to_parquet(folder / "part-1.parquet")
    assert _ingest(stack).rows == 40

    pq = tmp_path / "rows.parquet"  # source: file, Parquet: the filter goes to the reader (row-group statistics)
    _rows(churn, 0, 300).to_parquet(pq)
    stack = Stack(load([*base, f"data.path={pq}", f"target.state_dir={tmp_path / 'state-pq'}"], ROOT), ROOT)
    assert _ingest(stack).rows == 300
    pd.concat([_rows(churn, 0, 300), _rows(churn, 300, 330)]).to_parquet(pq)
    assert _ingest(stack).rows == 30

    csv = tmp_path / "rows.csv"
    _rows(churn, 0, 300).to_csv(csv, index=False)
    stack = Stack(load([*base, f"data.path={csv}", f"target.state_dir={tmp_path / 'state-csv'}"], ROOT), ROOT)
    assert _ingest(stack).incremental["watermark"] == (START + pd.Timedelta(hours=299)).isoformat()
    _rows(churn, 300, 320).to_csv(csv, mode="a", header=False, index=False)
    assert _ingest(stack).rows == 20


def test_up_with_no_rows_past_the_watermark_keeps_the_champion_and_says_so(tmp_path, churn, inprocess_server):
    from mlops.flows import _pipeline

    _db(tmp_path / "w.duckdb", _rows(churn, 0, 600))
    stack = _sql_stack(tmp_path, "serving=inprocess")
    first = _ingest(stack)
    assert _pipeline._no_new_rows(stack, first) is None  # new rows: train
    ckpt = tmp_path / "w.ckpt"
    ckpt.write_bytes(b"weights")
    mv = stack.model_store.register("warehouse", {"model.ckpt": ckpt}, {"key": "k", "metrics": {"test_acc": 0.8}})
    stack.model_store.promote("warehouse", mv.version, by="test")
    nothing = steps.ingest(stack)
    result = _pipeline._no_new_rows(stack, nothing)
    assert result["new_version"] is False and result["version"] == mv.version and result["new_rows"] == 0
    assert result["message"] == ("no rows past the watermark updated_at=2024-01-25T23:00:00 "
                                 "<data.incremental.column>: no new snapshot, nothing retrained")
    assert steps.validated_snapshots(stack).keys() == {first.fingerprint}


# ---------------------------------------------------------------- config errors (exit 2, file:line)
def _problems(overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(overrides, ROOT)
    assert exc.value.exit_code == 2
    return [p.render() for p in exc.value.problems]


def test_config_errors_name_the_key_and_line(tmp_path, churn):
    _db(tmp_path / "w.duckdb", _rows(churn, 0, 100))
    url = f"data.url=duckdb:///{tmp_path / 'w.duckdb'}"
    [unknown] = _problems(["recipe=warehouse", url, "data.query=SELECT * FROM events",
                           "+data.incremental.column=updatd_at"])
    assert unknown.startswith("override '+data.incremental.column=updatd_at': `data.incremental.column` column "
                              "'updatd_at' is not in the data; its columns are: ")
    [window] = _problems(["recipe=churn", "+data.window.days=7"])
    assert window.startswith("recipes/churn.yaml:7: `data` data.window selects over incremental snapshots and "
                             "needs data.incremental: {column: <an updated-at timestamp column>}")
    [both] = _problems(["recipe=churn", "+data.incremental.column=x", "+data.window.days=7", "+data.window.rows=9"])
    assert "give exactly one of `rows` (the latest N rows) or `days` (the last D days)" in both
    [bundled] = _problems(["recipe=breast_cancer", "+data.incremental.column=x"])
    assert "source=sklearn is a fixed bundled dataset" in bundled and bundled.startswith("recipes/breast_cancer.yaml:")
    [init] = _problems(["recipe=churn", "model.init_from=best"])
    assert init.startswith("override 'model.init_from=best': `model.init_from`") and "'none' or 'champion'" in init


def test_a_days_window_needs_a_timestamp_column(tmp_path, churn):
    frame = _rows(churn, 0, 200)
    frame["updated_at"] = range(200)
    _db(tmp_path / "w.duckdb", frame)
    [problem] = _problems(["recipe=warehouse", f"data.url=duckdb:///{tmp_path / 'w.duckdb'}",
                           "data.query=SELECT * FROM events", "+data.incremental.column=updated_at",
                           "+data.window.days=3"])
    assert problem == ("override '+data.window.days=3': `data.window.days` counts days of data.incremental.column="
                       "'updated_at', which holds int64 values like 0, not timestamps. Hint: use data.window.rows "
                       "for a numeric column, or an updated_at timestamp column")
    stack = _sql_stack(tmp_path, "+data.window.days=3")  # the training step says so too (a config not checked)
    with pytest.raises(ConfigError, match=r"`data.window.days` counts days of data.incremental.column='updated_at', "
                                          r"which holds int64 values"):
        steps.training_data(stack, _ingest(stack))


# ---------------------------------------------------------------- warm start (model.init_from: champion)
def _fit_register(stack: Stack, snapshot):
    try:
        trained = steps.train(stack, snapshot)
        metrics = steps.evaluate(stack, snapshot, trained)
        return trained, steps.register(stack, snapshot, trained, metrics)
    finally:
        steps.end_open_runs("FAILED")


def _first_epoch_loss(trained) -> float:
    import json

    return json.loads((Path(trained.dir) / "history.json").read_text())[0]["train_loss"]


def test_init_from_champion_warm_starts_on_the_new_window(tmp_path, churn):
    _db(tmp_path / "w.duckdb", _rows(churn, 0, 700))
    warm = ("model.init_from=champion", "model.max_epochs=3")
    stack = _sql_stack(tmp_path, *warm)
    first = steps.training_data(stack, _ingest(stack))
    assert first.warm_from is None  # no champion yet: from scratch, and the lineage says so
    _, v1 = _fit_register(stack, first)
    assert stack.model_store.get("warehouse", v1.version).lineage["warm_start"] == {"from_version": None}
    stack.model_store.promote("warehouse", v1.version, by="test")

    _db(tmp_path / "w.duckdb", _rows(churn, 700, 1000))
    delta = _ingest(stack)
    data = steps.training_data(stack, delta)
    assert data.warm_from == v1.version and data.rows == 1000
    trained, v2 = _fit_register(stack, data)
    lineage = stack.model_store.get("warehouse", v2.version).lineage
    assert lineage["warm_start"] == {"from_version": v1.version}
    assert [s["fingerprint"] for s in lineage["data_window"]["snapshots"]] == [first.window["snapshots"][0][
        "fingerprint"], delta.fingerprint]

    scratch_stack = _sql_stack(tmp_path, "model.max_epochs=3", f"target.state_dir={tmp_path / 'scratch'}")
    scratch = steps.training_data(scratch_stack, data.model_copy(update={"warm_from": None}))
    scratch_trained = steps.train(scratch_stack, scratch.model_copy(update={"key": "scratch", "warm_from": None}))
    steps.end_open_runs("FINISHED")
    assert _first_epoch_loss(trained) < _first_epoch_loss(scratch_trained)

    # The champion trained this config on this very window: no warm start from itself, the same key.
    stack.model_store.promote("warehouse", v2.version, by="test")
    assert steps.training_data(stack, delta).key == data.key

    # Another architecture cannot load the champion's weights: exit 2, naming what differs.
    other = _sql_stack(tmp_path, *warm, "model.hidden=[8]")
    with pytest.raises(ConfigError, match=r"`model.init_from` is `champion`, but the champion .* does not have this "
                                          r"model's architecture: hidden: champion \[32, 16\], recipe \[8\]"):
        _fit_register(other, steps.training_data(other, delta))


def test_data_refresh_has_help_with_an_example():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "data", "refresh", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Example: mlops data refresh" in proc.stdout and "--full" in proc.stdout


# ---------------------------------------------------------------- live: level 3, incremental + warm start

LIVE_PORTS = (4640, 8640, 8641, 8642)
LIVE = ["recipe=warehouse_incremental", f"target.prefect.port={LIVE_PORTS[0]}", f"serving.http_port={LIVE_PORTS[1]}",
        f"serving.grpc_port={LIVE_PORTS[2]}", f"serving.metrics_port={LIVE_PORTS[3]}", "model.max_epochs=3",
        "maturity.data_interval_s=86400", "monitoring=none"]


def _append_customers(db: Path, n: int) -> None:
    """n new customers (copies of the first n, new ids), written an hour apart after everything there."""
    with duckdb.connect(str(db)) as con:
        con.execute(f"CREATE TEMP TABLE new AS SELECT customer_id, 'N' || customer_id AS id FROM customers "
                    f"ORDER BY customer_id LIMIT {n}")
        con.execute("INSERT INTO customers SELECT n.id, c.tenure_months, c.contract, c.payment_method, c.region "
                    "FROM customers c JOIN new n USING (customer_id)")
        con.execute("INSERT INTO usage SELECT n.id, u.monthly_charges, u.support_calls, u.data_gb, u.churned, "
                    "(SELECT max(updated_at) FROM usage) + to_hours(CAST(row_number() OVER (ORDER BY n.id) AS "
                    "BIGINT)) FROM usage u JOIN new n USING (customer_id)")


@pytest.mark.e2e
def test_level_3_refresh_ingests_only_new_rows_warm_starts_and_gates(tmp_path, sources_path):
    import json
    import os
    import subprocess
    import sys
    import time

    from mlops._process import port_free

    assert all(port_free("127.0.0.1", p) for p in LIVE_PORTS), f"ports {LIVE_PORTS} are in use"
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, "PYTHONPATH": sources_path}

    def mlops(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "mlops.cli", *args, *LIVE], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"mlops {' '.join(args)}: {proc.stderr}"
        return proc

    def train_runs() -> list[dict]:
        return [r for r in json.loads(mlops("runs", "--json").stdout) if r.get("flow") == "mlops-train"]

    try:
        assert "warehouse_incremental version 1 is READY" in mlops("up").stderr
        _append_customers(tmp_path / "recipes/data/warehouse.duckdb", 150)
        refreshed = json.loads(mlops("data", "refresh", "--json").stdout)
        assert refreshed["new"] and refreshed["rows"] == 150 and refreshed["incremental"]["after"] == \
            "2024-02-19T23:00:00"
        deadline = time.monotonic() + 240
        while not (done := [r for r in train_runs() if r.get("outcome") in ("deployed", "rejected")]):
            assert time.monotonic() < deadline, f"no gated training run: {train_runs()}"
            time.sleep(2)
        assert done[0]["version"] == 2 and "gate" in done[0]
        stack = Stack(load([*LIVE], tmp_path, check_data=False), tmp_path)
        lineage = stack.model_store.get("warehouse_incremental", 2).lineage
        assert lineage["warm_start"] == {"from_version": 1}
        window = lineage["data_window"]
        assert window["rows"] == 1000 and [s["rows"] for s in window["snapshots"]][-1] == 150
        again = json.loads(mlops("data", "refresh", "--json").stdout)
        assert again["new"] is False and again["new_rows"] == 0 and "no rows past the watermark" in again["message"]
    finally:
        subprocess.run([sys.executable, "-m", "mlops.cli", "down", *LIVE], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert all(port_free("127.0.0.1", p) for p in LIVE_PORTS)


class _Target:
    """What `build_plan` asks of a target: its state directory and the services it would start."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir

    def planned_services(self) -> list[dict[str, str]]:
        return [{"name": "prefect", "action": "start", "url": "http://127.0.0.1:1/api"},
                {"name": "triton", "action": "start", "url": "http://127.0.0.1:2"}]


def test_the_plan_of_an_incremental_recipe_says_what_ingest_reads_and_claims_no_key(tmp_path, churn):
    """`mlops plan` at level 1+ with data.incremental: the training data is a window over snapshots that only
    exist once the new rows are read, so the plan names the watermark it reads past and no training key (it used
    to fingerprint a full read, a key `up` never trains under)."""
    from mlops.plan import build_plan

    _db(tmp_path / "w.duckdb", _rows(churn, 0, 600))
    stack = _sql_stack(tmp_path)

    def actions() -> tuple[dict[str, str], object]:
        plan = build_plan(stack.cfg, ROOT, _Target(stack.state_dir))
        return {s["name"]: s["action"] for s in plan["steps"]}, plan["training_key"]

    before, key = actions()
    assert key is None and before["ingest"] == "read every row (no snapshot yet: a new updated_at watermark chain)"
    assert "on data.window all of the chain's snapshots" in before["train"] and "told once the new rows" in before["train"]
    first = _ingest(stack)
    after, _ = actions()
    assert after["ingest"].startswith(f"read the rows with updated_at > {first.incremental['watermark']} "
                                      f"(chain {first.incremental['chain']}, 1 snapshot(s))")
    level0 = stack.cfg.model_copy(update={"maturity": stack.cfg.maturity.model_copy(update={"level": 0})})
    assert build_plan(level0, ROOT, _Target(stack.state_dir))["training_key"]  # level 0 reads everything: the key of a full read is the one `up` trains under


def test_the_plan_at_level_0_with_init_from_champion_names_the_key_up_trains_under(tmp_path, churn):
    """The champion's version is in a warm start's training key, so `mlops plan` must put it there too (it used to
    show the cold key: one `up` never trains under once there is a champion)."""
    from mlops.plan import build_plan

    _db(tmp_path / "w.duckdb", _rows(churn, 0, 600))
    stack = _sql_stack(tmp_path, "model.init_from=champion", "maturity=0")

    first = steps.training_data(stack, _ingest(stack))
    assert build_plan(stack.cfg, ROOT, _Target(stack.state_dir))["training_key"] == first.key  # no champion yet: the cold key
    _, v1 = _fit_register(stack, first)
    stack.model_store.promote("warehouse", v1.version, by="test")
    assert build_plan(stack.cfg, ROOT, _Target(stack.state_dir))["training_key"] == first.key  # the champion is this very fit

    _db(tmp_path / "w.duckdb", _rows(churn, 600, 800))
    planned = build_plan(stack.cfg, ROOT, _Target(stack.state_dir))["training_key"]
    data = steps.training_data(stack, _ingest(stack))
    assert data.warm_from == v1.version and planned == data.key != first.key
