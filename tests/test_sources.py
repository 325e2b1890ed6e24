"""The `sql` and `parquet_dataset` data sources: read through the flavor registry, their errors at config load
(each with its key and the database's or Arrow's own message), the secret rule for SQL URLs, and the shipped
warehouse recipe end to end through `mlops up` on real Prefect, Lightning and Triton."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from mlops._process import port_free
from mlops.data import make_source
from mlops.errors import ConfigError
from mlops.recipe import load, schema

ROOT = Path(__file__).resolve().parents[1]
CHURN = pd.read_csv(ROOT / "recipes" / "data" / "churn.csv")
COLUMNS = dict(target="churned", numeric=["tenure_months", "monthly_charges"], categorical=["region"])
PORTS = (4780, 8780, 8781, 8782)
PORT_OVERRIDES = (f"target.prefect.port={PORTS[0]}", f"serving.http_port={PORTS[1]}", f"serving.grpc_port={PORTS[2]}",
                  f"serving.metrics_port={PORTS[3]}")


def sql(**keys) -> schema.SqlData:
    return schema.SqlData(source="sql", **{**COLUMNS, **keys})


def dataset(path: str, **keys) -> schema.ParquetDatasetData:
    return schema.ParquetDatasetData(source="parquet_dataset", path=path, **{**COLUMNS, **keys})


def problems(overrides: list[str], project: Path = ROOT) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(overrides, project)
    return [p.render() for p in info.value.problems]


# ---------------------------------------------------------------- sql: reading
def test_the_warehouse_recipe_reads_its_duckdb_file_through_the_flavor():
    cfg = load(["recipe=warehouse"], ROOT)
    assert cfg.data.url == "duckdb:///recipes/data/warehouse.duckdb" and cfg.data.password_env is None
    source = make_source(cfg.data)
    assert type(source).__name__ == "SqlSource"
    frame = source.read(ROOT)
    # The query joins the two tables back into churn.csv's rows, in customer order.
    expected = CHURN.drop(columns="customer_id")[list(frame.columns)]
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert source.read(ROOT, nrows=7).shape == (7, 8)
    assert source.check(ROOT) == []


def test_the_default_url_is_a_duckdb_file_in_the_projects_data_folder(tmp_path):
    (tmp_path / "data").mkdir()
    import duckdb

    with duckdb.connect(str(tmp_path / "data" / "warehouse.duckdb")) as con:
        con.register("churn", CHURN)
        con.execute("CREATE TABLE customers AS SELECT * FROM churn")
    cfg = sql(table="customers")
    assert cfg.url == "duckdb:///data/warehouse.duckdb"
    assert make_source(cfg).read(tmp_path).shape == CHURN.shape
    assert make_source(cfg).check(tmp_path) == []


def test_duckdb_in_memory_queries_parquet_files_relative_to_the_project(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    CHURN.to_parquet(project / "data" / "churn.parquet")
    monkeypatch.chdir(tmp_path)  # mlops may run from anywhere: the path in the query is the project's
    cfg = sql(url="duckdb:///:memory:",
              query="SELECT * FROM read_parquet('data/churn.parquet') WHERE region = 'west' ORDER BY customer_id;")
    frame = make_source(cfg).read(project)
    assert len(frame) == (CHURN.region == "west").sum() and set(frame.region) == {"west"}
    assert make_source(cfg).read(project, nrows=2).customer_id.tolist() == \
        sorted(CHURN[CHURN.region == "west"].customer_id)[:2]
    assert make_source(cfg).check(project) == []


def test_any_sqlalchemy_url_reads_a_table_or_a_query(tmp_path):
    with sqlite3.connect(tmp_path / "shop.db") as con:
        CHURN.to_sql("churn", con, index=False)
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert make_source(sql(url=url, table="churn")).read(tmp_path).shape == CHURN.shape
    head = make_source(sql(url=url, table="main.churn")).read(tmp_path, nrows=3)  # schema.table
    assert head.customer_id.tolist() == CHURN.customer_id[:3].tolist()
    query = sql(url=url, query="SELECT * FROM churn WHERE support_calls > 3  -- the unhappy ones")
    assert len(make_source(query).read(tmp_path)) == (CHURN.support_calls > 3).sum()
    assert len(make_source(query).read(tmp_path, nrows=4)) == 4
    assert make_source(query).check(tmp_path) == []


# ---------------------------------------------------------------- sql: errors at config load
def test_a_missing_duckdb_file_is_a_problem_on_data_url():
    assert problems(["recipe=warehouse", "data.url=duckdb:///recipes/data/nope.duckdb"]) == [
        f"override 'data.url=duckdb:///recipes/data/nope.duckdb': `data.url` database file not found: "
        f"{ROOT}/recipes/data/nope.duckdb. Hint: a duckdb:/// path is relative to the project; create the database "
        "first, or query Parquet/CSV files without one: url: duckdb:///:memory: with query: SELECT * FROM "
        "read_parquet('...')"]


def test_an_unreachable_database_is_a_problem_on_data_url(tmp_path):
    url = f"sqlite:///{tmp_path}/no/such/folder/shop.db"
    assert make_source(sql(url=url, table="churn")).check(tmp_path) == [
        ("data.url", f"cannot connect to {url}: unable to open database file",
         "check the host, port and database name, that the server is running and reachable from here, and the "
         "credentials in the environment")]


def test_a_failing_query_shows_the_databases_message():
    assert problems(["recipe=warehouse", "data.query=SELECT tenure FROM customers"]) == [
        "override 'data.query=SELECT tenure FROM customers': `data.query` the query fails: Binder Error: Referenced "
        "column \"tenure\" not found in FROM clause!. Hint: run it in the database's own client to see the whole "
        "error, then fix data.query"]


def test_a_missing_table_shows_the_databases_message():
    assert problems(["recipe=warehouse", "~data.query", "+data.table=customer"]) == [
        "override '+data.table=customer': `data.table` cannot read table 'customer': Catalog Error: Table with name "
        "customer does not exist!. Hint: check the name (schema.table) and that this user may read it"]


def test_a_table_without_the_recipes_columns_names_them():
    # `customers` has who they are, not what they did: no target, two numeric columns missing.
    assert problems(["recipe=warehouse", "~data.query", "+data.table=customers"]) == [
        "recipes/warehouse.yaml:18: `data.target` column 'churned' is not in the data; its columns are: customer_id, "
        "tenure_months, contract, payment_method, region. Hint: set data.target to the column you want to predict",
        "recipes/warehouse.yaml:19: `data.numeric` columns not in the data: 'monthly_charges', 'support_calls', "
        "'data_gb'. Hint: column names are case-sensitive; the data has: customer_id, tenure_months, contract, "
        "payment_method, region"]


def test_query_and_table_are_one_or_the_other():
    assert problems(["recipe=warehouse", "+data.table=customers"]) == [
        "recipes/warehouse.yaml:8: `data` source=sql needs exactly one of `query` (a SELECT) or `table` (a table or "
        "view name), not both."]
    assert problems(["recipe=warehouse", "~data.query"]) == [
        "recipes/warehouse.yaml:8: `data` source=sql needs exactly one of `query` (a SELECT) or `table` (a table or "
        "view name)."]


@pytest.mark.skipif(any(d.metadata["Name"] == "snowflake-sqlalchemy" for d in metadata.distributions()),
                    reason="the snowflake dialect is installed: see the test below")
def test_snowflake_without_its_extra_says_what_to_install():
    cfg = sql(url="snowflake://analyst@acme-xy12345/shop/public?warehouse=reporting&role=analyst", table="churn")
    assert make_source(cfg).check(ROOT) == [
        ("data.url", "no SQLAlchemy dialect for 'snowflake' is installed",
         "pip install 'mlops[snowflake]'  (snowflake-sqlalchemy)")]


def test_a_snowflake_url_parses_and_its_dialect_loads_when_installed():
    pytest.importorskip("snowflake.sqlalchemy", reason="pip install 'mlops[snowflake]' to run this one")
    cfg = sql(url="snowflake://analyst@acme-xy12345/shop/public?warehouse=reporting", table="churn")
    url = make_source(cfg).url(ROOT)
    assert (url.host, url.database, url.query["warehouse"]) == ("acme-xy12345", "shop/public", "reporting")
    assert url.get_dialect().name == "snowflake"


@pytest.mark.skipif(any(d.metadata["Name"] in ("psycopg2", "psycopg2-binary") for d in metadata.distributions()),
                    reason="psycopg2 is installed")
def test_a_missing_driver_is_named_with_the_way_to_pick_another():
    assert make_source(sql(url="postgresql://app@127.0.0.1:5432/shop", table="churn")).check(ROOT) == [
        ("data.url", "the postgresql driver is not installed: No module named 'psycopg2'",
         "pip install the driver, or name an installed one in the URL (postgresql+<driver>://)")]


# ---------------------------------------------------------------- sql: credentials
def test_a_literal_password_in_the_url_is_rejected_naming_the_environment_way():
    assert problems(["recipe=warehouse", "data.url=postgresql://app:hunter2@db.internal/shop"]) == [
        "override 'data.url=***': `data.url` the URL holds a literal password: "
        "credentials never go in the recipe; put it in an environment variable and write the URL as "
        "postgresql://app:${oc.env:VAR}@db.internal/..., or leave it out of the URL and set data.password_env: VAR."]
    with pytest.raises(ValueError, match="secret parameter"):
        sql(url="duckdb:///md:shop?motherduck_token=abc123", table="churn")


def test_a_password_from_the_environment_never_enters_the_config(monkeypatch, tmp_path):
    monkeypatch.setenv("SHOP_DB_PASSWORD", "correct-horse-battery")
    cfg = load(["recipe=warehouse", "data.url=postgresql://app:${oc.env:SHOP_DB_PASSWORD}@db.internal:5432/shop"],
               ROOT, check_data=False)
    assert (cfg.data.url, cfg.data.password_env) == ("postgresql://app@db.internal:5432/shop", "SHOP_DB_PASSWORD")
    assert "correct-horse-battery" not in cfg.model_dump_json()
    # The source puts it back only into the URL it connects with.
    source = make_source(cfg.data)
    assert source._with_password(source.url(tmp_path)).password == "correct-horse-battery"
    monkeypatch.delenv("SHOP_DB_PASSWORD")
    source = make_source(sql(url=f"sqlite:///{tmp_path / 'shop.db'}", table="churn", password_env="SHOP_DB_PASSWORD"))
    assert source.check(tmp_path) == [("data.password_env", "the environment variable SHOP_DB_PASSWORD is not set",
                                       "export SHOP_DB_PASSWORD=<the database password> before running mlops")]


# ---------------------------------------------------------------- parquet_dataset
@pytest.fixture
def partitioned(tmp_path) -> Path:
    """churn.csv as a hive-partitioned dataset: year=2024/region=<r>/part-0.parquet, plus Spark's marker file."""
    root = tmp_path / "data" / "events"
    for region, rows in CHURN.groupby("region"):
        part = root / "year=2024" / f"region={region}"
        part.mkdir(parents=True)
        rows.drop(columns="region").to_parquet(part / "part-0.parquet", index=False)
    (root / "_SUCCESS").write_text("")
    return tmp_path


