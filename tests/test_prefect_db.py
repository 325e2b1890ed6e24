"""mlops.targets._prefect_db: the managed Prefect server's SQLite transactions begin IMMEDIATE.

The race, through Prefect's own SQLite configuration on a temporary database: transaction A reads, B inserts and
commits meanwhile, then A inserts. Begun DEFERRED (Prefect's default) A cannot upgrade its stale read snapshot:
"database is locked" at once, whatever busy_timeout says. Begun IMMEDIATE, B waits for A's commit and both land.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.server.database.configurations import AioSqliteConfiguration

from mlops.targets import _prefect_db
from mlops.targets._prefect import SERVER_MAIN
from mlops.targets._prefect_db import immediate_sqlite_transactions


@pytest.fixture
def unpatched(monkeypatch):
    """AioSqliteConfiguration as Prefect ships it, restored after the test whatever it patched."""
    original = AioSqliteConfiguration.begin_transaction
    original = getattr(original, "__wrapped__", original) if getattr(original, _prefect_db._MARK, False) else original
    monkeypatch.setattr(AioSqliteConfiguration, "begin_transaction", original)
    return original


async def _race(db_path: Path, wait_for_b_s: float) -> tuple[str | None, int]:
    """A reads, B writes and commits, A writes: A's error (None when it committed) and the rows that landed.

    A waits up to `wait_for_b_s` for B's commit before it writes: B commits at once when A holds only a read
    snapshot (DEFERRED); when A holds the write lock (IMMEDIATE), B waits for A whatever the timing.
    """
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{db_path}")
    engine = await config.engine()
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE t (writer TEXT)"))
    a_read, b_done = asyncio.Event(), asyncio.Event()

    async def writer_b() -> None:
        await a_read.wait()
        session = await config.session(engine)
        async with session, config.begin_transaction(session):
            await session.execute(sa.text("INSERT INTO t VALUES ('b')"))
        b_done.set()

    b = asyncio.create_task(writer_b())
    error = None
    session = await config.session(engine)
    try:
        async with session, config.begin_transaction(session):
            await session.execute(sa.text("SELECT count(*) FROM t"))
            a_read.set()
            await asyncio.wait({asyncio.ensure_future(b_done.wait())}, timeout=wait_for_b_s)
            await session.execute(sa.text("INSERT INTO t VALUES ('a')"))
    except sa.exc.OperationalError as e:
        error = str(e.orig)
    await asyncio.wait_for(b, timeout=30)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar_one()
    await engine.dispose()
    return error, rows


def test_deferred_read_then_write_fails_under_a_concurrent_writer(unpatched, tmp_path):
    error, rows = asyncio.run(_race(tmp_path / "prefect.db", wait_for_b_s=20))
    assert error is not None and "database is locked" in error
    assert rows == 1  # only B's


def test_immediate_read_then_write_waits_for_the_concurrent_writer(unpatched, tmp_path):
    assert immediate_sqlite_transactions() is True
    assert immediate_sqlite_transactions() is True  # idempotent: not wrapped twice
    assert AioSqliteConfiguration.begin_transaction.__wrapped__ is unpatched
    error, rows = asyncio.run(_race(tmp_path / "prefect.db", wait_for_b_s=0.5))
    assert error is None
    assert rows == 2


def test_without_the_patch_target_nothing_is_patched(monkeypatch, unpatched):
    monkeypatch.delattr(AioSqliteConfiguration, "begin_transaction")
    assert immediate_sqlite_transactions() is False
    monkeypatch.setattr(AioSqliteConfiguration, "begin_transaction", lambda self, session: None, raising=False)
    assert immediate_sqlite_transactions() is False  # another signature: left as it is
    assert not hasattr(AioSqliteConfiguration.begin_transaction, _prefect_db._MARK)


def test_the_server_process_runs_with_the_patch(tmp_path):
    """SERVER_MAIN's prelude (everything before it runs Prefect) patches the config of the server's database."""
    prelude = SERVER_MAIN.split("runpy.run_module(")[0]
    probe = (prelude + "from prefect.server.database import provide_database_interface as p; "
             "c = p().database_config; "
             "print(type(c).__name__, getattr(c.begin_transaction, '_mlops_begin_immediate', False))")
    env = {"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1]),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"}
    out = subprocess.run([sys.executable, "-c", probe], check=False, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["AioSqliteConfiguration", "True"]


def test_clients_of_the_managed_server_skip_the_version_check_and_of_an_external_one_do_not(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from mlops.targets._prefect import prefect_env

    cfg = SimpleNamespace(target=SimpleNamespace(prefect=SimpleNamespace(host="127.0.0.1", port=4999)))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    ours = prefect_env(cfg, tmp_path)
    assert ours["PREFECT_API_URL"] == "http://127.0.0.1:4999/api"
    assert ours["PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED"] == "false"  # the same install: the same API version

    monkeypatch.setenv("PREFECT_API_URL", "https://prefect.example.com/api")
    theirs = prefect_env(cfg, tmp_path)
    assert theirs["PREFECT_API_URL"] == "https://prefect.example.com/api"
    assert "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED" not in theirs
