"""`mlops data refresh`: look at the data source now, incrementally or from scratch (`--full`)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from mlops.cli._app import JsonFlag, Overrides, WaitFlag, _load, _locked, _print_json, _project, out
from mlops.errors import ConfigError, Problem

data_app = typer.Typer(help="The data source: ingest it now, incrementally or in full.\n\n"
                       "Example: mlops data refresh recipe=warehouse_incremental --full",
                       no_args_is_help=True, rich_markup_mode=None)


@data_app.command("refresh")
def refresh(
    overrides: Overrides = None,
    full: Annotated[bool, typer.Option("--full", help="Re-read every row and start a new watermark chain "
                                       "(with data.incremental; the earlier snapshots stay on disk).")] = False,
    json_: JsonFlag = False,
    wait: WaitFlag = False,
) -> None:
    """Look at the data now, as the level-1+ data flow does on its schedule: ingest, validate, record a snapshot.

    With data.incremental only the rows past the last snapshot's watermark are read; none past it records no
    snapshot and trains nothing. --full re-reads everything as a new watermark chain, so training windows
    (data.window) start over from it. At level 2+ a new snapshot starts training, as a scheduled look would.

    Example: mlops data refresh recipe=warehouse_incremental --full --json
    """
    from mlops.targets import _prefect, get_target

    cfg = _load(overrides)
    if cfg.maturity.level < 1:
        raise ConfigError([Problem("maturity.level", "is 0: nothing refreshes data at level 0 (snapshots are "
                                   "taken by `mlops run ingest` and `mlops up`)", "command line",
                                   "use `mlops run ingest`, or choose maturity=1 or higher")])
    if cfg.target.kind != "local":
        raise ConfigError([Problem("target", f"is {cfg.target.kind}: `mlops data refresh` runs the data flow on this "
                                   "machine only", "command line", "add target=local")])
    target = get_target(cfg, _project())
    with _locked(cfg, wait):
        target._ensure_prefect()
        os.environ.update(_prefect.prefect_env(cfg, target.state_dir))
        from mlops.flows import data_flow, in_this_process

        with in_this_process():
            result = data_flow(cfg, str(target.project), str(target.state_dir), trigger="refresh", full=full)
    if json_:
        _print_json({"model": cfg.name, "full": full, **result})
        return
    inc = result.get("incremental") or {}
    if result.get("new"):
        mark = f"; watermark {inc['column']}={inc['watermark']}" if inc else ""
        kind = "full read, a new watermark chain" if full else ("rows past the watermark" if inc.get("after")
                                                                is not None else "rows")
        out.print(f"{cfg.name}: new snapshot of {result['rows']} {kind}{mark}: {result['snapshot']}", markup=False)
        if cfg.maturity.level >= 2:
            out.print("training starts on it (the deployments' automation; see `mlops runs`)", markup=False)
    else:
        said = result.get("message") or (f"quarantined before: {result['quarantined']}" if result.get("quarantined")
                                         else "nothing new: the data is the latest snapshot")
        out.print(f"{cfg.name}: {said}", markup=False)