def test_a_hive_partitioned_folder_reads_with_its_partition_columns(partitioned):
    source = make_source(dataset("data/events", numeric=["tenure_months", "year"]))
    assert type(source).__name__ == "ParquetDatasetSource"
    frame = source.read(partitioned)
    assert len(frame) == len(CHURN) and set(frame.year) == {2024}
    assert frame.groupby("region").size().to_dict() == CHURN.groupby("region").size().to_dict()
    assert source.read(partitioned, nrows=5).shape == (5, len(CHURN.columns) + 1)
    assert source.check(partitioned) == []


def test_a_prefix_reads_the_files_whose_names_start_with_it(partitioned):
    frame = make_source(dataset("data/events/year=2024/region=e")).read(partitioned)
    assert set(frame.region) == {"east"} and len(frame) == (CHURN.region == "east").sum()


def test_an_fsspec_url_reads_through_its_filesystem(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    for i, rows in enumerate((CHURN[:600], CHURN[600:])):
        with fs.open(f"/sources-test/churn/part-{i}.parquet", "wb") as fh:
            rows.to_parquet(fh, index=False)
    try:
        source = make_source(dataset("memory://sources-test/churn"))
        assert len(source.read(tmp_path)) == len(CHURN) and source.check(tmp_path) == []
    finally:
        fs.rm("/sources-test", recursive=True)


def test_a_parquet_file_reads_as_pandas_reads_it(tmp_path):
    """The file source and the snapshots read Parquet row group by row group, freeing Arrow memory as they go
    (mlops.data._source.parquet_frame): the frame must be pd.read_parquet's, index, nulls and types included."""
    import numpy as np

    from mlops.data._source import parquet_frame

    n = 2500
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.standard_normal(n), "i": rng.integers(0, 5, n), "s": rng.choice(["a", "b", None], n),
                          "t": pd.date_range("2026-01-01", periods=n, freq="h"), "b": rng.random(n) < 0.5},
                         index=pd.Index(np.arange(n) * 3, name="row"))
    frame.loc[frame.index[::7], "x"] = np.nan
    for index, name in ((True, "indexed.parquet"), (False, "plain.parquet")):
        path = tmp_path / name
        frame.to_parquet(path, index=index, row_group_size=1000)  # three row groups
        pd.testing.assert_frame_equal(parquet_frame(path), pd.read_parquet(path))
        with path.open("rb") as fh:
            pd.testing.assert_frame_equal(parquet_frame(fh), pd.read_parquet(path))
        pd.testing.assert_frame_equal(parquet_frame(path, ["s", "x", "nope"]), pd.read_parquet(path, columns=["x", "s"]))
    empty = tmp_path / "empty.parquet"
    frame.iloc[:0].to_parquet(empty, index=False)
    pd.testing.assert_frame_equal(parquet_frame(empty), pd.read_parquet(empty))


