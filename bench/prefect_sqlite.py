"""Benchmark: "database is locked" on the Prefect server's SQLite, the stock server against ours, in one run.

    python bench/prefect_sqlite.py [--seconds 15] [--creators 4] [--flow-procs 2] [--tasks 8] [--events-per-s 4]

For each server in turn (same port, a fresh temporary PREFECT_HOME with the migrated empty database, nothing
else changed but the launch code):
  - stock:     `python -c "import mlops, runpy; runpy.run_module('prefect', ...)" server start` (before the fix);
  - immediate: `python -c SERVER_MAIN server start`, the code mlops.targets._prefect launches (every SQLite
               transaction begins IMMEDIATE, mlops.targets._prefect_db),
the same concurrent writers for --seconds, the way a project at level 4 writes:
  - --flow-procs processes, each running flows back to back, each flow with --tasks tasks submitted at once
    (flow and task run states, task run events for the task_run_recorder, events for the event persister);
  - --creators loops creating flow runs from a deployment through Prefect's client (its 503 retries included);
  - events posted at --events-per-s to /api/events, each firing an automation whose RunDeployment action
    creates a flow run (the level-4 path: drift event -> automation -> run).
Counted: the server's 503 answers (every "Encountered retryable exception" it logs with
PREFECT_API_LOG_RETRYABLE_ERRORS), its "database is locked" log lines, the 503s the creators' client met, the
latency of the creators' flow-run creates (p50/p95/max, retries included; "failed": still 503 after the
client's retries), and of the automation's runs (event
occurred -> flow run created, p50/max). Port 4900 (BENCH_PORT to change); --keep keeps the server logs.
A create can wait out SQLite's busy_timeout (60 s) on the stock server, so its half can take longer than
--seconds; about 2-3 min in all on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.targets._prefect import SERVER_MAIN, SERVER_SETTINGS, database_template

PORT = int(os.environ.get("BENCH_PORT", "4900"))
API = f"http://127.0.0.1:{PORT}/api"
STOCK_MAIN = "import mlops, runpy; runpy.run_module('prefect', run_name='__main__', alter_sys=True)"
VARIANTS = {"stock": STOCK_MAIN, "immediate": SERVER_MAIN}

FLOW_PROC = """
import sys, time
from prefect import flow, task

@task
def work(i):
    time.sleep(0.02)
    return i

@flow
def bench_flows(n):
    futures = [work.submit(i) for i in range(n)]
    return sum(f.result() for f in futures)

end, n, done = time.time() + float(sys.argv[1]), int(sys.argv[2]), 0
while time.time() < end:
    bench_flows(n)
    done += 1
