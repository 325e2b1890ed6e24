"""What a flow run tells the Prefect UI: log lines, artifacts, a readable name and tags.

The steps (mlops.steps) stay Prefect-free; the tasks in _pipeline.py call these after each step with what it
returned. Each log line names the config key behind the decision (`<data.checks.min_rows=50>`), so the reader
of the run page knows which line of the recipe to edit. Artifacts carry keys per recipe
(`<recipe>-evaluation`, `<recipe>-gate`, `<recipe>-endpoint`, `<recipe>-tracking-run`, `<recipe>-data-validation`,
`<recipe>-drift`), so the Artifacts page keeps each one's history across runs.

Names and tags: a run is named `<recipe>-<trigger>-<short id>` when it starts and `<recipe>-v<N>` once it has
registered version N; a monitor run that judged traffic is `<recipe>-drift-<window>`. Tags `recipe:<name>`,
`level:<n>`, `stack:<name>`, `trigger:<trigger>` let the Runs page filter by recipe.

Reporting is best effort: the UI losing a line must never fail the run it describes, so a failed artifact or
rename is logged as a warning and the flow goes on.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from mlops.artifacts import (
    DatasetSnapshot,
    GateVerdict,
    RegisteredVersion,
    ServedModel,
    TestMetrics,
    TrainedModel,
    ValidatedData,
)
from mlops.stack import Stack

_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_fallback = logging.getLogger("mlops.flows")


def artifact_key(recipe: str, what: str) -> str:
    """Prefect's artifact keys are lowercase letters, digits and dashes: `breast_cancer` -> `breast-cancer-...`."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"{recipe}-{what}".lower())).strip("-")


class _ConsoleQuiet(logging.Filter):
    """Keeps the run loggers' INFO lines off the terminal (`mlops up` prints its own progress); they still go
    to the API, which is where the run page reads them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(_RUN_LOGGERS)


class _NoTraceback(logging.Filter):
    """The run loggers' records (a failed task's traceback and its "Finished in state Failed(...)" among them)
    go to the API, where the run page shows them; the terminal gets mlops' own progress and its one-paragraph
    error instead (`--debug` for a traceback), so a failure is said once, never as a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(_RUN_LOGGERS)


def quiet_tracebacks() -> None:
    """Keep run loggers' tracebacks off the terminal's handlers (not off the API's)."""
    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:
        if "APILogHandler" in type(handler).__name__:
            continue
        if not any(isinstance(f, _NoTraceback) for f in handler.filters):
            handler.addFilter(_NoTraceback())


def _enable_run_logs() -> None:
    # PREFECT_LOGGING_LEVEL=WARNING (targets/_prefect.py: a quiet terminal) also silences the run loggers, which
    # inherit it: the run page then says "This run didn't generate logs". Lift them to INFO and filter the
    # terminal's handler instead.
    lifted = False
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
            lifted = True
    if not lifted:  # the user asked for INFO on the terminal (PREFECT_LOGGING_LEVEL=INFO), or it is done already
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ConsoleQuiet) for f in handler.filters):
            handler.addFilter(_ConsoleQuiet())


