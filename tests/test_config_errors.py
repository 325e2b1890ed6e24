"""Bad recipes get every problem at once, each with file:line (or override), key, expected, given and a hint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops.errors import ConfigError
from mlops.recipe import load

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "bad_recipes"
EXPECTED = yaml.safe_load((FIXTURES / "expected.yaml").read_text())


def _project(tmp_path: Path, recipe: Path) -> Path:
    (tmp_path / "recipes" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "recipes" / "data" / "churn.csv", tmp_path / "recipes" / "data" / "churn.csv")
    shutil.copy(recipe, tmp_path / "recipes" / "bad.yaml")
    return tmp_path


def _problems(project: Path, overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(overrides, project)
    return [p.render() for p in info.value.problems]


def test_every_fixture_has_an_expectation():
    names = {p.stem for p in FIXTURES.glob("*.yaml")} - {"expected", "_good"}
    assert names == set(EXPECTED), "add the fixture's expected messages to expected.yaml"
    assert len(names) >= 10


def test_the_base_of_the_fixtures_is_valid(tmp_path):
    cfg = load(["recipe=bad"], _project(tmp_path, FIXTURES / "_good.yaml"))
    assert cfg.data.categorical == ["contract"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_recipe(tmp_path, name):
    project = _project(tmp_path, FIXTURES / f"{name}.yaml")
    expected = [line.replace("{project}", str(project)) for line in EXPECTED[name]]
    assert _problems(project, ["recipe=bad"]) == expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["recipe=nope"], ["override 'recipe=nope': `recipe` has no option 'nope'; the options are: breast_cancer, "
                           "churn, digits, warehouse, warehouse_incremental. Hint: add recipes/nope.yaml"]),
        (["recipe=brest_cancer"], ["override 'recipe=brest_cancer': `recipe` has no option 'brest_cancer'; the options "
                                   "are: breast_cancer, churn, digits, warehouse, warehouse_incremental. Hint: did you mean `recipe=breast_cancer`?"]),
        (["stack=big-scale"], ["override 'stack=big-scale': `stack` has no option 'big-scale'; the options are: k8s, local, "
                               "reasonable-scale. Hint: add stacks/big-scale.yaml"]),
        (["maturity=9"], ["override 'maturity=9': `maturity` level must be an integer from 0 to 4, got '9'. Hint: 0 "
                          "manual, 1 data prep, 2 training, 3 deployment, 4 drift-triggered retraining"]),
        (["model.lrr=0.1"], ["command line: `model.lrr` is not a key of the configuration. Hint: check the spelling "
                             "(`mlops plan` shows every key); a new key needs a leading +"]),
        (["model.lr=abc", "serving.http_port=0"],
         ["override 'model.lr=abc': `model.lr` input should be a valid number, unable to parse string as a number; "
          "got 'abc'. Hint: write a plain number, e.g. model.lr=3e-4",
          "override 'serving.http_port=0': `serving.http_port` input should be greater than or equal to 1; got 0."]),
        (["data.path=missing.csv", "recipe=churn"],
         ["override 'data.path=missing.csv': `data.path` file not found: {root}/missing.csv. Hint: paths are relative "
          "to the project folder; check the name, or use an fsspec URL"]),
        (["model.lr=true", "model.weight_decay=inf", "maturity.data_interval_s=nan"],
         ["override 'model.lr=true': `model.lr` input should be a number, not a boolean; got True. Hint: true/false "
          "is not a number: write the number itself",
          "override 'model.weight_decay=inf': `model.weight_decay` input should be a finite number; got inf. Hint: "
          "inf and nan are not allowed here: write a finite number",
          "override 'maturity.data_interval_s=nan': `maturity.data_interval_s` input should be a finite number; got "
          "nan. Hint: inf and nan are not allowed here: write a finite number"]),
        (["model.batch_size=2000000", "monitoring.window_s=172800", "+maturity.gate.floors.test_acc=-inf"],
         ["override 'model.batch_size=2000000': `model.batch_size` input should be less than or equal to 1000000; "
          "got 2000000.",
          "override '+maturity.gate.floors.test_acc=-inf': `maturity.gate.floors.test_acc` input should be a finite "
          "number; got -inf. Hint: inf and nan are not allowed here: write a finite number",
          "override 'monitoring.window_s=172800': `monitoring.window_s` input should be less than or equal to 86400; "
          "got 172800."]),
        (["target.prefect.port=8000"],
         ["override 'target.prefect.port=8000': `target.prefect.port` is 8000, the same port as serving.http_port: "
          "Prefect and the model server each need a port of their own. Hint: choose another port for one of them, "
          "e.g. target.prefect.port=<free port> (`ss -ltn` lists the ports in use)"]),
        (["maturity=4", "monitoring=none"],
         ["maturity 4 retrains on drift, which needs monitoring: set monitoring=whylogs (or choose maturity=3)."]),
    ],
)
def test_bad_overrides(overrides, expected):
    assert _problems(ROOT, overrides) == [e.replace("{root}", str(ROOT)) for e in expected]


def test_shipped_recipes_and_stacks_validate():
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        for stack in ("local", "reasonable-scale"):
            cfg = load([f"recipe={recipe.stem}", f"stack={stack}"], ROOT)
            assert cfg.name == recipe.stem and cfg.stack.name == stack


def test_headline_override_grammar():
    cfg = load(["stack=reasonable-scale", "recipe=breast_cancer", "model.lr=3e-4", "maturity=3"], ROOT)
    assert (cfg.stack.name, cfg.model.lr, cfg.maturity.level) == ("reasonable-scale", 3e-4, 3)


def test_config_is_frozen():
    cfg = load([], ROOT)
    with pytest.raises(Exception, match="frozen"):
        cfg.model.lr = 1.0  # type: ignore[misc]


def test_cli_bad_config_exits_2_without_traceback(tmp_path):
    project = _project(tmp_path, FIXTURES / "several_problems.yaml")
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "-C", str(project), "up", "recipe=bad"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "3 problems in the configuration" in proc.stderr
    assert "recipes/bad.yaml:11: `model.lr` input should be greater than 0; got -1." in proc.stderr
    # Validation comes first: nothing was started or written.
    assert not (project / ".mlops").exists()


SECRET_FIXTURES = sorted(p.stem for p in FIXTURES.glob("secret_*.yaml"))


def _secret_texts(recipe: Path) -> list[str]:
    """The credential-shaped values in a fixture: whatever else is printed, these must not be."""
    from mlops.recipe._secrets import credential_shapes

    texts = []
    for line in recipe.read_text().splitlines():
        value = line.partition(":")[2].strip().strip('"') if ":" in line else line.strip()
        texts += [text for _what, text in credential_shapes(value, line.partition(":")[0].strip())]
    texts += [t for t in ("FakePassw0rd", "MIIEFAKEFAKE") if t in recipe.read_text()]
    return texts


@pytest.mark.parametrize("name", SECRET_FIXTURES)
def test_cli_never_prints_a_secret(tmp_path, name):
    project = _project(tmp_path, FIXTURES / f"{name}.yaml")
    secrets = _secret_texts(FIXTURES / f"{name}.yaml")
    assert secrets, f"{name}.yaml holds no credential-shaped value"
    for command in (["plan", "recipe=bad"], ["up", "recipe=bad"]):
        proc = subprocess.run([sys.executable, "-m", "mlops.cli", "-C", str(project), *command],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "(the value is not shown)" in proc.stderr
        for secret in secrets:
            assert secret not in proc.stdout + proc.stderr, f"{command} printed {secret!r}"
    assert not (project / ".mlops").exists()


def test_a_secret_in_an_override_is_not_echoed(tmp_path):
    key_id, secret = "AKIAFAKEFAKEFAKE7Q2X", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAKEFAKEKY"
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "-C", str(ROOT), "plan", "model.lr=" + key_id,
                           f"description='{key_id} {secret}'"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert key_id not in proc.stdout + proc.stderr and secret not in proc.stdout + proc.stderr
    text = " ".join(proc.stderr.split())
    assert "override 'model.lr=***': `model.lr` holds what looks like an AWS access key id (the value is not shown)" \
        in text
    assert "`model.lr` input should be a valid number, unable to parse string as a number; got '***'" in text
    assert "`description` holds what looks like an AWS access key id and an AWS secret access key" in text
    assert "${oc.env:VAR}" in text


def test_references_are_not_secrets():
    cfg = load(["stack=reasonable-scale", "stack.parameters.orchestration.prefect_api_key_ref=arn:aws:secretsmanager:"
                "us-east-1:123456789012:secret:mlops/prefect-api-key-AbCdEf",
                "stack.parameters.orchestration.prefect_api_url_ref=ssm:/mlops/prod/prefect_api_url_2024",
                "tracking.uri=postgresql://mlflow:${oc.env:HOME}@db.internal/mlflow"], ROOT, check_data=False)
    assert cfg.stack.parameters.orchestration.prefect_api_url_ref.startswith("ssm:/")


def test_a_flavor_set_by_hand_keeps_the_groups_keys_when_they_fit():
    # monitoring=whylogs merged its keys; `none` takes the same keys, so the hand-set flavor is fine.
    cfg = load(["recipe=churn", "monitoring.flavor=none"], ROOT, check_data=False)
    assert cfg.monitoring.flavor == "none" and cfg.components["monitor"] == "none"