print(done)
"""


def server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, **SERVER_SETTINGS, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(home), "PREFECT_API_URL": API,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_API_LOG_RETRYABLE_ERRORS": "true", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}


def healthy() -> bool:
    try:
        with urllib.request.urlopen(API + "/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def drive(args: argparse.Namespace, env: dict[str, str]) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.exceptions import PrefectHTTPStatusError

    client_503 = 0

    async def on_response(response) -> None:
        nonlocal client_503
        client_503 += response.status_code == 503

    async with get_client(httpx_settings={"event_hooks": {"response": [on_response]}}) as client:
        flow_id = await client.create_flow_from_name("bench-target")
        deployment_id = await client.create_deployment(flow_id, "bench", enforce_parameter_schema=False)
        await client.create_automation(AutomationCore(
            name="bench-drift", trigger=EventTrigger(expect={"bench.drift"}, posture=Posture.Reactive, threshold=1),
            actions=[RunDeployment(source="selected", deployment_id=deployment_id,
                                   parameters={"event_id": "{{ event.resource.id }}"})]))
        await asyncio.sleep(1.0)  # the automation reaches the triggers service

        flow_proc = [sys.executable, "-c", FLOW_PROC, str(args.seconds), str(args.tasks)]
        procs = [await asyncio.create_subprocess_exec(*flow_proc, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.PIPE) for _ in range(args.flow_procs)]
        end = time.monotonic() + args.seconds
        creates: list[float] = []
        occurred: dict[str, datetime] = {}

        failed = 0

        async def creator() -> None:
            nonlocal failed
            while time.monotonic() < end:
                t = time.perf_counter()
                try:
                    await client.create_flow_run_from_deployment(deployment_id, parameters={"event_id": "creator"})
                except PrefectHTTPStatusError:  # still 503 after the client's retries
                    failed += 1
                else:
                    creates.append(time.perf_counter() - t)

        async def events() -> None:
            while time.monotonic() < end:
                eid, now = uuid.uuid4(), datetime.now(UTC)
                occurred[str(eid)] = now
                r = await client._client.post("/events", json=[{
                    "id": str(eid), "occurred": now.isoformat(), "event": "bench.drift",
                    "resource": {"prefect.resource.id": str(eid)}}])
                r.raise_for_status()
                await asyncio.sleep(1 / args.events_per_s)

        await asyncio.gather(*(creator() for _ in range(args.creators)), events())
        flows_done = 0
        for p in procs:
            out, err = await asyncio.wait_for(p.communicate(), timeout=180)
            if p.returncode != 0:
                print(f"flow process exited {p.returncode}: {err.decode()[-1500:]}", file=sys.stderr)
            flows_done += int(out.split()[-1]) if p.returncode == 0 and out.split() else 0

        await asyncio.sleep(5.0)  # automation runs for the last events
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        runs, page = [], DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        while batch := await client.read_flow_runs(deployment_filter=page, limit=200, offset=len(runs)):
            runs += batch
        automation = [(r.created - occurred[r.parameters["event_id"]]).total_seconds() for r in runs
                      if r.parameters.get("event_id") in occurred and r.created]
    return {"creates": creates, "failed": failed, "client_503": client_503, "automation": automation,
            "events": len(occurred), "flows": flows_done}


def run_variant(name: str, code: str, args: argparse.Namespace, work: Path) -> dict[str, object]:
    home = work / name
    home.mkdir()
    if database_template().exists():  # skips Alembic's migration (~7 s); the server migrates a missing one itself
        shutil.copyfile(database_template(), home / "prefect.db")
    env = server_env(home)
    log = home / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-c", code, "server", "start", "--host", "127.0.0.1",
                                   "--port", str(PORT)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not healthy():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name}: the server did not start\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the client in this process talks to this server
        try:
            result = asyncio.run(drive(args, env))
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    text = log.read_text()
    result["server_503"] = text.count("Encountered retryable exception in request")
    result["locked_lines"] = sum("database is locked" in line for line in text.splitlines())
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--creators", type=int, default=4)
    ap.add_argument("--flow-procs", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--events-per-s", type=float, default=4)
    ap.add_argument("--only", choices=sorted(VARIANTS), help="run one server only")
    ap.add_argument("--keep", action="store_true", help="keep the servers' homes and logs (path on stderr)")
    args = ap.parse_args()
    results = {}
    work = Path(tempfile.mkdtemp(prefix="bench-prefect-sqlite-"))
    try:
        for name, code in VARIANTS.items():
            if args.only in (None, name):
                t = time.perf_counter()
                results[name] = run_variant(name, code, args, work)
                print(f"{name}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"homes and server logs under {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.seconds:g} s of load: {args.flow_procs} flow processes x {args.tasks} tasks, {args.creators} "
          f"creators, {args.events_per_s:g} events/s -> automation -> RunDeployment")
    head = (f"{'server':<10} {'503 (server)':>12} {'locked lines':>12} {'503 (creators)':>14} "
            f"{'creates':>7} {'failed':>6} "
            f"{'create p50/p95/max s':>21} {'flows':>5} {'events':>6} {'auto runs':>9} {'event->run p50/max s':>21}")
    print(head)
    nan = float("nan")
    for name, r in results.items():
        c, a = r["creates"], r["automation"]
        print(f"{name:<10} {r['server_503']:>12} {r['locked_lines']:>12} {r['client_503']:>14} "
              f"{len(c):>7} {r['failed']:>6} "
              f"{statistics.median(c) if c else nan:>7.3f}/{pct(c, 0.95):>5.3f}/{max(c, default=nan):>6.3f} "
              f"{r['flows']:>5} {r['events']:>6} {len(a):>9} "
              f"{statistics.median(a) if a else nan:>11.3f}/{max(a, default=nan):>8.3f}")


if __name__ == "__main__":
    main()
