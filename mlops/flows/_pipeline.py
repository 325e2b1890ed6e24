"""The tasks the flows share, one step each. The flows: `up` (the whole pipeline once), and the deployments'
flows the Plan names, each in a module of its own (see mlops.flows).

    mlops-up     ingest → validate → train → evaluate → register → export → deploy   (`mlops up`)
    mlops-data   ingest → validate → snapshot, emits mlops.dataset.validated            (level 1+, scheduled)
    mlops-train  train → evaluate → register [→ gate → export → deploy]                 (level 2+, on that event)
    mlops-monitor  judge closed traffic windows: quarantine garbage, emit mlops.drift.detected (level 4, scheduled)
    mlops-step   one step, by hand                                                      (`mlops run <step>`)

The flows are thin: each task calls one step of mlops.steps (plain functions over a Stack and typed
artifacts) and adds what Prefect is for: caching, retries, events and the UI. Steps that are pure
functions of their inputs are cached on those inputs (train and evaluate on the training key: config that
affects the model + the data fingerprint), so a second `up` with nothing changed trains nothing. Retries
only where repeating is harmless: reading the source, and asking the server to load a version.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.flows import Flow
from prefect.runtime import flow_run
from pydantic import BaseModel
from rich.console import Console

from mlops import steps
from mlops._names import (
    MANUAL_STEPS,
    MONITOR_FLOW,
    MONITOR_STEP,
    UP_FLOW,
    UP_STEPS,
    model_resource,
)
from mlops.artifacts import (
    DatasetSnapshot,
    ExportedModel,
    GateVerdict,
    RegisteredVersion,
    ServedModel,
    TestMetrics,
    TrainedModel,
    ValidatedData,
)
from mlops.errors import DataError
from mlops.flows import _report as report
from mlops.plan import Gate
from mlops.stack import Stack

console = Console(stderr=True, highlight=False, soft_wrap=True)

__all__ = ["MANUAL_STEPS", "UP_STEPS"]  # re-exported by mlops.flows


class _Flow(Flow):
    """Prefect's Flow, with a new run's parameters JSON-encoded by pydantic.

    To send a new flow run's parameters to the API, Prefect 3.8 encodes them with FastAPI's `jsonable_encoder`,
    which imports all of FastAPI: 0.2 s of CPU in every process that starts a run itself (`mlops up`, `data
    refresh`, `run <step>`; bench/up.py). Our flows' parameters are pydantic models and JSON values, which pydantic
    encodes to the same JSON itself; anything else goes the way Prefect sends it (tests/test_runner_start.py).
    """

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        from pydantic_core import PydanticSerializationError, to_jsonable_python

        if all(isinstance(v, _PLAIN) for v in parameters.values()):
            try:
                return {k: to_jsonable_python(v, by_alias=True) for k, v in parameters.items()}
            except (PydanticSerializationError, TypeError, ValueError, RecursionError):
                pass  # Prefect's way below: a placeholder for what it cannot encode either
        return super().serialize_parameters(parameters)


_PLAIN = (BaseModel, str, int, float, bool, type(None), list, dict)


def flow(**options: Any) -> Any:
    """`@flow(name=..., ...)` as Prefect's decorator, making a _Flow."""
    return lambda fn: _Flow(fn=fn, **options)


def _key_from(ctx: TaskRunContext, params: dict[str, Any]) -> str:
    # v2: the results are typed artifacts since the flavor registry; results cached before are not reused.
    return f"{ctx.task.name}-v2-{params['snapshot'].key}"


