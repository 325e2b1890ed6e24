"""`mlops init`: scaffold a project (recipes/ with a starter recipe, a .gitignore for the state, a README).

With `--from DATA --target COLUMN` the recipe's columns come from the data:

- the task from the target: strings, booleans and integers with few distinct values are classification,
  anything else numeric is regression;
- numeric features from numeric dtypes, categorical ones from strings and booleans with few distinct values;
- columns left out, each with a YAML comment saying why: ID-like (a distinct value in every row), constant,
  free text (too many distinct strings), dates, and columns with more nulls than the check allows.

The recipe it writes validates (`mlops plan`) and runs (`mlops up`) as written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from mlops.cli._app import err, out
from mlops.errors import ConfigError, DataError, Problem

_MAX_CATEGORIES = 50  # more distinct strings than this is free text, not a category
_MAX_CLASSES = 20  # an integer target with at most this many values is a label
_MAX_NULL_FRACTION = 0.05  # data.checks.max_null_fraction's default

GITIGNORE = """\
# mlops state: snapshots, registry, tracking, service logs (recreated by `mlops up`)
.mlops/
"""

README = """\
# {name}

An mlops project: recipes in `recipes/`, the state (datasets, registry, tracking, logs) in `.mlops/`
(git-ignored).

    mlops plan recipe={name}     # validate the recipe and show what `up` would do; no side effects
    mlops up recipe={name}       # train, register and serve it
    mlops status                 # services, their URLs, and the models served
    mlops down                   # stop the services; the state stays

Edit `recipes/{name}.yaml`; `mlops schema -o recipe.schema.json` gives your editor the recipe's JSON Schema.
"""

STARTER = """\
# @package _global_
# A starter recipe on scikit-learn's bundled iris data (150 rows, 4 numeric features, 3 classes).
# Point `data:` at your own file with `source: file` and `path:` (CSV or Parquet), or run
#   mlops init DIR --from data.csv --target COLUMN
# to write a recipe from your data's columns.
#   mlops up recipe={name}
name: {name}
description: Iris species from four flower measurements (starter recipe).

data:
  source: sklearn
  dataset: iris
  target: target
  numeric: [sepal length (cm), sepal width (cm), petal length (cm), petal width (cm)]
  checks:
    min_rows: 100

model:
  task: classification
  hidden: [32, 16]
  max_epochs: 30
