"""No traceback, anywhere: every command's --help, and each documented option given a bad value.

The commands are discovered from the Typer app, so a new command is covered by the --help test the day it is
added. The bad values run in process through `mlops.cli.main` (what the `mlops` script runs): an exception
that escapes it is the traceback a user would see, and exit code 1 ("unexpected") for bad input is a bug too.
One case runs in a subprocess, to check the real entry point prints no traceback either.
"""

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


def _command_paths() -> list[tuple[str, ...]]:
    import typer

    from mlops.cli import app

    def walk(cmd, prefix):
        yield prefix
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, (*prefix, name))

    return list(walk(typer.main.get_command(app), ()))


def run(capsys, *args: str) -> tuple[int, str]:
    """`mlops ARGS` in process: (exit code, stdout + stderr). An exception escaping main() fails the test."""
    from mlops.cli import main

    old = sys.argv
    sys.argv = ["mlops", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # the traceback a user would see
        pytest.fail(f"`mlops {' '.join(args)}` raised {type(exc).__name__}: {exc}")
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, f"`mlops {' '.join(args)}` printed a traceback:\n{text}"
    return code, text


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "mlops")
def test_every_command_has_help_without_a_traceback(capsys, path):
    code, text = run(capsys, *path, "--help")
    assert code == 0 and "Usage:" in text


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("badproject")
    shutil.copytree(ROOT / "recipes", proj / "recipes")
    r = proj / "recipes"
    (r / "empty.yaml").write_text("")
    (r / "only_comment.yaml").write_text("# @package _global_\n# nothing yet\n")
    (r / "a_list.yaml").write_text("- name: churn\n- data: {}\n")
    churn = (r / "churn.yaml").read_text()
    (r / "bad_ref.yaml").write_text(churn.replace("name: churn", "name: ${nope}"))
    (r / "bad_lr_ref.yaml").write_text(churn.replace("lr: 0.003", "lr: ${nope.lr}"))
    (r / "header_only.yaml").write_text(churn.replace("name: churn", "name: header_only")
                                        .replace("recipes/data/churn.csv", "recipes/data/header_only.csv"))
    header = (r / "data" / "churn.csv").read_text().splitlines()[0]
    (r / "data" / "header_only.csv").write_text(header + "\n")
    (r / "data" / "empty.csv").write_text("")
    (proj / "rows.json").write_text("{not json")
    (proj / "a_file").write_text("x")
    return proj


# (args, the exit code, a text the message must hold). -C is added in front by the test.
BAD = [
    (["plan", "recipe=empty"], 2, "recipes/empty.yaml:1: is empty"),
    (["up", "recipe=only_comment"], 2, "recipes/only_comment.yaml:1: is empty"),
    (["plan", "recipe=a_list"], 2, "recipes/a_list.yaml:1: is a YAML list"),
    (["plan", "recipe=bad_ref"], 2, "recipes/bad_ref.yaml:4: `name` cannot be resolved"),
    (["plan", "recipe=bad_lr_ref"], 2, "recipes/bad_lr_ref.yaml:"),
    (["plan", "recipe=nosuch"], 2, "has no option 'nosuch'"),
    (["plan", "recipe=churn", "model.lr=abc"], 2, "model.lr"),
    (["plan", "recipe=churn", "model.nosuch=1"], 2, "model.nosuch"),
    (["plan", "recipe=churn", "==="], 2, "cannot parse the override"),
    (["plan", "recipe=churn", "--diff", "garbage=="], 2, ""),
    (["plan", "recipe=churn", "--diff", "maturity=9"], 2, "maturity"),
    (["plan", "--all", "--diff", "maturity=2"], 2, "--all"),
    (["plan", "recipe=churn", "--json", "--diff", "stack=nosuch"], 2, "stack"),
    (["predict", "recipe=churn", "--input", "missing.csv"], None, "missing.csv"),
    (["predict", "recipe=churn", "--input", "rows.json"], None, "rows.json"),
    (["validate", "recipe=churn", "--input", "missing.csv"], None, "missing.csv"),
    (["validate", "recipe=churn", "--input", "recipes/data/empty.csv"], None, "empty.csv"),
    (["deploy", "nonsense"], 2, "nonsense"),
    (["deploy", "churn@abc"], 2, "churn@abc"),
    (["promote", "churn@99"], None, "churn"),
    (["rollback", "churn"], None, "churn"),
    (["run", "nosuch", "recipe=churn"], 2, "nosuch"),
    (["runs", "recipe=nosuch"], 2, "nosuch"),
    (["stack", "show", "nosuch"], 2, "nosuch"),
    (["schema", "-o", "a_file/x.json"], None, "a_file"),
    (["monitor", "report", "recipe=churn", "--html", "a_file/x.html"], None, ""),
    (["init", "recipes"], 2, "is not empty"),
    (["init", "new1", "--from", "missing.csv", "--target", "x"], 3, "missing.csv"),
    (["init", "new2", "--from", "recipes/data/empty.csv", "--target", "x"], 3, "empty.csv"),
    (["init", "new3", "--from", "recipes/data/churn.csv", "--target", "nope"], 2, "'nope' is not a column"),
    (["init", "new4", "--from", "recipes/data/header_only.csv", "--target", "churned"], 3, "no rows"),
    (["init", "new5", "--from", "recipes/data/churn.csv"], 2, "--from and --target go together"),
]


@pytest.mark.parametrize(("args", "exit_code", "says"), BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_value_is_a_message_not_a_traceback(capsys, monkeypatch, project, args, exit_code, says):
    monkeypatch.chdir(project)
    code, text = run(capsys, "-C", str(project), *args)
    assert code not in (0, 1), f"exit {code}:\n{text}"
    if exit_code is not None:
        assert code == exit_code, text
    assert says in text, text


def test_a_missing_project_folder_is_named(capsys, tmp_path):
    code, text = run(capsys, "-C", str(tmp_path / "nope"), "status")
    assert code == 2 and f"the project folder '{tmp_path / 'nope'}' does not exist" in text


def test_a_command_that_needs_a_recipe_lists_the_projects(capsys, tmp_path):
    (tmp_path / "recipes").mkdir()
    for name in ("alpha", "beta"):
        shutil.copy(ROOT / "recipes" / "churn.yaml", tmp_path / "recipes" / f"{name}.yaml")
    code, text = run(capsys, "-C", str(tmp_path), "plan")
    assert code == 2 and "the project's recipes are: alpha, beta" in text and "recipe=alpha" in text


def test_the_entry_point_prints_no_traceback(project):
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "-C", str(project), "plan", "recipe=a_list"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert "recipes/a_list.yaml:1: is a YAML list" in proc.stderr


@pytest.mark.parametrize("data", ["header_only.csv", "empty.csv"])
def test_data_without_rows_fails_validation_before_training(project, data):
    """A header and no rows (or nothing at all) is a data-validation error with the numbers, not an IndexError."""
    recipe = "header_only"
    (project / "recipes/data/header_only.csv").write_text(
        (ROOT / "recipes/data/churn.csv").read_text().splitlines()[0] + "\n")
    cfg = load([f"recipe={recipe}", f"target.state_dir={project / 'state'}"], project, check_data=False)
    stack = Stack(cfg, project)
    if data == "empty.csv":  # no bytes at all: no rows either, said by the data gate like a header-only file
        (project / "recipes/data/header_only.csv").write_text("")
    snapshot = steps.ingest(stack)
    assert snapshot.rows == 0
    with pytest.raises(DataError, match=r"0 rows, fewer than data.checks.min_rows=500"):
        steps.validate(stack, snapshot)
