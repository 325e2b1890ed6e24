"""mlops.targets._recover: a version left `candidate` by a run that ended is rejected with the reason, once.

The model store is the real one; the Prefect API is the outside world here, so a small stand-in answers
read_flow_run the way Prefect's client does (tests/test_faults.py runs recovery against the real server)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import SimpleNamespace

from prefect.exceptions import ObjectNotFound

from mlops.recipe import load
from mlops.stack import Stack
from mlops.targets._recover import settle_candidates

ROOT = Path(__file__).resolve().parents[1]


class Runs:
    """read_flow_run over a dict of run id -> state type (absent: the server does not know the run)."""

    def __init__(self, states: dict[str, str]):
        self.states = states

    async def read_flow_run(self, run_id: uuid.UUID):
        if str(run_id) not in self.states:
            raise ObjectNotFound(http_exc=None)
        kind = self.states[str(run_id)]
        return SimpleNamespace(state=SimpleNamespace(type=SimpleNamespace(value=kind), name=kind.title()))


def test_candidates_of_ended_runs_are_rejected_and_those_still_running_are_left(tmp_path):
    cfg = load(["recipe=churn", f"target.state_dir={tmp_path / 'state'}"], ROOT, check_data=False)
    stack = Stack(cfg, ROOT)
    store, name = stack.model_store, cfg.name
    runs = {k: str(uuid.uuid4()) for k in ("crashed", "running", "lost", "judged")}
    ckpt = tmp_path / "w.ckpt"
    ckpt.write_bytes(b"w")
    for k, run in runs.items():
        v = store.register(name, {"model.ckpt": ckpt}, {"key": k, "flow_run_id": run}).version
        store.set_status(name, v, "registered" if k == "judged" else "candidate")
    client = Runs({runs["crashed"]: "CRASHED", runs["running"]: "RUNNING", runs["judged"]: "COMPLETED"})

    assert asyncio.run(settle_candidates(client, stack)) == [1, 3]
    st = store.statuses(name)
    assert [st[v]["status"] for v in (1, 2, 3, 4)] == ["rejected", "candidate", "rejected", "registered"]
    assert st[1]["reasons"] == [f"never judged by the gate: the run that registered it (flow run {runs['crashed']}) "
                                f"ended Crashed before the verdict; `mlops promote churn@1 --force` serves it anyway"]
    assert "ended unknown to the Prefect server" in st[3]["reasons"][0]
    # Once settled, nothing more to do; the running one is settled by its own run's gate.
    assert asyncio.run(settle_candidates(client, stack)) == []