def log() -> Any:
    """The run logger of the current task or flow run; outside one (a test calling a task's function) a plain
    logger."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        logger = get_run_logger()
    except MissingContextError:
        return _fallback
    _enable_run_logs()
    quiet_tracebacks()
    return logger


def _safely(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reporting never fails the run (module docstring)
        log().warning(f"could not publish {what} to Prefect: {exc}")
        return None


def _flow_run_id() -> Any:
    from prefect.runtime import flow_run

    return flow_run.get_id()


def _update_run(**fields: Any) -> None:
    from prefect import get_client

    run_id = _flow_run_id()
    if run_id is None:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(run_id, **fields)


# ---------------------------------------------------------------- names and tags
def tags(stack: Stack, trigger: str) -> list[str]:
    cfg = stack.cfg
    return [f"recipe:{cfg.name}", f"level:{cfg.maturity.level}", f"stack:{cfg.stack.name}", f"trigger:{trigger}"]


def started(stack: Stack, trigger: str) -> None:
    """Name the run `<recipe>-<trigger>-<short id>` and tag it; log what this run is about."""
    from prefect.runtime import flow_run

    cfg = stack.cfg
    run_id = str(_flow_run_id() or "")
    name = f"{cfg.name}-{trigger}-{run_id[:8]}" if run_id else None
    existing = list(flow_run.get_tags() or [])
    _safely("the run's name and tags", _update_run, name=name,
            tags=sorted({*existing, *tags(stack, trigger)}))
    log().info(f"recipe {cfg.name!r} at maturity level {cfg.maturity.level} <maturity.level>, stack "
               f"{cfg.stack.name!r} <stack.name>, trigger {trigger!r}; components: "
               + ", ".join(f"{k}={v}" for k, v in cfg.components.items()))


def rename(name: str) -> None:
    _safely("the run's name", _update_run, name=name)


# ---------------------------------------------------------------- data
def ingested(stack: Stack, snapshot: DatasetSnapshot) -> None:
    data = stack.cfg.data
    log().info(f"read {snapshot.rows} rows from {data.describe()} <data.source={data.source}>: "
               f"{len(data.features)} features <data.numeric, data.categorical>, target {data.target!r} "
               f"<data.target>; fingerprint {snapshot.fingerprint}; snapshot {snapshot.path}")


def validated(stack: Stack, result: ValidatedData) -> None:
    checks = stack.cfg.data.checks
    worst = max(result.null_fractions.items(), key=lambda kv: kv[1], default=("-", 0.0))
    log().info(f"data checks passed: {result.rows} rows >= {checks.min_rows} <data.checks.min_rows>; the most "
               f"null column {worst[0]!r} at {worst[1]:.1%} <= {checks.max_null_fraction:.1%} "
               f"<data.checks.max_null_fraction>; column types and target classes as declared"
               + ("; the batch fits the champion's constraints <monitoring.flavor="
                  f"{stack.cfg.monitoring.flavor}>" if stack.monitor is not None else ""))


_COLUMN = re.compile(r"(?:column|target) '([^']+)'")
_CHECK = re.compile(r"(data\.checks\.\w+|data\.numeric|data\.categorical|data\.target|monitoring\.[\w.]+)")


def validation_failed(stack: Stack, snapshot: DatasetSnapshot, message: str) -> None:
    """The data-validation report as a table artifact (column, check, value) and an error line."""
    lines = [ln.strip().lstrip("- ").strip() for ln in message.splitlines()[1:] if ln.strip()]
    rows = []
    for line in lines or [message]:
        col, check = _COLUMN.search(line), _CHECK.search(line)
        rows.append({"column": col.group(1) if col else "(all)", "check": check.group(1) if check else "-",
                     "value": line})
    log().error(f"the batch {snapshot.path} ({snapshot.rows} rows, {snapshot.fingerprint}) failed validation "
                f"and was quarantined; training will not use it: " + "; ".join(r["value"] for r in rows))
    from prefect.artifacts import create_table_artifact

    _safely("the data-validation report", create_table_artifact, table=rows,
            key=artifact_key(stack.cfg.name, "data-validation"),
            description=f"{stack.cfg.name}: batch {snapshot.fingerprint[:19]} failed validation "
                        f"({len(rows)} problem(s)); quarantined")


# ---------------------------------------------------------------- model
def trained(stack: Stack, result: TrainedModel) -> None:
    import json

    model = stack.cfg.model
    history_file = Path(result.dir) / "history.json"
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    monitor = "val_loss"
    best = min(range(len(history)), key=lambda i: history[i].get(monitor, float("inf")), default=None)
    best_text = (f"best epoch {best + 1} by {monitor}: " + ", ".join(
        f"{k}={v:.4f}" for k, v in sorted(result.val_metrics.items()))) if best is not None else (
        "validation metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.val_metrics.items())))
    knobs = [f"{k} {getattr(model, k)} <model.{k}>" for k in ("max_epochs", "lr", "batch_size")
             if hasattr(model, k)]  # a model flavor's config may lack these
    log().info(f"trained {model.flavor} <model.flavor> for {result.epochs} epoch(s) ({', '.join(knobs)}); "
               f"{best_text}; tracking run {result.tracking_run_id} <tracking.flavor={stack.cfg.tracking.flavor}>")


def _champion_metrics(stack: Stack, exclude: int | None = None) -> tuple[int | None, dict[str, float]]:
    store, name = stack.model_store, stack.cfg.name
    champion = store.aliases(name).get("champion")
    if champion is None or champion == exclude:
        return champion, {}
    return champion, dict(store.get(name, champion).lineage.get("metrics", {}))


def evaluated(stack: Stack, metrics: TestMetrics) -> None:
    """The evaluation report: the test metrics, and the champion's beside them."""
    from prefect.artifacts import create_table_artifact

    champion, theirs = _champion_metrics(stack)
    rows = [{"metric": k, "candidate": round(v, 6),
             f"champion{f' v{champion}' if champion is not None else ''}": (
                 round(theirs[k], 6) if k in theirs else "-")}
            for k, v in sorted(metrics.values.items())]
    log().info("test metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.values.items()))
               + (f"; champion v{champion}: " + ", ".join(f"{k}={theirs[k]:.4f}" for k in sorted(metrics.values)
                                                          if k in theirs) if theirs else "; no champion yet"))
    _safely("the evaluation report", create_table_artifact, table=rows,
            key=artifact_key(stack.cfg.name, "evaluation"),
            description=f"{stack.cfg.name}: test metrics of this run's model"
                        + (f" beside the champion v{champion}'s" if champion is not None else " (no champion yet)"))