def test_a_snapshot_written_a_row_group_at_a_time_reads_back_as_to_parquet_writes_it(tmp_path, monkeypatch):
    import numpy as np

    from mlops.data import _ingest, write_snapshot

    monkeypatch.setattr(_ingest, "SNAPSHOT_ROW_GROUP", 700)
    n = 2500
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"x": rng.standard_normal(n), "i": rng.integers(0, 5, n), "s": [None] * 800 + ["a"] * (n - 800),
                          "t": pd.date_range("2026-01-01", periods=n, freq="h")}, index=np.arange(n) + 7)
    frame.loc[frame.index[::9], "x"] = np.nan
    for part in (frame, frame.iloc[:0]):
        write_snapshot(part, tmp_path / "ours.parquet")
        part.to_parquet(tmp_path / "theirs.parquet", index=False)
        ours, theirs = pd.read_parquet(tmp_path / "ours.parquet"), pd.read_parquet(tmp_path / "theirs.parquet")
        pd.testing.assert_frame_equal(ours, theirs)
    assert pd.api.types.is_object_dtype(ours["s"])  # a first row group of nulls only keeps the column's type


def test_a_fingerprint_hashed_in_slices_is_the_whole_frames(monkeypatch):
    """fingerprint hashes a slice of rows at a time, and `columns` picks columns without copying the frame:
    the digest must be the one-shot hash of the whole frame (or of frame[columns]), so snapshots and training
    keys made before stay valid. Floats with NaN, strings with None, ints, a categorical, a mixed column."""
    import hashlib

    import numpy as np

    from mlops.data import _ingest, fingerprint

    def whole(frame: pd.DataFrame) -> str:
        h = hashlib.sha256()
        h.update(repr(list(map(str, frame.columns))).encode())
        h.update(repr([str(t) for t in frame.dtypes]).encode())
        h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
        return "sha256:" + h.hexdigest()

    n = 1003
    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"a": rng.standard_normal(n), "s": rng.choice(["x", "y", None], n), "i": rng.integers(0, 5, n),
                          "c": pd.Categorical(rng.choice(["p", "q"], n)),
                          "m": [[1, "1", None, 2.5][k % 4] for k in range(n)]}, index=rng.permutation(n))
    frame.loc[frame.index[:10], "a"] = np.nan
    for rows in (1, 100, 1000, 10**6):
        monkeypatch.setattr(_ingest, "FINGERPRINT_ROWS", rows)
        assert fingerprint(frame) == whole(frame)
        assert fingerprint(frame, ["s", "a", "c"]) == whole(frame[["s", "a", "c"]])
        assert fingerprint(frame.iloc[:0]) == whole(frame.iloc[:0])
    assert fingerprint(frame, ["s", "a"]) != fingerprint(frame, ["a", "s"])


