"""The runner's watchdog (mlops/flows/_watchdog.py), one poll at a time, on the in-process server flavor.

A dead server is the flavor's own `stop()`; the clock is the test's, so backoff and the crash-loop window are
exact. The live version (a real Triton killed with SIGKILL under a real runner) is in tests/test_faults.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _inprocess_server import inprocess_stack

from mlops._layout import Layout
from mlops._names import SERVER_GAVE_UP, SERVER_RESTARTED, model_resource
from mlops.flows._watchdog import Watchdog, enabled

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def dog(tmp_path, inprocess_server):
    def make(*overrides: str) -> tuple[Watchdog, Clock, list]:
        stack = inprocess_stack(tmp_path, "maturity=3", *overrides)
        stack.server.start()
        clock, events = Clock(), []
        return Watchdog(stack, clock=clock, emit=lambda *e: events.append(e)), clock, events
    return make


def _state(dog: Watchdog) -> dict:
    return json.loads(Layout(dog.stack.state_dir).watchdog(dog.cfg.name).read_text())


def test_it_watches_from_level_3_unless_turned_off(tmp_path, inprocess_server):
    assert [enabled(inprocess_stack(tmp_path, f"maturity={lvl}").cfg) for lvl in range(5)] == [False] * 3 + [True] * 2
    assert not enabled(inprocess_stack(tmp_path, "maturity=4", "maturity.watchdog.enabled=false").cfg)


def test_a_dead_server_is_restarted_after_the_misses_and_an_event_says_so(dog):
    wd, clock, events = dog()  # misses=2 by default
    assert wd.check() == "ok"
    wd.server.stop()
    assert wd.check() == "miss" and not wd.server.live()
    clock.t += 2
    assert wd.check() == "restarted" and wd.server.live()
    assert [(e, r) for e, r, _ in events] == [(SERVER_RESTARTED, model_resource("churn"))]
    payload = events[0][2]
    assert payload["attempt"] == 1 and payload["down_s"] == 2 and payload["model"] == "churn"
    st = _state(wd)
    assert st["status"] == "watching" and st["restarts_in_window"] == 1 and st["last_restart"]["attempt"] == 1
    assert wd.check() == "ok"


def test_a_server_that_runs_but_does_not_answer_is_restarted_only_after_hung_s(dog):
    wd, clock, events = dog("maturity.watchdog.hung_s=10")
    wd.server.hang()
    seen = []
    for _ in range(7):
        seen.append(wd.check())
        clock.t += 2
    # first miss at t=0; from the 2nd (misses=2) it is unresponsive until 10 s have passed, then restarted
    assert seen == ["miss", "unresponsive", "unresponsive", "unresponsive", "unresponsive", "restarted", "ok"]
    assert [e for e, _, _ in events] == [SERVER_RESTARTED] and events[0][2]["down_s"] == 10
    assert wd.server.live()


def test_a_crash_loop_backs_off_gives_up_then_rearms_when_the_server_answers_again(dog):
    wd, clock, events = dog("maturity.watchdog.misses=1", "maturity.watchdog.max_restarts=3",
                            "maturity.watchdog.backoff_s=1", "maturity.watchdog.window_s=60")
    seen = []
    for dt in (0, 0.5, 0.5, 1, 1, 0.5, 0.5):  # the server dies again as soon as it is up
        clock.t += dt
        wd.server.stop()
        seen.append(wd.check())
    # restart 1 at once; restart 2 waits 1 s; restart 3 waits 2 s; then 3 within 60 s: give up, once
    assert seen == ["restarted", "backoff", "restarted", "backoff", "restarted", "gave-up", "gave-up"]
    assert [e for e, _, _ in events] == [SERVER_RESTARTED] * 3 + [SERVER_GAVE_UP]
    st = _state(wd)
    assert st["status"] == "gave-up" and "a crash loop" in st["reason"]
    assert "maturity.watchdog.max_restarts=3" in st["reason"] and "`mlops up` starts it" in st["reason"]
    assert not wd.server.live()

    wd.server.start()  # what `mlops up` does
    assert wd.check() == "ok" and _state(wd)["status"] == "watching" and _state(wd)["restarts_in_window"] == 0
    wd.server.stop()
    assert wd.check() == "restarted"  # re-armed: immediate again


def test_restarts_older_than_the_window_no_longer_count(dog):
    wd, clock, _ = dog("maturity.watchdog.misses=1", "maturity.watchdog.max_restarts=2",
                       "maturity.watchdog.backoff_s=0", "maturity.watchdog.window_s=10")
    for _ in range(2):
        wd.server.stop()
        assert wd.check() == "restarted"
    clock.t += 10
    wd.server.stop()
    assert wd.check() == "restarted" and _state(wd)["restarts_in_window"] == 1


def test_it_never_fights_a_command_that_holds_the_project_lock(dog):
    wd, clock, events = dog("maturity.watchdog.misses=1")
    layout = Layout(wd.stack.state_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mlops._layout import Layout; from mlops._lock import project_lock\n"
         f"with project_lock(Layout({str(layout.root)!r}), 'mlops up recipe=churn'):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        wd.server.stop()
        assert wd.check() == "deferred" and not wd.server.live()
        st = _state(wd)
        assert st["status"] == "deferred" and f"pid {holder.pid} (`mlops up recipe=churn`" in st["reason"]
    finally:
        holder.communicate("", timeout=30)
    assert wd.check() == "restarted" and [e for e, _, _ in events] == [SERVER_RESTARTED]
    assert _state(wd)["last_restart"]["attempt"] == 1