"""


def _name(text: str) -> str:
    """A recipe name (lowercase letters, digits, '_' and '-', starting with a letter) from a folder or file."""
    name = re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_-")
    if not name or not name[0].isalpha():
        name = f"model_{name}".rstrip("_")
    return name[:63]


def _read(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise DataError(f"cannot read {path}: no such file. Hint: give the CSV or Parquet file to build the "
                        "recipe from, e.g. `mlops init churn --from data/churn.csv --target churned`.")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix.lower() in (".json", ".jsonl"):
            return pd.read_json(path, lines=path.suffix.lower() == ".jsonl")
        return pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same answer: not readable data
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read {path} as {'Parquet' if path.suffix.lower() in ('.parquet', '.pq') else 'CSV'}"
                        f": {first}. Hint: give a CSV (with a header row) or a Parquet file.") from None


def infer(frame: Any, target: str) -> dict[str, Any]:
    """task, numeric, categorical, and the columns left out with the reason for each."""
    import pandas as pd

    rows = len(frame)
    numeric, categorical, left_out = [], [], []
    for col in frame.columns:
        if col == target:
            continue
        s = frame[col]
        distinct = s.nunique(dropna=True)
        is_num = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        if distinct <= 1:
            left_out.append((col, "constant: one value in every row, nothing to learn from"))
        elif distinct == rows and not pd.api.types.is_float_dtype(s):
            left_out.append((col, f"ID-like: a distinct value in each of the {rows} rows"))
        elif pd.api.types.is_datetime64_any_dtype(s):
            left_out.append((col, "a date/time: derive numeric features from it (day of week, age) first"))
        elif s.isna().mean() > _MAX_NULL_FRACTION:
            left_out.append((col, f"{s.isna().mean():.0%} null, above data.checks.max_null_fraction="
                                  f"{_MAX_NULL_FRACTION}"))
        elif is_num:
            numeric.append(str(col))
        elif distinct <= _MAX_CATEGORIES:
            categorical.append(str(col))
        else:
            left_out.append((col, f"free text: {distinct} distinct strings, more than {_MAX_CATEGORIES} "
                                  "categories"))
    y = frame[target]
    if (pd.api.types.is_bool_dtype(y) or not pd.api.types.is_numeric_dtype(y)
            or (pd.api.types.is_integer_dtype(y) and y.nunique() <= _MAX_CLASSES)):
        task, why = "classification", f"the target {target!r} has {y.nunique()} distinct values"
    else:
        task, why = "regression", f"the target {target!r} is numeric with {y.nunique()} distinct values"
    return {"task": task, "why": why, "numeric": numeric, "categorical": categorical, "left_out": left_out}


def _yaml_list(items: list[str]) -> str:
    import yaml

    return "".join(f"    - {yaml.safe_dump(c, default_style=None).strip().removesuffix('...').strip()}\n"
                   for c in items)


def recipe_from(frame: Any, target: str, name: str, data_path: str, shown: str) -> str:
    import yaml

    if target not in frame.columns:
        raise ConfigError([Problem("", f"--target {target!r} is not a column of {shown}; its columns are: "
                                   f"{', '.join(map(str, frame.columns))}", "--target", "give the column to predict")])
    if len(frame) == 0:
        raise DataError(f"{shown} has a header and no rows: there is nothing to infer the recipe's columns "
                        "from, or to train on.")
    found = infer(frame, target)
    if not found["numeric"] and not found["categorical"]:
        raise DataError(f"{shown} has no usable feature column besides the target {target!r}: "
                        + "; ".join(f"{c}: {why}" for c, why in found["left_out"]))
    null_max = max((float(frame[c].isna().mean()) for c in [*found["numeric"], *found["categorical"]]), default=0.0)
    min_rows = max(1, min(50, len(frame) // 2))
    q = lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()  # noqa: E731
    lines = [
        "# @package _global_",
        f"# Written by `mlops init --from {shown} --target {target}` from the data's {len(frame)} rows and "
        f"{len(frame.columns)} columns.",
        f"#   mlops up recipe={name}",
        f"name: {name}",
        f"description: Predict {q(str(target))} from {shown}.",
        "",
        "data:",
        "  source: file",
        f"  path: {q(data_path)}",
        f"  target: {q(str(target))}",
    ]
    lines.append("  numeric:" + ("\n" + _yaml_list(found["numeric"]).rstrip("\n") if found["numeric"] else " []"))
    lines.append("  categorical:" + ("\n" + _yaml_list(found["categorical"]).rstrip("\n")
                                     if found["categorical"] else " []"))
    for col, why in found["left_out"]:
        lines.append(f"  # left out {q(str(col))}: {why}")
    lines += [
        "  checks:",
        f"    min_rows: {min_rows}",
        f"    max_null_fraction: {max(_MAX_NULL_FRACTION, round(null_max + 0.01, 2))}",
        "",
        "model:",
        f"  task: {found['task']}    # {found['why']}",
        "  hidden: [32, 16]",
        "  max_epochs: 30",
        "",
    ]
    return "\n".join(lines)


def init(
    directory: Annotated[Path, typer.Argument(help="The project folder to create (or an empty one).")] = Path("."),
    from_: Annotated[Path | None, typer.Option("--from", help="A CSV or Parquet file: the recipe's columns, "
                                               "types and task are inferred from it.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="The column to predict (with --from).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="The recipe's name; default: from the folder.")] = None,
) -> None:
    """Scaffold a project: recipes/ with a starter recipe, a .gitignore for the state directory, a README.

    With --from and --target, the recipe's columns come from the data: numeric and categorical from the
    dtypes and the number of distinct values, the task from the target; ID-like and constant columns are
    left out, with a comment saying why.

    Example: mlops init churn --from data/churn.csv --target churned
    """
    from mlops._atomic import write_atomic

    directory = directory.resolve()
    if directory.exists() and not directory.is_dir():
        raise ConfigError([Problem("", f"{directory} exists and is a file", "DIR", "give a new or empty folder")])
    if directory.is_dir() and any(directory.iterdir()):
        raise ConfigError([Problem("", f"{directory} exists and is not empty: init writes into a new or empty "
                                   "folder only, so it overwrites nothing", "DIR",
                                   "give a new folder, e.g. `mlops init my-project`")])
    if (from_ is None) != (target is None):
        raise ConfigError([Problem("", "--from and --target go together: the data and the column to predict",
                                   "command line", "e.g. --from data/churn.csv --target churned")])
    recipe_name = _name(name or (from_.stem if from_ is not None and directory == Path.cwd().resolve()
                                 else directory.name))
    if from_ is not None:
        assert target is not None
        data = from_.resolve()
        frame = _read(data)
        try:  # inside the project: a relative path keeps the project movable
            data_path = str(data.relative_to(directory))
        except ValueError:
            data_path = str(data)
        text = recipe_from(frame, target, recipe_name, data_path, str(from_))
    else:
        text = STARTER.format(name=recipe_name)
    recipe = directory / "recipes" / f"{recipe_name}.yaml"
    write_atomic(recipe, text)
    write_atomic(directory / ".gitignore", GITIGNORE)
    write_atomic(directory / "README.md", README.format(name=recipe_name))
    err.print(f"created {directory}: recipes/{recipe_name}.yaml, .gitignore, README.md")
    out.print(f"next: cd {directory} && mlops plan recipe={recipe_name} && mlops up recipe={recipe_name}",
              markup=False)
