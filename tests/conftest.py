"""Shared fixtures."""

from __future__ import annotations

import pytest


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
