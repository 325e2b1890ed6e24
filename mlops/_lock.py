"""The project lock: one command at a time changes a project's state directory and its services.

`mlops up`, `down`, `run`, `deploy`, `promote` and `rollback` hold it for their whole run; read-only commands
(`status`, `plan`, `runs`, `predict`) never take it. A second command fails at once with
:class:`~mlops.errors.ProjectBusy` (exit 8) naming the holder, or waits for it with ``--wait``::

    with project_lock(Layout(state_dir), "mlops up recipe=churn", wait=False):
        ...

How, and why so:

- ``fcntl.flock`` on ``Layout.lock``, a file that is never replaced (a flock belongs to the inode). The kernel
  releases it when the holder exits however it exits, SIGKILL included, so a dead holder's lock is simply
  free: there is no stale-lock test to get wrong, and no pid that could have been recycled.
- Who holds it goes to ``Layout.lock_holder`` (``{"pid", "command", "since"}``), written atomically *after*
  the flock is taken; it is only read to name the holder in the message, never to decide anything.
- The descriptor is close-on-exec (Python's default), so the services `up` starts (Prefect, Triton, the
  runner) never inherit the lock and it ends with the command.
- Re-entrant within a process: a command that calls another locked operation does not deadlock on itself.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mlops._atomic import write_atomic
from mlops._layout import Layout
from mlops.errors import ProjectBusy

_POLL_S = 0.2
_held: dict[str, int] = {}  # lock path -> depth, in this process


def holder(layout: Layout) -> dict[str, Any] | None:
    """Who holds (or last held) the lock, from ``lock.json``; None if nobody wrote it or it cannot be read."""
    try:
        info = json.loads(layout.lock_holder.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it has not written lock.json yet)"
    since = info.get("since")
    when = dt.datetime.fromtimestamp(since).strftime("%Y-%m-%d %H:%M:%S") if isinstance(since, int | float) else "?"
    return f"pid {info.get('pid')} (`{info.get('command')}`, since {when})"


@contextmanager
def project_lock(layout: Layout, command: str | None = None, *, wait: bool = False,
                 on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the project lock for the block; raise ProjectBusy if another process holds it (or wait, ``wait``).

    ``command``: how the holder is named to others (default: this process's argv). ``on_wait``: called once
    with the holder's description when ``wait`` has to wait.
    """
    key = str(layout.lock)
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    layout.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, layout, wait, on_wait)
        _held[key] = 1
        try:
            write_atomic(layout.lock_holder, json.dumps({
                "pid": os.getpid(), "command": command or _argv(), "since": time.time()}) + "\n")
            yield
        finally:
            _held.pop(key, None)
            # lock.json stays: it only names a holder while the flock is held, so a stale one is harmless.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, layout: Layout, wait: bool, on_wait: Callable[[str], None] | None) -> None:
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        info = holder(layout)
        if not wait:
            raise ProjectBusy(
                f"another mlops command is changing this project ({layout.root}): {describe(info)}. Run this one "
                "when it has finished, or add --wait to wait for it; read-only commands (`mlops status`, "
                "`mlops runs`) work meanwhile. A holder that died (even by kill -9) releases the lock by itself."
            )
        if not told and on_wait is not None:
            on_wait(describe(info))
            told = True
        time.sleep(_POLL_S)


def _argv() -> str:
    args = sys.argv[1:] if sys.argv and sys.argv[0].endswith(("mlops", "__main__.py", "cli")) else sys.argv
    return " ".join(["mlops", *args])
