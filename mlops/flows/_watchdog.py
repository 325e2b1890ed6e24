"""Level 3+: the runner's watchdog. A model server that dies is restarted with the champion, without training.

The Prefect runner (mlops.flows._serve) runs it in a thread beside the deployments it serves, from level 3
on (`maturity.watchdog.enabled`). Every `maturity.watchdog.poll_s` it asks the stack's server whether it
answers (`ModelServer.live`, so any server flavor); after `misses` failed checks in a row the server is down:
gone (its process ended: `ModelServer.running` is false), or hung (its process runs but has not answered for
`hung_s`; a server that is only slow under load is left alone until then). Then the watchdog restarts it::

    Watchdog(Stack(cfg, project, state_dir)).run(stop)     # in the runner; `stop` is a threading.Event

How, and why so:

- **Restart = stop + start.** `stop` clears what a hung server left (for Triton: SIGTERM, then SIGKILL to its
  group; nothing if it is gone) and `start` loads every model that was served at the versions its config
  names, the champion and the previous champion kept for rollback (mlops.serving._deploy.ensure_triton). The
  registry is not touched: no training, no new version. The champion alias is then checked to answer.
- **The project lock.** The restart holds it (mlops._lock), taken without waiting: while `mlops up`, `down`,
  `deploy`, `promote` or `rollback` changes the project, the watchdog does nothing and looks again at the next
  poll (that command starts or stops the server itself). It never fights a command, and a command never
  fights it: one holding the lock sees the server the watchdog left, `mlops up` a running one it reuses.
- **Backoff and giving up.** The first restart is immediate; each further one within `window_s` waits
  `backoff_s` doubled per restart (at most `max_backoff_s`). After `max_restarts` within `window_s` (a crash
  loop: the server dies again as soon as it is up, or does not start) it gives up: it stops restarting, says
  so in `mlops status` and emits ``mlops.server.gave-up``. It re-arms by itself once the server answers
  again (`mlops up` starts it).
- **What it did is state.** ``Layout.watchdog(<recipe>)`` (``runner/<recipe>.watchdog.json``, written
  atomically on every change) holds its status (watching, unresponsive, down, backoff, deferred, gave-up),
  the restarts in the window and the last restart; `mlops status` shows it. Each restart emits ``mlops.server.restarted`` on
  the model's resource (``mlops.model.<recipe>``, mlops._names) and logs a line in the runner's log.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlops._atomic import write_atomic
from mlops._layout import Layout
from mlops._lock import describe, holder, project_lock
from mlops._names import SERVER_GAVE_UP, SERVER_RESTARTED, model_resource
from mlops.errors import MlopsError, ProjectBusy, ServiceError
from mlops.recipe.schema import Config
from mlops.stack import Stack

Emit = Callable[[str, str, dict[str, Any]], None]


def enabled(cfg: Config) -> bool:
    """Whether the runner of this config watches its model server: level 3+ and `maturity.watchdog.enabled`."""
    return cfg.maturity.level >= 3 and cfg.maturity.watchdog.enabled


def prefect_emit(event: str, resource: str, payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": resource}, payload=payload)


class Watchdog:
    """One model server's watchdog; :meth:`check` is one poll, :meth:`run` polls until ``stop`` is set.

    ``clock`` is wall-clock seconds (restarts are compared across polls and shown in `mlops status`);
    ``emit(event, resource, payload)`` sends an event (Prefect's by default).
    """

    def __init__(self, stack: Stack, *, emit: Emit = prefect_emit, clock: Callable[[], float] = time.time,
                 log: logging.Logger | None = None):
        self.stack = stack
        self.cfg = stack.cfg
        self.wd = stack.cfg.maturity.watchdog
        self.layout = Layout(stack.state_dir)
        self.server = stack.server
        self.emit = emit
        self.clock = clock
        self.log = log or logging.getLogger("mlops.watchdog")
        self.misses = 0
        self.down_since: float | None = None
        self.last_attempt: float | None = None
        self.restarts: list[float] = []  # attempts (successful or not) within window_s
        self.state: dict[str, Any] = {}
        self._set("watching")

    # ------------------------------------------------------------ state
    @property
    def flavor(self) -> str:
        return self.cfg.serving.flavor

    def _set(self, status: str, **extra: Any) -> None:
        state = {**{k: v for k, v in self.state.items() if k == "last_restart"}, "status": status,
                 "server": self.flavor, "since": self.state.get("since") if self.state.get("status") == status
                 else self.clock(), "restarts_in_window": len(self.restarts), "pid": os.getpid(), **extra}
        if state != self.state:
            self.state = state
            write_atomic(self.layout.watchdog(self.cfg.name), json.dumps(state, indent=2, sort_keys=True) + "\n")

    def _window(self, now: float) -> None:
        self.restarts = [t for t in self.restarts if now - t < self.wd.window_s]

    def _backoff(self) -> float:
        """Wait before the next attempt: none for the first in the window, then backoff_s doubling."""
        if not self.restarts:
            return 0.0
        return min(self.wd.backoff_s * 2 ** (len(self.restarts) - 1), self.wd.max_backoff_s)

    # ------------------------------------------------------------ one poll
    def check(self) -> str:
        """Look once and act; returns what happened: ok, miss, unresponsive, gave-up, backoff, deferred,
        restarted, failed."""
        now = self.clock()
        if self.server.live():
            if self.state["status"] == "gave-up":
                self.log.info("%s answers again (started by someone else): the watchdog re-arms", self.flavor)
                self.restarts = []
            self.misses, self.down_since = 0, None
            self._set("watching")
            return "ok"
        self.misses += 1
        self.down_since = self.down_since if self.down_since is not None else now
        if self.misses < self.wd.misses:
            return "miss"
        if self.state["status"] == "gave-up":
            return "gave-up"
        if self.server.running() and now - self.down_since < self.wd.hung_s:
            self._set("unresponsive", reason=f"its process runs but has not answered for {now - self.down_since:.0f} "
                      f"s; restarted after <maturity.watchdog.hung_s={self.wd.hung_s:g}>")
            return "unresponsive"
        self._window(now)
        if len(self.restarts) >= self.wd.max_restarts:
            return self._give_up()
        wait = self._backoff()
        if self.last_attempt is not None and now - self.last_attempt < wait:
            self._set("backoff", next_attempt=self.last_attempt + wait,
                      reason=f"restart {len(self.restarts) + 1} waits {wait:g} s "
                      f"<maturity.watchdog.backoff_s={self.wd.backoff_s:g}, doubling>")
            return "backoff"
        try:
            with project_lock(self.layout, f"mlops runner: watchdog restarting {self.flavor}", wait=False):
                return self._restart(now)
        except ProjectBusy:
            self._set("deferred", reason=f"the project lock is held by {describe(holder(self.layout))}; that "
                      "command handles the server, the watchdog looks again at the next poll")
            return "deferred"

    def _restart(self, now: float) -> str:
        if self.server.live():  # whoever held the lock before us brought it back
            self.misses, self.down_since = 0, None
            self._set("watching")
            return "ok"
        attempt = len(self.restarts) + 1
        self.restarts.append(now)
        self.last_attempt = now
        down_since = self.down_since if self.down_since is not None else now
        self._set("restarting", attempt=attempt)
        self.log.warning("%s is down (%d failed health checks <maturity.watchdog.misses=%d>): restarting it "
                         "with the champion, attempt %d of %d within %g s <maturity.watchdog.max_restarts=%d>",
                         self.flavor, self.misses, self.wd.misses, attempt, self.wd.max_restarts,
                         self.wd.window_s, self.wd.max_restarts)
        t0 = time.monotonic()
        try:
            self.server.stop()  # what a hung server left behind; nothing if it is gone
            self.server.start()
            champion = self.stack.model_store.aliases(self.cfg.name).get("champion")
            if champion is not None and not self.server.champion_served(champion):
                raise ServiceError(f"{self.flavor} started but does not serve the champion "
                                   f"{self.cfg.name}@{champion}")
        except (MlopsError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.log.error("restarting %s failed (attempt %d): %s", self.flavor, attempt, reason)
            self._set("down", reason=f"restart {attempt} failed: {reason}")
            return "failed"
        loaded = sorted({int(m["version"]) for m in self.server.served()
                         if m["name"] == self.cfg.serving.model_name and m["state"] == "READY"})
        restart = {"at": self.clock(), "attempt": attempt, "down_s": round(self.clock() - down_since, 2),
                   "took_s": round(time.monotonic() - t0, 2), "champion": champion, "loaded": loaded}
        self.state["last_restart"] = restart
        self.misses, self.down_since = 0, None
        self._set("watching")
        self.log.warning("%s restarted in %.1f s, down %.1f s: %s@%s answers, versions loaded %s (nothing "
                         "retrained)", self.flavor, restart["took_s"], restart["down_s"], self.cfg.name, champion,
                         loaded)
        self._emit(SERVER_RESTARTED, {"model": self.cfg.name, "server": self.flavor, **restart})
        return "restarted"

    def _give_up(self) -> str:
        reason = (f"{self.flavor} died {len(self.restarts)} times within {self.wd.window_s:g} s "
                  f"<maturity.watchdog.max_restarts={self.wd.max_restarts}>: a crash loop, so the watchdog stopped "
                  f"restarting it. Read its log ({self.layout.log(self.flavor)}), "
                  "fix the cause, then `mlops up` starts it (the watchdog re-arms once it answers)")
        self._set("gave-up", reason=reason)
        self.log.error("%s", reason)
        self._emit(SERVER_GAVE_UP, {"model": self.cfg.name, "server": self.flavor, "reason": reason,
                                    "restarts": len(self.restarts), "window_s": self.wd.window_s})
        return "gave-up"

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        try:
            self.emit(event, model_resource(self.cfg.name), payload)
        except Exception as exc:  # an event that cannot be sent never stops the watchdog; the log has it
            self.log.warning("could not emit %s: %s", event, exc)

    # ------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        self.log.info("watching %s every %g s <maturity.watchdog.poll_s>; restarts it with the champion when "
                      "it dies", self.flavor, self.wd.poll_s)
        while not stop.wait(self.wd.poll_s):
            try:
                self.check()
            except Exception:  # the watchdog outlives whatever one poll ran into; the runner's log has it
                self.log.exception("watchdog poll failed")


def start_thread(cfg: Config, project: str | Path, state_dir: str | Path) -> threading.Event | None:
    """Start the watchdog of `cfg` in a daemon thread of this (the runner's) process if `enabled`; the Event
    stops it. The thread dies with the process, so a runner that is stopped stops watching."""
    if not enabled(cfg):
        return None
    from prefect.logging import get_logger

    dog = Watchdog(Stack(cfg, project, state_dir), log=get_logger("mlops.watchdog"))
    stop = threading.Event()
    threading.Thread(target=dog.run, args=(stop,), name="mlops-watchdog", daemon=True).start()
    return stop
