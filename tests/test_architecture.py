"""The package's layers hold: import-linter checks the contract in pyproject.toml ([tool.importlinter]).

Imports inside functions count as dependencies too, so a function-local import cannot hide a cycle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lint-imports as a module run by this interpreter: the venv's console script may not be on PATH.
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache", "--no-logo"]


def _lint(project: Path) -> subprocess.CompletedProcess:
    # The project's own folder first on the path, so the package linted is this tree's, not an installed one.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(LINT, cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, f"an import contract is broken (see [tool.importlinter]):\n{result.stdout}"
    assert "0 broken" in result.stdout


def test_a_function_local_import_that_goes_up_a_layer_breaks_the_contract(tmp_path):
    # A copy of the package with one upward import hidden in a function body: the loader reaching for the data layer.
    shutil.copytree(ROOT / "mlops", tmp_path / "mlops", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    loader = tmp_path / "mlops" / "recipe" / "_loader.py"
    loader.write_text(loader.read_text() + "\n\ndef _probe():\n    from mlops.data import fingerprint\n\n"
                      "    return fingerprint\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "1 broken" in result.stdout
    assert "mlops.recipe._loader -> mlops.data" in result.stdout
