"""The Prefect API the flows talk to: a managed local server, or one the user points us at.

The managed server is started by our own supervisor (:mod:`mlops._process`), not by Prefect's
``prefect server start --background`` / ``prefect server stop``. Observed with Prefect 3.8.8:

- ``--background`` spawns ``python -m uvicorn ... prefect.server.api.server:create_app`` with stdout and stderr
  on pipes that nobody reads once the CLI exits: the server's log is lost (and a full pipe would block it),
  where we want it in ``<state_dir>/logs/prefect.log``.
- It returns after about 4 s, before ``/api/health`` answers (that took about 11 s more): no health wait.
- The child stays in the CLI's session and process group (no new session), so it is not one group we can stop.
- Its pid goes to ``$PREFECT_HOME/server.pid``, created with ``exist_ok=False``: a pid file left by a crash
  makes the next ``--background`` start fail ("already running") until someone deletes it.
- ``prefect server stop`` only reads ``$PREFECT_HOME/server.pid``: run with another PREFECT_HOME it says
  "No server running in the background." while the server keeps running. It sends one SIGTERM to that pid
  and returns at once (the server was still alive 0.3 s later): no wait, no SIGKILL, no port check, so
  ``mlops down`` could not promise the port is free when it returns.

So ``prefect server start`` runs in the foreground under :class:`~mlops._process.Supervisor` (loopback bind and
our port from ``target.prefect.*``, state under ``<state_dir>/prefect``, health wait within
``target.prefect.start_timeout_s``, stopped as a process group by ``mlops down``).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from importlib.metadata import version
from pathlib import Path

from mlops._atomic import DiskFull, copy_of_template
from mlops._layout import Layout, machine_cache
from mlops._process import Supervisor
from mlops.recipe.schema import Config


def external_api_url() -> str | None:
    """PREFECT_API_URL from the environment (Prefect Cloud or an existing server): then we start nothing."""
    return os.environ.get("PREFECT_API_URL") or None


def api_url(cfg: Config) -> str:
    return external_api_url() or f"http://{cfg.target.prefect.host}:{cfg.target.prefect.port}/api"


def ui_url(cfg: Config) -> str:
    url = api_url(cfg)
    if "api.prefect.cloud" in url:
        return url.replace("api.prefect.cloud/api/accounts", "app.prefect.cloud/account").replace("/workspaces/", "/workspace/")
    return url.removesuffix("/api")


def prefect_env(cfg: Config, state_dir: Path) -> dict[str, str]:
    """Settings for the server and for every process that runs flows (set before prefect is imported)."""
    home = Layout(state_dir).prefect
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url(cfg),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    }
    if not external_api_url():
        # The server is the one this install starts (the same Prefect), so its API version is this client's:
        # no /admin/version round trip when each process opens its client (a flow run's start waits on it).
        env["PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED"] = "false"
    return env


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def prefect_service(state_dir: Path) -> Supervisor:
    return Supervisor("prefect", Layout(state_dir))


# The managed server keeps SQLite's writers few: a short interval schedule (a data poll every few seconds) would
# otherwise get 100 runs created ahead, each later marked Late and cancelled, and those writes contend with
# the runs that matter ("database is locked"). A few runs ahead, topped up every 15 s, is enough.
SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "5",
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "15",
}


# The server's process: `python -m prefect` after `import mlops`, which spares it jsonschema's IRI grammar, and
# after SQLite's transactions are made to begin IMMEDIATE (mlops.targets._prefect_db: "database is locked").
SERVER_MAIN = ("import mlops, runpy; from mlops.targets._prefect_db import immediate_sqlite_transactions; "
               "immediate_sqlite_transactions(); runpy.run_module('prefect', run_name='__main__', alter_sys=True)")


def database_template() -> Path:
    """An empty Prefect database, migrated to this Prefect version's head, that every new project copies."""
    return machine_cache() / f"prefect-{version('prefect')}.db"


def seed_database(state_dir: Path) -> bool:
    """Give a project without a Prefect database a copy of the migrated empty one; True when it was copied.

    A new database is migrated by Alembic through every revision Prefect has shipped: about 7 s of CPU on this
    2-core machine, on the critical path of every first `up` (bench/zero.py). The result depends only on the
    Prefect version, so it is made once per machine and version, in a child process, and copied from then on;
    the server's own migration check then finds the head revision and has nothing to do.
    """
    return copy_of_template(Layout(state_dir).prefect_db, database_template(), _migrate_empty)


def _migrate_empty(db: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mlops-prefect-db-") as home:
        env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}"}
        code = ("import asyncio, mlops; from prefect.server.database import provide_database_interface as db; "
                "asyncio.run(db().create_db())")
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=600)
    with sqlite3.connect(db) as con:  # the write-ahead log folded in: one self-contained file
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def start_server(cfg: Config, state_dir: Path) -> None:
    try:
        seed_database(state_dir)
    except DiskFull:
        raise
    except (OSError, subprocess.SubprocessError):
        pass  # no template (the migration failed in the child): the server migrates the new database itself
    env = {**os.environ, **prefect_env(cfg, state_dir), **SERVER_SETTINGS}
    host, port = cfg.target.prefect.host, cfg.target.prefect.port
    url = api_url(cfg)
    prefect_service(state_dir).start(
        [sys.executable, "-c", SERVER_MAIN, "server", "start", "--host", host, "--port", str(port)],
        env=env,
        ports={"target.prefect.port": (host, port)},
        ready=[("healthy", lambda: healthy(url))],
        timeout=cfg.target.prefect.start_timeout_s,
        timeout_key="target.prefect.start_timeout_s",
    )
