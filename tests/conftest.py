"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.recipe import builtin

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


# Built-in flavors declared in pyproject.toml after the shared venv was installed.
NEW_BUILTINS = [builtin.SQL, builtin.PARQUET_DATASET, builtin.IMAGE_FOLDER, builtin.IMAGE_TABLE,
                builtin.SKLEARN_IMAGES, builtin.IMAGE_CLASSIFIER]


@pytest.fixture(autouse=True, scope="session")
def builtin_sources():
    """The built-in flavors newer than the shared venv (`sql`, `parquet_dataset`, the image sources and the
    `image_classifier` model), registered the way their pyproject entry points register them
    once the venv is installed from this tree (`pip install --no-deps -e .`); after that, this changes nothing.
    Until then a shipped recipe (recipes/warehouse.yaml) would not validate in-process. CLI subprocesses don't see
    this: `sources_path` gives them the entry points on PYTHONPATH."""
    from mlops import flavors
    from mlops.recipe import schema

    missing = [f for f in NEW_BUILTINS if f.name not in flavors.registered()[f.kind]]
    with pytest.MonkeyPatch.context() as m:
        for flavor in missing:
            m.setitem(flavors.registered()[flavor.kind], flavor.name, flavor)
        schema.config_class.cache_clear()
        yield missing
    schema.config_class.cache_clear()


@pytest.fixture(scope="session")
def sources_path(tmp_path_factory) -> str:
    """PYTHONPATH for CLI subprocesses: this tree, plus the entry points of NEW_BUILTINS while the installed mlops
    does not declare them yet (the venv predates them; `pip install -e .` makes this folder unnecessary)."""
    import os
    from importlib import metadata

    from mlops import flavors

    declared = {ep.name for ep in metadata.entry_points(group=flavors.ENTRY_POINTS)}
    attr = {id(value): name for name, value in vars(builtin).items()}
    lines = [f"{f.kind}-{f.name} = mlops.recipe.builtin:{attr[id(f)]}" for f in NEW_BUILTINS
             if f"{f.kind}-{f.name}" not in declared]
    paths = [str(ROOT)]
    if lines:
        site = tmp_path_factory.mktemp("site")
        info = site / "mlops_sources-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlops-sources\nVersion: 0.0\n")
        (info / "entry_points.txt").write_text("[mlops.flavors]\n" + "\n".join(lines) + "\n")
        paths.append(str(site))
    return os.pathsep.join(paths)


@pytest.fixture(scope="session")
def churn():
    """recipes/data/churn.csv as a frame (read-only: tests copy before they change it)."""
    import pandas as pd

    return pd.read_csv(ROOT / "recipes/data/churn.csv")


@pytest.fixture(scope="session")
def profiler():
    from mlops.monitoring import make_profiler

    return make_profiler("whylogs")
