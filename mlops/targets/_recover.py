"""What `mlops up` (holding the project lock) puts right after a crash, before it runs anything.

- **Runs with no process.** `mlops up` and `mlops run` run their flow in the CLI process. If that process died
  (kill -9, power) or the Prefect server died under it, the flow run stays Running (or Pending) in Prefect
  for ever. The caller holds the project lock, so no other CLI process runs a flow in this project now: such
  a run of this project's state directory is an orphan, and it is marked Crashed with a message saying so.
  Runs of the Plan's deployments belong to the runner, which cleans up after itself
  (mlops.flows._serve.clean_up_after_old_runner); they are not touched here.
- **Versions left `candidate`.** At level 3 a version is `candidate` from its registration until the gate judges
  it, within one mlops-train run. If that run ended without a verdict (crashed, failed, cancelled, or unknown
  to a Prefect server whose database was lost), nobody will ever judge it: it is marked `rejected`, with the
  reason, so `mlops status` shows why and `mlops promote <model>@<N> --force` can still serve it by hand. A
  candidate whose run is still going (the runner is judging it now) is left alone. Rejected rather than
  registered because no gate has looked at it: the gate is never skipped silently.

Both need the Prefect client (importing it is ~2-4 s of a warm `up`), and neither can have anything to do when
no command's flow run is unaccounted for and no version is `candidate`: :func:`in_flight` marks a flow run in a
command's process from before it starts until Prefect has its end, and :func:`needed` looks at that mark and the
registry's statuses only.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from mlops._atomic import write_atomic
from mlops._names import STEP_FLOW, UP_FLOW
from mlops.stack import Stack

# A run in one of these still has (or may get) a process working on it.
_LIVE = ("PENDING", "RUNNING", "CANCELLING", "SCHEDULED", "PAUSED")


@contextmanager
def in_flight(stack: Stack, flow: str) -> Iterator[None]:
    """Around a flow run in this process (the caller holds the project lock). The mark stays if the block
    raises (the run may have ended without Prefect hearing of it: its server went away) or the process dies."""
    mark = stack.layout.flow_in_flight
    write_atomic(mark, json.dumps({"flow": flow, "pid": os.getpid(), "since": time.time()}))
    yield
    mark.unlink(missing_ok=True)


def needed(stack: Stack) -> bool:
    """Whether :func:`recover` may find anything: a flow run of a command left unaccounted for, or a candidate."""
    if stack.layout.flow_in_flight.exists():
        return True
    return any(s["status"] == "candidate" for s in stack.model_store.statuses(stack.cfg.name).values())


def recover(stack: Stack) -> dict[str, list[Any]]:
    """Crash this project's orphaned `up`/`run` flow runs, then settle its candidates. Needs the project lock."""
    return asyncio.run(_recover(stack))


async def _recover(stack: Stack) -> dict[str, list[Any]]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        crashed = await crash_orphans(client, stack.state_dir)
        rejected = await settle_candidates(client, stack)
    stack.layout.flow_in_flight.unlink(missing_ok=True)
    return {"crashed": crashed, "rejected": rejected}


async def crash_orphans(client: Any, state_dir: Path) -> list[str]:
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[UP_FLOW, STEP_FLOW])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
            any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]))))
    ours = [r for r in runs if str(Path(str(r.parameters.get("state_dir", ""))).resolve()) == str(state_dir)]
    for run in ours:
        await client.set_flow_run_state(run.id, Crashed(
            message="the process running it ended without reporting (killed, or the Prefect server went away); "
                    "marked by the next `mlops up`"), force=True)
    return [r.name for r in ours]


async def settle_candidates(client: Any, stack: Stack) -> list[int]:
    from prefect.exceptions import ObjectNotFound

    store, name = stack.model_store, stack.cfg.name
    rejected = []
    for version, status in sorted(store.statuses(name).items()):
        if status["status"] != "candidate":
            continue
        run_id = store.get(name, version).lineage.get("flow_run_id", "")
        try:
            run = await client.read_flow_run(UUID(run_id))
            state = run.state.type.value if run.state else "UNKNOWN"
            named = run.state.name if run.state else "no state"
        except (ObjectNotFound, ValueError):
            state, named = "UNKNOWN", "unknown to the Prefect server"
        if state in _LIVE:
            continue
        store.set_status(name, version, "rejected", [
            f"never judged by the gate: the run that registered it (flow run {run_id or '?'}) ended {named} "
            f"before the verdict; `mlops promote {name}@{version} --force` serves it anyway"])
        rejected.append(version)
    return rejected
