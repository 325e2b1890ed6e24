"""load_many() gives what load() gives, recipe by recipe (Config, Plan JSON, or the exact problems), without
a Hydra composition per recipe; and `mlops plan --all` prints it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mlops.errors import ConfigError
from mlops.plan import compile_plan
from mlops.recipe import load
from mlops.recipe._batch import _Fallback, _merged, _resolved, load_many_with_fallbacks
from mlops.recipe.keys import config_hash

ROOT = Path(__file__).resolve().parents[1]
STACKS = sorted(p.stem for p in (ROOT / "stacks").glob("*.yaml"))
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
BAD = ROOT / "tests" / "fixtures" / "bad_recipes"
CHURN = (ROOT / "recipes" / "churn.yaml").read_text()


def _project(tmp_path: Path, **recipes: str) -> Path:
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    for name, text in recipes.items():
        (tmp_path / "recipes" / f"{name}.yaml").write_text(text)
    return tmp_path


def _assert_same_as_load(project: Path, names: list[str], overrides: list[str], *,
                         through_load: set[str] = frozenset()) -> dict:
    got, slow = load_many_with_fallbacks(names, project, overrides)
    assert list(got) == names
    assert set(slow) == set(through_load), "recipes the fast path should have handled went through load()"
    for name in names:
        try:
            want = load([*overrides, f"recipe={name}"], project, check_data=False)
        except ConfigError as exc:
            assert isinstance(got[name], ConfigError), f"{name}: load() fails, load_many() does not:\n{exc}"
            assert str(got[name]) == str(exc)
            continue
        assert not isinstance(got[name], ConfigError), f"{name}: load_many() fails, load() does not:\n{got[name]}"
        assert config_hash(got[name]) == config_hash(want), name
        assert compile_plan(got[name]).to_json() == compile_plan(want).to_json(), name
    return got


@pytest.mark.parametrize("level", range(5))
@pytest.mark.parametrize("stack", STACKS)
def test_shipped_recipes_at_every_level_on_every_stack(stack, level):
    _assert_same_as_load(ROOT, RECIPES, [f"stack={stack}", f"maturity={level}"])


def test_recipes_that_choose_groups_in_their_own_defaults(tmp_path):
    def with_defaults(*entries: str) -> str:
        return CHURN.replace("# @package _global_\n", "# @package _global_\ndefaults:\n" + "".join(
            f"  - {e}\n" for e in entries))

    project = _project(
        tmp_path,
        k8s_3=with_defaults('override /stack: k8s', 'override /maturity: "3"'),
        # the recipe's tracking wins over the stack's `override /tracking: mlflow`
        rs_4_neptune=with_defaults("override /stack: reasonable-scale", 'override /maturity: "4"',
                                   "override /tracking: neptune"),
        self_first=with_defaults("_self_", "override /compute: auto"),
        aws=with_defaults("override /target: aws", "override /stack: reasonable-scale"),
        seeded=CHURN + "seed: 7\n",  # conf/config.yaml's `_self_` comes first: a recipe sets its own seed
    )
    got = _assert_same_as_load(project, ["k8s_3", "rs_4_neptune", "self_first", "aws", "seeded"], [])
    assert (got["k8s_3"].stack.name, got["k8s_3"].maturity.level) == ("k8s", 3)
    assert got["rs_4_neptune"].tracking.flavor == "neptune"
    assert (got["aws"].target.kind, got["self_first"].compute.accelerator, got["seeded"].seed) == ("aws", "auto", 7)
    got = _assert_same_as_load(project, ["rs_4_neptune"], ["maturity=1", "tracking=mlflow"])  # the command line wins
    assert (got["rs_4_neptune"].maturity.level, got["rs_4_neptune"].tracking.flavor) == (1, "mlflow")


def test_interpolations(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_TEST_DESCRIPTION", "from the environment")
    monkeypatch.delenv("MLOPS_TEST_UNSET", raising=False)
    description = next(line for line in CHURN.splitlines() if line.startswith("description:"))

    def described(value: str) -> str:
        return CHURN.replace(description, f"description: {value}")

    project = _project(
        tmp_path,
        chained=described('"${serving.model_name} lr ${model.lr} es ${model.early_stopping.enabled}"')
        + 'serving:\n  model_name: "${name}_svc"\n',
        env=described("${oc.env:MLOPS_TEST_DESCRIPTION}"),
        env_default=described('"${oc.env:MLOPS_TEST_UNSET,no variable}"'),  # resolved by OmegaConf
        unset=described("${oc.env:MLOPS_TEST_UNSET}"),  # the problem load() reports, with its file:line
    )
    _assert_same_as_load(project, ["chained", "env", "env_default", "unset"], [])


def test_bad_recipes_give_the_problems_load_gives(tmp_path):
    # the fixtures whose problems show without data checks: a rule each, and libyaml's refusal
    names = ["broken_yaml", "flavor_without_group", "literal_secret", "several_problems", "unknown_key"]
    project = _project(tmp_path, **{n: (BAD / f"{n}.yaml").read_text() for n in names})
    _assert_same_as_load(project, names, [], through_load={"broken_yaml"})


def test_value_overrides_apply_after_the_recipe():
    _assert_same_as_load(ROOT, ["breast_cancer"], ["model.lr=0.01", "serving.max_queue_delay_us=250", "maturity=3"])
    _assert_same_as_load(ROOT, ["churn"], ["model.lr=abc"])
    _assert_same_as_load(ROOT, ["churn"], ["model.lrr=0.1"], through_load={"churn"})  # Hydra's own error


@pytest.mark.parametrize(("dest", "src"), [
    ({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3], "e": None}, "f": {"g": 1}}),
    ({"a": {"b": 1}}, {"a": 5}),
    ({"a": {"b": 1}}, {"a": None}),
    ({"a": [1, 2]}, {"a": "x"}),
    ({"a": None, "b": "s"}, {"a": {"x": 1}, "b": [1]}),
    ({"a": 1, "b": {"c": 1}}, {"a": "???", "b": "???", "c": "???"}),
    ({"a": "???"}, {"a": 1}),
    ({"a": {"b": 1}, "c": 1}, {"a": "${c}"}),
])
def test_merge_is_omegaconfs(dest, src):
    assert _merged(dest, src) == OmegaConf.to_container(OmegaConf.merge(dest, src))


@pytest.mark.parametrize(("dest", "src"), [
    ({"a": [1]}, {"a": {"x": 1}}),  # OmegaConf raises
    ({"a": {"x": 1}}, {"a": [1]}),
    ({"a": "${c}", "c": {"x": 1}}, {"a": {"y": 2}}),  # OmegaConf merges into what ${c} points to
])
def test_merges_it_does_not_reproduce_go_through_load(dest, src):
    with pytest.raises(_Fallback):
        _merged(dest, src)


def test_resolve_is_omegaconfs(monkeypatch):
    monkeypatch.setenv("MLOPS_TEST_VAR", "v")
    raw = {"name": "n", "n": 3, "f": 0.002, "t": True, "z": None, "m": "???", "a": {"b": "${name}", "c": "${a.b}-x"},
           "s": "${n}/${f}/${t}/${z}", "w": "${n}", "e": "${oc.env:MLOPS_TEST_VAR}", "l": ["${name}", {"k": "${f}"}],
           "plain": "no interpolation {} $ \\"}
    assert _resolved(raw) == OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    for unsupported in ("${a}", "${m}", "${nope}", "\\${name}", "${oc.env:MLOPS_TEST_VAR,x}", "${.name}", "$${name}"):
        with pytest.raises(_Fallback):
            _resolved({**raw, "x": unsupported})


def test_plan_all_prints_every_recipe(tmp_path, sources_path):
    project = _project(tmp_path, bad=(BAD / "unknown_key.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "plan", "--all", "maturity=3", "--json"], cwd=project,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": sources_path})
    assert proc.returncode == 2, proc.stderr
    rows = {r["recipe"]: r for r in json.loads(proc.stdout)}
    assert sorted(rows) == ["bad", *RECIPES]
    assert all(rows[name]["plan"]["maturity"] == 3 for name in RECIPES)
    want = compile_plan(load(["recipe=churn", "maturity=3"], project, check_data=False))
    assert rows["churn"]["plan"] == want.to_json()
    assert rows["bad"]["problems"] == ["recipes/bad.yaml:11: `model.lrr` is not a known key. Hint: did you mean `lr`?"]
    assert "recipe=bad recipes/bad.yaml:11: `model.lrr` is not a known key" in proc.stderr