def registered(stack: Stack, version: RegisteredVersion) -> None:
    store = stack.cfg.registry
    log().info(f"{'registered' if version.new else 'reused'} {version.model} version {version.version} "
               f"<registry.flavor={store.flavor}> at {version.path}"
               + ("" if version.new else " (the same training key was registered before: nothing new)"))
    rename(f"{stack.cfg.name}-v{version.version}")


def gated(stack: Stack, verdict: GateVerdict, version: RegisteredVersion) -> None:
    """The gate's inputs and verdict, as a log line and a markdown artifact."""
    from prefect.artifacts import create_markdown_artifact

    gate = stack.cfg.maturity.gate
    metric, direction = stack.cfg.gate_metric
    champion = "-" if verdict.champion is None else f"{verdict.champion:.4f} (v{verdict.champion_version})"
    candidate = "-" if verdict.candidate is None else f"{verdict.candidate:.4f}"
    word = "PASSED" if verdict.passed else "REJECTED"
    log().info(f"gate {word} for v{version.version}: {metric} {candidate} vs champion {champion} "
               f"({direction} <maturity.gate.metric>, min improvement {gate.min_improvement:g} "
               f"<maturity.gate.min_improvement>, floors {dict(gate.floors) or '-'}, ceilings "
               f"{dict(gate.ceilings) or '-'})" + (": " + "; ".join(verdict.reasons) if verdict.reasons else ""))
    md = [f"# Gate {word}: {stack.cfg.name} v{version.version}", "",
          "| | value |", "|---|---|",
          f"| metric | `{metric}` ({direction}) |", f"| candidate | {candidate} |", f"| champion | {champion} |",
          f"| min improvement | {gate.min_improvement:g} |",
          f"| floors | {dict(gate.floors) or '-'} |", f"| ceilings | {dict(gate.ceilings) or '-'} |", "",
          "## Reasons", ""]
    md += [f"- {r}" for r in verdict.reasons] or ["- every condition holds"]
    _safely("the gate decision", create_markdown_artifact, markdown="\n".join(md),
            key=artifact_key(stack.cfg.name, "gate"),
            description=f"{stack.cfg.name} v{version.version}: {word.lower()}")


def tracking_url(stack: Stack, run_id: str) -> str:
    tracker = stack.tracker()
    run_url = getattr(tracker, "run_url", None)
    return (run_url(run_id) if run_url is not None else None) or tracker.ui_hint()


