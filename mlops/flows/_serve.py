"""The project's Prefect runner: serves the Plan's deployments and applies its automations.

`mlops up` (level 1+) starts it as a background service (`python -m mlops.flows._serve <file>`)
and `mlops down` stops it. It reads the Plan compiled from the validated config in <file>, and
applies exactly that Plan: each Deployment with its schedule, each Automation as a
DeploymentEventTrigger of the deployment it runs. Deployments of the recipe that the Plan no
longer has (moving down a level) are deleted with the automations they own. Then it writes
<file>.ready with the Plan's digest and serves until stopped. No scheduler or loop of ours:
Prefect schedules, triggers and runs. From level 3 on it also runs the watchdog (mlops.flows._watchdog),
which restarts a model server that died, with the champion.

Each flow run is still its own process (`python -m prefect.engine`, as Prefect's runner starts it), but
forked from a warm process instead of a new interpreter: the runner starts a multiprocessing forkserver
that has already imported Prefect's engine, the flows and the training/export/validation libraries
(`WARM_MODULES`), so a triggered run starts in well under a second instead of paying ~4-8 s of interpreter
start and imports (bench/loop.py, level 4). Cancellation, crash marking and `mlops down` work as before:
the run is a child process in the runner's process group, with the environment Prefect gives it. The runner
knows each deployment's flow entrypoint, so it hands it to the run (PREFECT__FLOW_ENTRYPOINT, as Prefect's own
starters do when they know it): the run imports the flow from the preloaded module instead of reading the
deployment back from the API first.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import runpy
import sys
import warnings
from pathlib import Path
from typing import Any

from mlops._atomic import write_atomic
from mlops.flows._watchdog import start_thread as start_watchdog
from mlops.plan import Plan, compile_plan
from mlops.recipe.schema import Config
from mlops.stack import Stack
from mlops.steps._warm import WARM_LIBRARIES


def recipe_tag(name: str) -> str:
    return f"mlops.recipe:{name}"


async def runner_deployments(plan: Plan, cfg: Config, project: str, state_dir: str) -> list[Any]:
    """The Plan's deployments as Prefect RunnerDeployments, triggers attached."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    from mlops.flows import data_flow, monitor_flow, train_flow

    # Keyed by each flow's own name, which is what a Plan Deployment's `flow` says (mlops._names).
    flows = {f.name: f for f in (data_flow, train_flow, monitor_flow)}
    base = {"config": cfg.model_dump(mode="json"), "project": project, "state_dir": state_dir}
    strategy = {"skip": ConcurrencyLimitStrategy.CANCEL_NEW, "queue": ConcurrencyLimitStrategy.ENQUEUE}
    out = []
    for d in plan.deployments:
        triggers = [DeploymentEventTrigger(name=a.name, expect={a.event}, match={"prefect.resource.id": a.resource},
                                           parameters={**base, **d.parameters, **a.parameters})
                    for a in plan.automations if a.deployment == d.name]
        out.append(await flows[d.flow].ato_deployment(
            name=d.name, interval=d.interval_s, parameters={**base, **d.parameters}, triggers=triggers,
            tags=["mlops", recipe_tag(plan.recipe)], description=f"mlops Plan {plan.digest()}: {' -> '.join(d.steps)}",
            enforce_parameter_schema=False, entrypoint_type=EntrypointType.MODULE_PATH,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=strategy[d.on_overlap])))
    return out