def test_a_missing_folder_is_a_problem_on_data_path(tmp_path):
    assert make_source(dataset("data/nope")).check(tmp_path) == [
        ("data.path", f"no folder, and no Parquet files whose names start with it, at {tmp_path}/data/nope",
         "a relative path is relative to the project folder; name a folder of .parquet files (hive partitions like "
         "year=2024/ allowed), a prefix of their names, or an fsspec URL")]


def test_a_folder_without_parquet_files_is_a_problem(tmp_path):
    (tmp_path / "data" / "empty").mkdir(parents=True)
    (tmp_path / "data" / "empty" / "_SUCCESS").write_text("")
    assert make_source(dataset("data/empty")).check(tmp_path)[0][:2] == (
        "data.path", f"no Parquet files under {tmp_path}/data/empty")
    (tmp_path / "data" / "csv").mkdir()
    CHURN.to_csv(tmp_path / "data" / "csv" / "churn.csv")
    (key, message, _hint), = make_source(dataset("data/csv")).check(tmp_path)
    assert key == "data.path" and message.startswith("cannot be read as a Parquet dataset: ")
    assert "Parquet magic bytes not found" in message


def test_a_dataset_without_the_recipes_columns_names_them(partitioned):
    assert make_source(dataset("data/events", categorical=["segment"])).check(partitioned) == [
        ("data.categorical", "columns not in the data: 'segment'",
         "column names are case-sensitive; the data has: customer_id, tenure_months, monthly_charges, support_calls, "
         "data_gb, contract, payment_method, churned, year, region")]


# ---------------------------------------------------------------- end to end
def mlops(project: Path, pythonpath: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args, *PORT_OVERRIDES], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_up_warehouse_reaches_ready_and_down_stops_it(tmp_path, sources_path):
    busy = [p for p in PORTS if not port_free("127.0.0.1", p)]
    assert not busy, f"ports {busy} are in use"
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    try:
        proc = mlops(tmp_path, sources_path, "up", "recipe=warehouse", "model.max_epochs=4")
        assert proc.returncode == 0, proc.stderr
        assert "warehouse version 1 is READY" in proc.stderr
        st = json.loads(mlops(tmp_path, sources_path, "status", "recipe=warehouse", "--json").stdout)
        assert {"name": "warehouse", "version": "1", "state": "READY"} in st["models"]
    finally:
        down = mlops(tmp_path, sources_path, "down", "recipe=warehouse")
    assert down.returncode == 0, down.stderr
    assert all(port_free("127.0.0.1", p) for p in PORTS)
