"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inprocess_server(monkeypatch):
    """The test-only `inprocess` server flavor (tests/_inprocess_server.py), registered as an installed plugin
    would be: in the flavor registry, so `serving=inprocess` composes and `schema.Config` validates it.

    `Config` is rebuilt from the registry (schema.config_class is cached): before, so the union has the new
    member, and after, so later tests get the built-in one again. `load()` reads `schema.Config` at call time;
    a module that imported `Config` by name keeps the old class, which only annotations use in the code the
    steps run."""
    from mlops import flavors
    from mlops.recipe import schema
    from tests._inprocess_server import FLAVOR

    with monkeypatch.context() as m:
        m.setitem(flavors.registered()["server"], "inprocess", FLAVOR)
        schema.config_class.cache_clear()
        try:
            yield FLAVOR
        finally:
            schema.config_class.cache_clear()
    schema.config_class.cache_clear()  # whatever was built while the flavor was registered is gone


@pytest.fixture(autouse=True, scope="session")
def builtin_sources():
    """The `sql` and `parquet_dataset` data sources, registered the way their pyproject entry points register them
    once the venv is installed from this tree (`pip install --no-deps -e .`); after that, this changes nothing.
    Until then a shipped recipe (recipes/warehouse.yaml) would not validate in-process. CLI subprocesses don't see
    this: tests/test_sources.py gives them the entry points on PYTHONPATH (`sources_path`)."""
    from mlops import flavors
    from mlops.recipe import builtin, schema

    missing = [f for f in (builtin.SQL, builtin.PARQUET_DATASET, builtin.IMAGE_FOLDER, builtin.IMAGE_TABLE,
                           builtin.SKLEARN_IMAGES, builtin.IMAGE_CLASSIFIER)
               if f.name not in flavors.registered()[f.kind]]
    with pytest.MonkeyPatch.context() as m:
        for flavor in missing:
            m.setitem(flavors.registered()[flavor.kind], flavor.name, flavor)
        schema.config_class.cache_clear()
        yield missing
    schema.config_class.cache_clear()


@pytest.fixture(scope="session")
def churn():
    """recipes/data/churn.csv as a frame (read-only: tests copy before they change it)."""
    import pandas as pd

    return pd.read_csv(ROOT / "recipes/data/churn.csv")


@pytest.fixture(scope="session")
def profiler():
    from mlops.monitoring import make_profiler

    return make_profiler("whylogs")
