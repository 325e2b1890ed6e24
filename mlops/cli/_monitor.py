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
    input_: Annotated[Path, typer.Option("--input", "-i", help="A batch to check: .csv or .parquet; for an image recipe, a folder of class folders of images.")] = Path("batch.csv"),
    json_: JsonFlag = False,
) -> None:
    """Check a data batch exactly as the pipeline's validate step would, without writing anything.

    The file is read like a `file` data source with the recipe's columns; then the recipe's checks (columns,
    data.checks.min_rows, types, nulls, the target, non-finite values) and the constraints against the
    champion's reference profile. Exit 3 if any fails, or if the file cannot be read.

    Example: mlops validate recipe=churn --input new_rows.csv
    """
    from mlops import steps
    from mlops.data import read_batch, repair_frame
    from mlops.stack import Stack

    cfg = load_config(overrides, check_data=False)
    frame = read_batch(input_, cfg.data, project())
    # The repair ingest would apply (data.checks.non_finite=drop|clip), reported rather than written.
    frame, repairs = repair_frame(frame, cfg.data, cfg.model.task)
    stack = Stack(cfg, project())
    report, batch, problems = steps.check_frame(stack, frame, str(input_), with_profile=True)
    if json_:
        failures = [{"column": f.column, "constraint": f.constraint, "details": f.details}
                    for f in (batch.failures if batch else [])]
        print_json({"ok": not problems, "rows": report.rows, "problems": problems, "failures": failures,
                    "non_finite": [b.to_dict() for b in report.non_finite],
                    **({"repairs": repairs} if repairs else {})})
        if problems:
            sys.exit(DataError.exit_code)
        return
    if problems:
        raise DataError(f"{input_} fails validation for recipe {cfg.name!r}:\n" + "\n".join(problems))
    if repairs:
        err.print(f"data.checks.non_finite={repairs['policy']}: {repairs['rows_before']} rows read, "
                  f"{repairs['rows_after']} kept; values repaired in "
                  f"{', '.join(c['column'] for c in repairs['columns'])}", markup=False)
    out.print(f"{input_}: {report.rows} rows pass every constraint (the recipe's checks and the champion's profile)")


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
        latest = None
        for _start, path in reversed(windows(window_dir)):  # the latest window that can be read
            try:
                latest = profiler.read(path)
                break
            except Exception:  # reported as skipped in the history; the page shows the one before
                continue
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
    for h in history:
        if "skipped" in h or "non_finite" in h:
            why = h.get("skipped") or f"non-finite or out-of-float32-range values in {', '.join(h['non_finite'])}"
            out.print(f"  window {h['window']}: not scored: {why}", markup=False)
    for col, d in last["columns"].items():
        score = "-" if d["score"] is None else f"{d['score']:.3f}"
        out.print(f"  {col:<28} {score:>6}  {d['category']}")