async def remove_stale(client: Any, recipe: str, keep: set[str]) -> list[str]:
    """Delete the recipe's deployments not in `keep`, and the automations they own."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    removed = []
    for dep in await client.read_deployments(deployment_filter=DeploymentFilter(
            tags=DeploymentFilterTags(all_=[recipe_tag(recipe)]))):
        if dep.name not in keep:
            await client.delete_resource_owned_automations(f"prefect.deployment.{dep.id}")
            await client.delete_deployment(dep.id)
            removed.append(dep.name)
    return removed


def remove_all(recipe: str) -> list[str]:
    """Level 0: the recipe has no deployments and no automations."""
    from prefect.client.orchestration import get_client

    async def go() -> list[str]:
        async with get_client() as client:
            return await remove_stale(client, recipe, set())

    return asyncio.run(go())


async def clean_up_after_old_runner(client: Any, recipe: str) -> list[str]:
    """Runs of the recipe's deployments that the previous runner left behind.

    Only one runner serves a recipe and `up` stops the old one before starting this one, so a run left
    Pending or Running has no process. Left alone it would hold its deployment's concurrency slot for
    ever, and every later run of that deployment would be cancelled or queued behind it: forcing
    Crashed releases the slot. Polls the old schedule created that are already due (Late) are
    cancelled: the new schedule takes over. Runs that automations created are kept, and run.
    """
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterTags,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Crashed
    from prefect.types._datetime import now

    ours = DeploymentFilter(tags=DeploymentFilterTags(all_=[recipe_tag(recipe)]))
    orphans = await client.read_flow_runs(deployment_filter=ours, flow_run_filter=FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(
            any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]))))
    for run in orphans:
        await client.set_flow_run_state(run.id, Crashed(message="its runner stopped (mlops up/down)"), force=True)
    due = [r for r in await client.read_flow_runs(deployment_filter=ours, flow_run_filter=FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
        if r.auto_scheduled and r.expected_start_time is not None and r.expected_start_time < now("UTC")]
    for run in due:
        await client.set_flow_run_state(run.id, Cancelled(message="a poll of the previous schedule"), force=True)
    return [r.name for r in (*orphans, *due)]


# What a flow run imports, loaded once by the forkserver: Prefect's engine, the flows, and the libraries the
# built-in flavors import inside their steps (training, ONNX export, validation/profiling, the server client).
# A module that is not installed is skipped (the forkserver ignores ImportError); one not listed is imported
# by the run itself, as before. Only imports, and none may leave a Python thread running in the forkserver: a
# thread holding a lock (an import lock) when a run is forked leaves that lock held in the run for ever. whylogs
# starts usage-report threads on import unless WHYLOGS_NO_ANALYTICS is set (_warm_forkserver sets it).
WARM_MODULES = ("mlops", "prefect.engine", "prefect.flow_engine", "prefect.task_engine", "prefect.artifacts",
                "prefect.concurrency._sync", "prefect._internal.observers", "prefect.utilities.visualization",
                "mlops.flows._data", "mlops.flows._train", "mlops.flows._monitor", *WARM_LIBRARIES)


def _run_engine(env: dict[str, str], cwd: str) -> None:
    """The forked child: what `python -m prefect.engine` does, in the environment the runner gives a run."""
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import Settings

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["prefect.engine"]
    # Settings were read when the forkserver imported Prefect: read them again from this run's environment.
    with SettingsContext(profile=get_settings_context().profile, settings=Settings()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'prefect.engine' found in sys.modules", RuntimeWarning)  # preloaded
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


class _WarmStarter:
    """A Prefect ProcessStarter (prefect.runner._flow_run_executor): the run's engine forked from the warm
    forkserver, with the environment Prefect's EngineCommandStarter would give `python -m prefect.engine`."""

    def __init__(self, engine: Any, entrypoints: dict[Any, str]):
        self.engine = engine  # the EngineCommandStarter the runner chose: its settings for this deployment
        self.entrypoints = entrypoints  # deployment id -> the flow's entrypoint (module path)

    async def start(self, flow_run: Any, task_status: Any = None) -> None:
        import anyio
        from prefect.runner._process_manager import ProcessHandle
        from prefect.settings import get_current_settings
        from prefect.utilities.processutils import sanitize_subprocess_env

        e, control = self.engine, {}
        if e._control_channel is not None:
            try:
                port, token = e._control_channel.register(flow_run.id)
                control = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
            except RuntimeError:  # no loopback listener: Prefect falls back to kill-only cancellation too
                pass
        env = {**os.environ, **e._env, **get_current_settings().to_environment_variables(exclude_unset=True),
               "PREFECT__FLOW_RUN_ID": str(flow_run.id), "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
               "PREFECT__DEPLOYMENT_NAME": e._deployment_name, **control}
        if e._tmp_dir is not None:
            env["PREFECT__STORAGE_BASE_PATH"] = str(e._tmp_dir)
        if (entrypoint := self.entrypoints.get(flow_run.deployment_id)) is not None:
            env["PREFECT__FLOW_ENTRYPOINT"] = entrypoint
        if e._heartbeat_seconds is not None:
            env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(int(e._heartbeat_seconds))
        cwd = str(e._storage.destination if e._storage is not None else (e._cwd or os.getcwd()))
        process = multiprocessing.get_context("forkserver").Process(
            target=_run_engine, args=({k: v for k, v in sanitize_subprocess_env(env).items() if v is not None}, cwd),
            name=f"flow-run-{flow_run.name}")
        try:
            await anyio.to_thread.run_sync(process.start)  # waits for the forkserver's imports the first time
        except BaseException:
            if control:
                e._control_channel.unregister(flow_run.id)
            raise
        if task_status is not None:
            task_status.started(ProcessHandle(process))
        await anyio.to_thread.run_sync(process.join)


