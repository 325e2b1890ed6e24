"""`mlops validate` and `mlops monitor report`: the data-validation gate by hand, and drift reports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mlops.cli._app import JsonFlag, Overrides, err, out
from mlops.cli._app import _load as load_config
from mlops.cli._app import _print_json as print_json
from mlops.cli._app import _project as project
from mlops.errors import DataError

monitor_app = typer.Typer(help="Monitoring: drift of served traffic against the training data.",
                          no_args_is_help=True, rich_markup_mode=None)


def validate(
    overrides: Overrides = None,
    input_: Annotated[Path, typer.Option("--input", "-i", help="A batch to check: .csv or .parquet.")] = Path("batch.csv"),
    json_: JsonFlag = False,
) -> None:
    """Check a data batch against the recipe's constraints and the champion's reference profile.

    The same check ingest runs on every batch. Exit 3 if any constraint fails.

    Example: mlops validate recipe=churn --input new_rows.csv
    """
    import pandas as pd

    from mlops import steps
    from mlops.monitoring._batch import check_batch, render_failures
    from mlops.stack import Stack

    cfg = load_config(overrides, check_data=False)
    if not input_.is_file():
        raise DataError(f"--input {input_}: no such file. Give a .csv or .parquet batch with the recipe's columns.")
    try:
        frame = pd.read_parquet(input_) if input_.suffix in (".parquet", ".pq") else pd.read_csv(input_)
    except (ValueError, OSError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise DataError(f"--input {input_}: cannot be read as a batch ({(str(exc).splitlines() or [''])[0]}). Give "
                        "a .csv with a header row, or a .parquet, with the recipe's columns.") from None
    stack = Stack(cfg, project())
    report = check_batch(cfg, frame, steps.reference_profile(stack)[1], stack.monitor)
    if json_:
        print_json({"ok": report.ok, "rows": report.rows, "failures": [
            {"column": f.column, "constraint": f.constraint, "details": f.details} for f in report.failures]})
        if not report.ok:
            sys.exit(DataError.exit_code)
        return
    if not report.ok:
        raise DataError(render_failures(report, str(input_)))
    out.print(f"{input_}: {report.rows} rows pass every constraint")


@monitor_app.command("report")
def report(
    overrides: Overrides = None,
    json_: JsonFlag = False,
    html: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report (PNG charts).")]
    = None,
) -> None:
    """Drift per column of the served model's traffic windows against its training data, and over time.

    Example: mlops monitor report recipe=breast_cancer --html drift.html
    """
    from mlops import steps
    from mlops.monitoring import drift_history, render_html, windows
    from mlops.stack import Stack

    cfg = load_config(overrides, check_data=False)
    stack = Stack(cfg, project())
    version, reference = steps.reference_profile(stack)
    if reference is None:
        raise DataError(f"model {cfg.name!r} has no registered version with a reference profile yet; "
                        f"run `mlops up recipe={cfg.name}` first.")
    window_dir = stack.layout.windows(cfg.name, version)
    profiler = steps.batch_profiler(stack)
    history = drift_history(profiler, reference, window_dir, cfg.data.features, cfg.monitoring.drift)
    if html is not None:
        stored = windows(window_dir)
        latest = profiler.read(stored[-1][1]) if stored else None
        from mlops._atomic import write_atomic

        write_atomic(html, render_html(f"{cfg.name}@{version}: drift", profiler, reference, latest, history,
                                       cfg.data.features, cfg.monitoring.drift))
        err.print(f"wrote {html}")
    if json_:
        print_json({"model": cfg.name, "version": version, "windows": history})
        return
    if not history:
        out.print(f"{cfg.name}@{version}: no serving-traffic windows yet under {window_dir}")
        return
    last = history[-1]
    out.print(f"{cfg.name}@{version}: {len(history)} window(s); latest {last['rows']} rows")
    for col, d in last["columns"].items():
        score = "-" if d["score"] is None else f"{d['score']:.3f}"
        out.print(f"  {col:<28} {score:>6}  {d['category']}")
