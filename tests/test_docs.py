"""Docs can't rot: every `mlops` command the docs show is run by a test, and the reference is generated."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Commands with side effects run in tests/test_e2e.py, in this form (overrides may differ in order there).
RUN_END_TO_END = {
    "mlops up stack=reasonable-scale recipe=breast_cancer",
    "mlops up recipe=churn",
    "mlops status",
    "mlops down",
    "mlops predict recipe=breast_cancer --input recipes/data/breast_cancer_rows.csv",
    "mlops predict recipe=churn --input recipes/data/churn_rows.json --json",
    "mlops validate recipe=churn --input recipes/data/churn.csv",
    "mlops monitor report recipe=breast_cancer --html drift.html",
    "mlops init churn-project --from recipes/data/churn.csv --target churned",
}
# The end-to-end modules that run them.
E2E_MODULES = ("test_e2e.py", "test_operator_e2e.py")


def _commands() -> set[str]:
    found = set()
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.splitlines():
                for part in line.split("&&"):
                    part = part.split("#")[0].strip()
                    if part.startswith("mlops "):
                        found.add(part)
    return found


@pytest.fixture(autouse=True)
def _cli_sees_the_new_builtins(sources_path, monkeypatch):
    # The CLI subprocesses below load every shipped recipe, some on built-in flavors the venv may predate.
    monkeypatch.setenv("PYTHONPATH", sources_path)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_every_documented_command_is_tested():
    side_effect_free = {c for c in _commands() if c.split()[1] in ("plan", "schema")}
    assert _commands() - side_effect_free <= RUN_END_TO_END, "a doc shows a command no test runs"
    for cmd in sorted(side_effect_free):
        proc = _run(*cmd.split()[1:])
        assert proc.returncode == 0, f"{cmd}:\n{proc.stderr}"


def test_end_to_end_commands_are_run_by_e2e():
    e2e = "".join((ROOT / "tests" / m).read_text() for m in E2E_MODULES)
    for cmd in RUN_END_TO_END:
        args = cmd.split()[1:]
        assert all(f'"{a}"' in e2e for a in args), f"{' nor '.join(E2E_MODULES)} run `{cmd}`"


def test_recipe_reference_is_generated_from_the_schema():
    from mlops.recipe.reference import recipe_markdown

    assert (ROOT / "docs" / "recipe-reference.md").read_text() == recipe_markdown(), \
        "regenerate with: mlops schema --markdown -o docs/recipe-reference.md"


def test_schema_command_writes_a_json_schema_that_accepts_the_recipes(tmp_path):
    import json

    import jsonschema
    import yaml

    out = tmp_path / "recipe.schema.json"
    assert _run("schema", "-o", str(out)).returncode == 0
    schema = json.loads(out.read_text())
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(recipe.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"model": {"lrr": 1}}, schema)


@pytest.mark.parametrize("command", ["up", "down", "status", "plan", "schema", "predict", "run", "deploy", "promote",
                                     "rollback", "runs"])
def test_every_command_has_help_with_an_example(command):
    proc = _run(command, "--help")
    assert proc.returncode == 0 and "Example: mlops" in proc.stdout