def deployed(stack: Stack, served: ServedModel, tracking_run_id: str | None) -> None:
    """The server load, and link artifacts to the endpoint and to the tracking run."""
    from prefect.artifacts import create_link_artifact

    cfg = stack.cfg
    log().info(f"{cfg.serving.flavor} <serving.flavor> serves {served.model} version {served.champion} at "
               f"{served.endpoint}; loaded versions {served.loaded or [served.champion]}"
               + (f", previous champion v{served.previous} kept for rollback" if served.previous else ""))
    _safely("the endpoint link", create_link_artifact, link=served.endpoint,
            link_text=f"{served.model} v{served.champion} on {cfg.serving.flavor}",
            key=artifact_key(cfg.name, "endpoint"),
            description=f"{cfg.name} v{served.champion}: the inference endpoint (KServe v2)")
    if tracking_run_id:
        url = tracking_url(stack, tracking_run_id)
        link = url if "://" in url else Path(stack.state_dir).resolve().as_uri()
        _safely("the tracking-run link", create_link_artifact, link=link,
                link_text=f"{cfg.tracking.flavor} run {tracking_run_id}" + ("" if "://" in url else f" ({url})"),
                key=artifact_key(cfg.name, "tracking-run"),
                description=f"{cfg.name} v{served.champion}: the training run in {cfg.tracking.flavor}")


# ---------------------------------------------------------------- monitoring
def monitored(stack: Stack, result: dict[str, Any]) -> None:
    """A drift table per judged window, each with a link to an HTML report of the model's drift."""
    from prefect.artifacts import create_link_artifact, create_table_artifact

    cfg, judged = stack.cfg, result.get("judged", [])
    version = result.get("version")
    if not judged:
        log().info(f"no closed traffic window to judge for {cfg.name}"
                   + (f"@{version}" if version is not None else " (no champion yet)")
                   + f" <monitoring.window_s={cfg.monitoring.window_s}>")
        return
    report = _safely("the drift report", _write_drift_report, stack, version)
    for w in judged:
        start, outcome = w["window"], w["outcome"]
        log().info(f"window {start} of {cfg.name}@{version}: {w.get('rows', '?')} rows, {outcome}"
                   + (f", drifted {w['drifted']}" if w.get("drifted") else "")
                   + (f", outputs drifted {w['output_drifted']}" if w.get("output_drifted") else "")
                   + (f", quarantined in {w['quarantine']}" if w.get("quarantine") else "")
                   + " <monitoring.drift>")
        scores = w.get("scores") or {}
        rows = [{"column": c, "score": None if s is None else round(s, 4),
                 "drift": "DRIFT" if c in w.get("drifted", []) or c in w.get("output_drifted", []) else "ok"}
                for c, s in sorted(scores.items())]
        _safely("the drift table", create_table_artifact, table=rows or [{"column": "(all)", "score": None,
                                                                         "drift": outcome}],
                key=artifact_key(cfg.name, "drift"),
                description=f"{cfg.name}@{version}, window {start}: {outcome}")
        if report is not None:
            _safely("the drift report link", create_link_artifact, link=report.resolve().as_uri(),
                    link_text=f"drift report {cfg.name}@{version}", key=artifact_key(cfg.name, "drift-report"),
                    description=f"{cfg.name}@{version}: drift per column over every window (HTML)")
    rename(f"{cfg.name}-drift-{judged[-1]['window']}")


def _write_drift_report(stack: Stack, version: int) -> Path:
    from mlops import steps
    from mlops._atomic import write_atomic
    from mlops.monitoring import drift_history, render_html, windows
    from mlops.monitoring._summaries import split_columns

    cfg = stack.cfg
    _v, reference = steps.reference_profile(stack)
    profiler = steps.batch_profiler(stack)
    window_dir = stack.layout.windows(cfg.name, version)
    inputs, outputs = split_columns(profiler.columns(reference), cfg.data.features)
    history = drift_history(profiler, reference, window_dir, inputs, cfg.monitoring.drift, outputs)
    stored = windows(window_dir)
    latest = profiler.read(stored[-1][1]) if stored else None
    path = stack.layout.drift_report(cfg.name, version)
    write_atomic(path, render_html(f"{cfg.name}@{version}: drift", profiler, reference, latest, history,
                                   inputs, cfg.monitoring.drift, outputs))
    return path