def _warm_forkserver(stack_modules: list[str]) -> None:
    """Start the forkserver now, so its imports are done before the first triggered run: WARM_MODULES and the
    stack's flavor implementations (mlops.steps._warm)."""
    from multiprocessing import forkserver

    os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")  # no usage-report threads in the forkserver
    multiprocessing.get_context("forkserver").set_forkserver_preload([*WARM_MODULES, *stack_modules])
    forkserver.ensure_running()


def _graceful_runner(name: str, limit: int, entrypoints: dict[Any, str]) -> Any:
    from prefect.runner import Runner

    class _Runner(Runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            # Prefect 3.8.8's handler calls the async stop() without awaiting it and exits, so runs in flight
            # are neither cancelled nor marked: they stay Submitting/Running and keep their concurrency slot.
            # Stop properly instead: cancel what runs, pause the schedules, return from start().
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self.astop()))

        async def __aenter__(self) -> Any:
            from prefect.runner._starter_engine import EngineCommandStarter

            entered = await super().__aenter__()
            # Prefect picks a starter per run (`python -m prefect.engine` for our deployments); start that
            # same engine forked from the warm forkserver instead (_WarmStarter).
            poller = self._scheduled_run_poller
            chosen = poller._resolve_starter
            poller._resolve_starter = lambda run: (
                _WarmStarter(s, entrypoints) if isinstance(s := chosen(run), EngineCommandStarter) else s)
            return entered

    # Ask for due runs every 0.25 s rather than Prefect's 10: an event-triggered run starts sooner, for one
    # cheap API query each time.
    runner = _Runner(name=name, limit=limit, pause_on_shutdown=True, query_seconds=0.25)
    runner._loop = asyncio.get_running_loop()
    return runner


async def _serve(spec_file: Path) -> None:
    from prefect.client.orchestration import get_client

    spec = json.loads(spec_file.read_text())
    cfg = Config.model_validate(spec["config"])
    plan = compile_plan(cfg)
    deployments = await runner_deployments(plan, cfg, spec["project"], spec["state_dir"])
    async with get_client() as client:
        await remove_stale(client, plan.recipe, {d.name for d in plan.deployments})
        await clean_up_after_old_runner(client, plan.recipe)
    # Each deployment runs one at a time (its concurrency limit), so the runner takes one of each: a training
    # run never waits behind the data polls, and polls that come due during a poll are cancelled, not queued.
    _warm_forkserver(Stack(cfg, spec["project"], spec["state_dir"]).implementation_modules())
    entrypoints: dict[Any, str] = {}  # filled below, read when a run starts
    runner = _graceful_runner(f"mlops-{plan.recipe}", len(deployments), entrypoints)
    for d in deployments:
        entrypoints[await runner.aadd_deployment(d)] = d.entrypoint
    # Level 3+: a model server that dies is restarted with the champion (mlops.flows._watchdog).
    start_watchdog(cfg, spec["project"], spec["state_dir"])
    write_atomic(spec_file.with_suffix(".ready"), plan.digest())
    await runner.start()


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1])))
