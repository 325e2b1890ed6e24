"""Every SQLite transaction of the managed Prefect server begins IMMEDIATE: a workaround, applied in its process.

Checked on Prefect 3.8.8 (``prefect/server/database/configurations.py``). Remove this module, and its call in
:data:`mlops.targets._prefect.SERVER_MAIN`, once Prefect begins its SQLite write transactions IMMEDIATE itself
(upstream: PrefectHQ/prefect issues #18934 and #10188, PR #9594, open as of this writing).

Prefect runs SQLite in WAL mode with ``PRAGMA busy_timeout = 60000``, but
``AioSqliteConfiguration.begin_transaction`` emits ``BEGIN DEFERRED`` unless the caller passes
``with_for_update=True`` (only a few do: setting a flow or task run's state, the scheduler's inserts). A DEFERRED
transaction that reads and then writes must upgrade its read snapshot to a write lock; when another connection
has committed since the read, SQLite answers SQLITE_BUSY at once, without calling the busy handler (waiting
cannot help: the snapshot is stale). So busy_timeout never applies, the request fails with "database is locked",
the API answers 503, and the client retries after 2**n s: 2-8 s added to a flow run created by an automation,
and log lines from the task-run recorder and the event persister. ``BEGIN IMMEDIATE`` takes the write lock
when the transaction begins, before its first read, where SQLite does wait up to busy_timeout for it.

Only ``AioSqliteConfiguration`` is touched, the configuration Prefect uses for a ``sqlite+aiosqlite://`` URL;
a PostgreSQL server (``AsyncPostgresConfiguration``) is left as it is. Sessions opened without
``begin_transaction`` (each statement its own autocommit transaction) are unchanged. Where the patch target is
missing or has another signature (another Prefect version), nothing is patched and the server starts as it is.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

_MARK = "_mlops_begin_immediate"


def immediate_sqlite_transactions() -> bool:
    """Make Prefect's SQLite ``begin_transaction`` always ``BEGIN IMMEDIATE``; True when it is now patched."""
    try:
        from prefect.server.database.configurations import AioSqliteConfiguration
    except ImportError:
        return False
    original = vars(AioSqliteConfiguration).get("begin_transaction")  # its own, not the abstract base's
    if not callable(original):
        return False
    if getattr(original, _MARK, False):
        return True
    try:
        params = inspect.signature(original).parameters
    except (TypeError, ValueError):
        return False
    if list(params)[:2] != ["self", "session"] or "with_for_update" not in params:
        return False

    @functools.wraps(original)  # its __wrapped__: Prefect's own
    def begin_transaction(self: Any, session: Any, with_for_update: bool = False) -> Any:
        # Prefect's own SQLite transaction, begun as its with_for_update (row-locking) callers begin theirs.
        return original(self, session, with_for_update=True)

    setattr(begin_transaction, _MARK, True)
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]
    return True
