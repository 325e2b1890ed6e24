"""The flavor registry: built-ins and third parties register the same way (the `mlops.flavors` entry points).

A small third-party package, tests/plugins/jsonl_flavors (a JSON Lines tracker and a JSON Lines data source),
is installed the way a user installs one (`pip install`, here into a folder put on PYTHONPATH so the test
venv stays as it was) and run end to end through `mlops up` on the real Prefect, Lightning and Triton.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from mlops import flavors
from mlops._process import port_free

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "jsonl_flavors"
PORTS = (4511, 8511, 8512, 8513)
PORT_OVERRIDES = (f"target.prefect.port={PORTS[0]}", f"serving.http_port={PORTS[1]}", f"serving.grpc_port={PORTS[2]}",
                  f"serving.metrics_port={PORTS[3]}")
RECIPE = """\
# @package _global_
defaults:
  - override /tracking: jsonl
name: churn_jsonl
data:
  source: jsonl
  path: recipes/data/churn.jsonl
  target: churned
  numeric: [tenure_months, monthly_charges, support_calls, data_gb]
  categorical: [contract, payment_method, region]
  checks:
    min_rows: 500
model:
  task: classification
  hidden: [16]
  max_epochs: 4
"""


def mlops(project: Path, *args: str, pythonpath: Path | None = None, timeout: float = 600
          ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_built_ins_register_through_entry_points_like_any_flavor(builtin_sources):
    dist = metadata.distribution("mlops")
    declared = {ep.value for ep in dist.entry_points if ep.group == flavors.ENTRY_POINTS}
    found = {f for by_name in flavors.registered().values() for f in by_name.values()}
    assert {f"{f.implementation}" for f in found} >= {"mlops.tracking._mlflow:MlflowTracker",
                                                      "mlops.data._source:FileSource"}
    # builtin_sources: the built-ins this venv's install predates, registered as their entry points will be
    assert len(declared) + len(builtin_sources) == len(found) == 18
    assert {kind: sorted(names) for kind, names in flavors.registered().items()} == {
        "data_source": ["file", "image_folder", "image_table", "parquet_dataset", "sklearn", "sklearn_images", "sql"],
        "model": ["image_classifier", "lightning", "tabular_mlp"],
        "server": ["triton"],
        "tracker": ["mlflow", "neptune"], "monitor": ["none", "whylogs"], "model_store": ["local"],
        "target": ["aws", "local"]}
    assert all(f.distribution.startswith("mlops ") for f in found if f not in builtin_sources)
    # Registered as declared: what a flavor names for a process to import ahead survives registration.
    assert "mlflow.store.tracking.sqlalchemy_store" in flavors.get("tracker", "mlflow").warm


def _dist(site: Path, name: str, module: str, body: str, entry: str) -> None:
    (site / f"{module}.py").write_text(textwrap.dedent(body))
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[mlops.flavors]\n{entry}\n")


CLASHING = """
    from typing import Literal
    from mlops.flavors import Flavor
    from mlops.recipe.schema import TrackerConfig

    class Config(TrackerConfig):
        flavor: Literal["mlflow"] = "mlflow"

    FLAVOR = Flavor("tracker", "mlflow", Config, "acme_tracker:Nothing")