# ---------------------------------------------------------------- tasks: one step each
@task(name="ingest", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def ingest(stack: Stack, full: bool = False) -> DatasetSnapshot:
    snapshot = steps.ingest(stack, full)
    report.ingested(stack, snapshot)
    return snapshot


@task(name="validate", cache_policy=NO_CACHE)
def validate(stack: Stack, snapshot: DatasetSnapshot) -> ValidatedData:
    """The data-validation gate; a failing batch is quarantined and never trained on (DataError)."""
    try:
        result = steps.validate(stack, snapshot)
    except DataError as exc:
        report.validation_failed(stack, snapshot, str(exc))
        raise
    report.validated(stack, result)
    return result


@task(name="train", cache_key_fn=_key_from, persist_result=True)
def train(stack: Stack, snapshot: DatasetSnapshot, progress: bool) -> TrainedModel:
    result = steps.train(stack, snapshot, progress)
    report.trained(stack, result)
    return result


@task(name="evaluate", cache_key_fn=_key_from, persist_result=True)
def evaluate(stack: Stack, snapshot: DatasetSnapshot, trained: TrainedModel) -> TestMetrics:
    metrics = steps.evaluate(stack, snapshot, trained)
    report.evaluated(stack, metrics)
    return metrics


@task(name="register", cache_policy=NO_CACHE)
def register(stack: Stack, snapshot: DatasetSnapshot, trained: TrainedModel, metrics: TestMetrics
             ) -> RegisteredVersion:
    version = steps.register(stack, snapshot, trained, metrics, run_id=str(flow_run.get_id()))
    report.registered(stack, version)
    return version


@task(name="gate", cache_policy=NO_CACHE)
def gate(stack: Stack, spec: Gate, version: RegisteredVersion, metrics: TestMetrics) -> GateVerdict:
    verdict = steps.gate(stack, spec, version, metrics)
    report.gated(stack, verdict, version)
    return verdict


@task(name="export", cache_policy=NO_CACHE)
def export(stack: Stack, version: RegisteredVersion) -> ExportedModel:
    """model.onnx + signature, the server's package beside it. Written once per version."""
    return steps.export(stack, version)


@task(name="deploy", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def deploy(stack: Stack, exported: ExportedModel) -> ServedModel:
    served = steps.deploy(stack, exported, by=f"flow:{_run_name()}")
    mv = stack.model_store.get(stack.cfg.name, exported.version)
    report.deployed(stack, served, (mv.lineage.get("tracking") or {}).get("run_id"))
    return served


@task(name="monitor", cache_policy=NO_CACHE)
def monitor(stack: Stack, trigger: str) -> dict[str, Any]:
    result = steps.monitor(stack, trigger, emit=lambda event, payload: _emit(event, model_resource(stack.cfg.name),
                                                                              payload),
                           log=lambda **entry: _log_run(stack, MONITOR_FLOW, trigger, steps=[MONITOR_STEP], **entry))
    report.monitored(stack, result)
    return result


def _run_name() -> str:
    return str(flow_run.get_name() or flow_run.get_id())


def _emit(event: str, resource: str, payload: dict[str, Any]) -> None:
    """Emit an event that automations act on, and wait (5 s at most) until it has left this process.

    Prefect sends events from a worker thread. Right after an event the flow goes on with CPU-bound work (the
    monitor flow renders its drift report, importing matplotlib), and the worker's send waited behind it: the
    server received mlops.drift.detected 0.5-0.6 s after it occurred in half the level-4 reps (bench/loop.py,
    its events line). Waiting here for the send costs the flow a few milliseconds.
    """
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    if emit_event(event=event, resource={"prefect.resource.id": resource}, payload=payload) is None:
        return  # not queued: events are off here
    sent = threading.Thread(target=EventsWorker.instance().wait_until_empty, name="mlops-event-sent", daemon=True)
    sent.start()
    sent.join(_EVENT_SEND_WAIT_S)


_EVENT_SEND_WAIT_S = 5.0


def _log_run(stack: Stack, flow_name: str, trigger: str, **entry: Any) -> None:
    steps.log_run(stack, flow_name, trigger, str(flow_run.get_id()), **entry)


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


@contextmanager
def _recorded(stack: Stack, flow_name: str, trigger: str, step_names: list[str]):
    """A run that fails is in the history too (`mlops runs`), with its reason: quarantined when the data gate
    stopped it, failed otherwise. A failure the flow already recorded (with more detail) is not recorded twice."""
    try:
        yield
    except BaseException as exc:
        if not getattr(exc, "mlops_recorded", False):
            outcome = "quarantined" if isinstance(exc, DataError) else (
                "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            _log_run(stack, flow_name, trigger, steps=step_names, outcome=outcome, reasons=[_reason(exc)])
            exc.mlops_recorded = True  # type: ignore[attr-defined]
        raise


def _run(name: str, fn, *args, **kwargs):
    """A task with a line of progress on the terminal (`mlops up`, `mlops run`)."""
    t0 = time.perf_counter()
    with console.status(f"[bold]{name}[/] ...", spinner="dots"):
        state = fn(*args, return_state=True, **kwargs)
    took = time.perf_counter() - t0
    result = state.result()
    note = " [dim](cached)[/]" if state.name == "Cached" else ""
    console.print(f"  [green]✓[/] {name:<9} {took:6.2f}s{note}")
    return result


def _no_new_rows(stack: Stack, snapshot: DatasetSnapshot) -> dict[str, Any] | None:
    """`up` with data.incremental when no row is past the watermark and a champion is served: nothing to train."""
    store, name = stack.model_store, stack.cfg.name
    champion = store.aliases(name).get("champion")
    if snapshot.incremental.get("new_rows") != 0 or champion is None:
        return None
    said = _nothing_new(snapshot)
    console.print(f"  [green]✓[/] {said}; {name}@{champion} stays the champion", markup=True)
    _log_run(stack, UP_FLOW, "up", version=champion, steps=["ingest"], outcome="no new rows", reasons=[said])
    return {"model": name, "version": champion, "new_version": False, "new_rows": 0, "message": said,
            "metrics": store.get(name, champion).lineage["metrics"], "flow_run_id": str(flow_run.get_id()),
            "endpoint": stack.server.endpoint(champion), "url": stack.server.url}


def _nothing_new(snapshot: DatasetSnapshot) -> str:
    inc = snapshot.incremental
    return (f"no rows past the watermark {inc['column']}={inc['watermark']} <data.incremental.column>: no new "
            "snapshot, nothing retrained")
