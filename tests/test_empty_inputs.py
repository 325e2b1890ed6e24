"""A project with no recipe yet, and a data file with no bytes: clear answers, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlops import steps
from mlops.errors import DataError
from mlops.recipe import load
from mlops.stack import Stack

ROOT = Path(__file__).resolve().parents[1]


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops.cli", "-C", str(project), *args], capture_output=True,
                          text=True, timeout=120)


def test_commands_about_the_project_work_before_it_has_a_recipe(tmp_path):
    for args in (["status", "--json"], ["runs"], ["stack", "list"], ["schema"]):
        proc = _cli(tmp_path, *args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert "no runs yet" in _cli(tmp_path, "runs").stdout
    proc = _cli(tmp_path, "up")  # but one that runs a recipe says there is none, and how to make one
    assert proc.returncode == 2 and "this project has no recipe" in proc.stderr and "mlops init" in proc.stderr
    assert not (tmp_path / ".mlops" / "registry").exists()


def test_an_empty_data_file_is_a_validation_error_with_the_numbers(tmp_path):
    (tmp_path / "recipes" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "recipes" / "churn.yaml", tmp_path / "recipes" / "churn.yaml")
    (tmp_path / "recipes" / "data" / "churn.csv").write_bytes(b"")
    cfg = load(["recipe=churn"], tmp_path)  # the config is fine: it is the data that has no rows
    stack = Stack(cfg, tmp_path)
    snapshot = steps.ingest(stack)
    assert snapshot.rows == 0
    with pytest.raises(DataError, match=r"0 rows, fewer than data.checks.min_rows=500"):
        steps.validate(stack, snapshot)