"""


def test_two_flavors_with_one_name_is_a_clear_error_naming_both_distributions(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "acme-tracker", "acme_tracker", CLASHING, "mlflow = acme_tracker:FLAVOR")
    proc = mlops(ROOT, "plan", "recipe=churn", pythonpath=site)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "two tracker flavors are named 'mlflow': one from mlops 0.1.0 (mlops.tracking._mlflow:MlflowTracker), " \
           "one from acme-tracker 1.0 (acme_tracker:Nothing)" in proc.stderr


def test_a_broken_plugin_is_named_not_a_traceback(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "acme-broken", "acme_broken", "import not_a_module_anywhere\n", "x = acme_broken:FLAVOR")
    proc = mlops(ROOT, "plan", "recipe=churn", pythonpath=site)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot load entry point 'x' = 'acme_broken:FLAVOR' of acme-broken 1.0: ModuleNotFoundError" in proc.stderr


def test_an_unknown_flavor_lists_the_installed_ones():
    proc = mlops(ROOT, "plan", "recipe=churn", "data.source=jsnol")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("override 'data.source=jsnol': `data.source` no data source flavor named 'jsnol' is installed; "
            "installed: file, image_folder, image_table, parquet_dataset, sklearn, sklearn_images, sql.") in proc.stderr


# ---------------------------------------------------------------- the third-party package, end to end
@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build") / "jsonl_flavors"
    shutil.copytree(PLUGIN, build)  # pip builds in place: keep the source tree clean
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(build)], check=True, capture_output=True, text=True)
    return site


@pytest.fixture(scope="module")
def project(tmp_path_factory, plugin_site) -> Path:
    proj = tmp_path_factory.mktemp("project")
    (proj / "recipes" / "data").mkdir(parents=True)
    pd.read_csv(ROOT / "recipes" / "data" / "churn.csv").to_json(proj / "recipes" / "data" / "churn.jsonl",
                                                                 orient="records", lines=True)
    (proj / "recipes" / "churn_jsonl.yaml").write_text(RECIPE)
    yield proj
    mlops(proj, "down", "recipe=churn_jsonl", *PORT_OVERRIDES, pythonpath=plugin_site)


def test_the_plugin_flavors_show_in_the_schema(project, plugin_site):
    proc = mlops(project, "schema", pythonpath=plugin_site)
    schema = json.loads(proc.stdout)
    assert schema["$defs"]["JsonlTrackerConfig"]["properties"]["path"]["default"] == "runs.jsonl"
    assert "path" in schema["$defs"]["JsonlData"]["properties"]
    md = mlops(project, "schema", "--markdown", pythonpath=plugin_site).stdout
    assert "## `tracking` — flavor `jsonl`" in md and "## `data` — flavor `jsonl`" in md
    # Without the package, the same project does not know them.
    assert "JsonlData" not in mlops(project, "schema").stdout


def test_a_typo_in_a_plugin_config_gets_file_and_line_like_a_built_in(project, plugin_site):
    recipe = project / "recipes" / "typo.yaml"
    recipe.write_text(RECIPE.replace("name: churn_jsonl", "name: typo").replace("  path: recipes", "  pth: recipes"))
    proc = mlops(project, "plan", "recipe=typo", pythonpath=plugin_site)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "recipes/typo.yaml:7: `data.pth` is not a known key. Hint: did you mean `path`?" in proc.stderr
    assert "recipes/typo.yaml:5: `data.path` is required but missing" in proc.stderr
    proc = mlops(project, "plan", "recipe=typo", "tracking.pathh=x", pythonpath=plugin_site)
    assert "`tracking.pathh` is not a key of the configuration" in proc.stderr
    recipe.unlink()


@pytest.mark.e2e
def test_a_recipe_using_both_plugin_flavors_runs_end_to_end(project, plugin_site):
    busy = [p for p in PORTS if not port_free("127.0.0.1", p)]
    assert not busy, f"ports {busy} are in use"
    proc = mlops(project, "up", "recipe=churn_jsonl", *PORT_OVERRIDES, pythonpath=plugin_site)
    assert proc.returncode == 0, proc.stderr
    assert "churn_jsonl version 1 is READY" in proc.stderr
    runs = [json.loads(line) for line in (project / ".mlops" / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["status"] == "FINISHED"
    run = runs[0]
    assert 0.5 < run["metrics"]["test_acc"] <= 1.0 and "val_loss" in run["metrics"]
    assert run["params"]["model.max_epochs"] == 4 and run["params"]["data.source"] == "jsonl"
    lineage = run["artifacts"]["lineage.json"]
    assert lineage["tracking"] == {"flavor": "jsonl", "run_id": run["id"]}
    assert lineage["metrics"]["test_acc"] == run["metrics"]["test_acc"]
    st = json.loads(mlops(project, "status", "recipe=churn_jsonl", "--json", *PORT_OVERRIDES,
                          pythonpath=plugin_site).stdout)
    assert {"name": "churn_jsonl", "version": "1", "state": "READY"} in st["models"]
    assert st["tracking"] == f"cat {project / '.mlops' / 'runs.jsonl'}"
    rows = project / "rows.json"
    pd.read_json(project / "recipes" / "data" / "churn.jsonl", lines=True).head(3).drop(
        columns=["churned"]).to_json(rows, orient="records")
    pred = mlops(project, "predict", "recipe=churn_jsonl", "--input", str(rows), "--json", *PORT_OVERRIDES,
                 pythonpath=plugin_site)
    assert pred.returncode == 0, pred.stderr
    answer = json.loads(pred.stdout)
    assert len(answer["labels"]) == 3 and set(answer["labels"]) <= {"yes", "no"}


def test_docs_extending_shows_the_installed_and_tested_plugin_code():
    """docs/extending.md's examples are the package this module installs and runs: they can't rot."""
    import re

    doc = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```(?:python|yaml|toml)\n(.*?)```", doc, flags=re.S)
    files = [PLUGIN / "mlops_jsonl" / "tracker.py", PLUGIN / "mlops_jsonl" / "conf" / "tracking" / "jsonl.yaml",
             PLUGIN / "mlops_jsonl" / "source.py", PLUGIN / "pyproject.toml"]
    for f in files:
        assert f.read_text() in blocks, f"docs/extending.md does not show {f.relative_to(ROOT)} as it is"
    assert RECIPE.replace("  checks:\n    min_rows: 500\n", "").replace("  hidden: [16]\n  max_epochs: 4\n", "") \
        in blocks


# ---------------------------------------------------------------- every kind is a seam
def test_every_kind_has_an_interface_that_its_built_in_flavors_implement():
    import importlib
    import inspect

    for kind, spec in flavors.KINDS.items():
        module, _, name = spec.interface.partition(":")
        interface = getattr(importlib.import_module(module), name)
        members = {m for m, v in vars(interface).items() if inspect.isfunction(v) or isinstance(v, property)
                   or isinstance(v, classmethod)} - {"__init__"}
        assert members, f"{spec.interface} declares no methods"
        assert interface.__doc__ or importlib.import_module(module).__doc__, f"{spec.interface} is undocumented"
        for flavor in flavors.flavors(kind).values():
            impl = flavor.load()
            if not inspect.isclass(impl):  # a factory (monitoring: none) -> what it makes, or None
                continue
            missing = [m for m in members if not hasattr(impl, m)]
            assert not missing, f"{flavor.implementation} lacks {missing} of {spec.interface}"


def test_a_flavor_registered_for_each_remaining_kind_is_what_the_stack_builds(monkeypatch, tmp_path):
    """A model store, a monitor and a target registered like a plugin are validated by the schema and built by
    the Stack; the flows, targets and CLI only ever ask the Stack (checked end to end for trackers, data sources
    and servers elsewhere)."""
    from typing import Literal

    from mlops.monitoring import WhylogsProfiler
    from mlops.recipe import load, schema
    from mlops.registry import Registry
    from mlops.stack import Stack
    from mlops.targets import LocalTarget, get_target

    class AuditedStore(Registry):
        pass

    class ShadowProfiler(WhylogsProfiler):
        pass

    class EdgeTarget(LocalTarget):
        pass

    class StoreCfg(schema.RegistryConfig):
        flavor: Literal["audited"] = "audited"

    class MonCfg(schema.MonitoringConfig):
        flavor: Literal["shadow"] = "shadow"

    class TargetCfg(schema.TargetConfig):
        kind: Literal["edge"] = "edge"

    here = __name__
    for name, obj in (("AuditedStore", AuditedStore), ("ShadowProfiler", ShadowProfiler),
                      ("EdgeTarget", EdgeTarget)):
        monkeypatch.setitem(globals(), name, obj)
    with monkeypatch.context() as m:
        m.setitem(flavors.registered()["model_store"], "audited",
                  flavors.Flavor("model_store", "audited", StoreCfg, f"{here}:AuditedStore"))
        m.setitem(flavors.registered()["monitor"], "shadow",
                  flavors.Flavor("monitor", "shadow", MonCfg, f"{here}:ShadowProfiler"))
        m.setitem(flavors.registered()["target"], "edge", flavors.Flavor("target", "edge", TargetCfg, f"{here}:EdgeTarget"))
        schema.config_class.cache_clear()
        try:
            cfg = load(["recipe=churn", "registry.flavor=audited", "monitoring.flavor=shadow", "target.kind=edge"],
                       ROOT, check_data=False)
            stack = Stack(cfg, tmp_path)
            assert cfg.components["model_store"] == "audited" and type(stack.model_store) is AuditedStore
            assert type(stack.monitor) is ShadowProfiler and type(get_target(cfg, tmp_path)) is EdgeTarget
            from mlops.plan import compile_plan

            assert compile_plan(cfg).components["monitor"] == "shadow"
        finally:
            schema.config_class.cache_clear()
    schema.config_class.cache_clear()
