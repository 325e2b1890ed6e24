"""mlops._lock: one command at a time changes a project; the holder is named; a dead holder frees it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlops._layout import Layout
from mlops._lock import holder, project_lock
from mlops.errors import ProjectBusy

ROOT = Path(__file__).resolve().parents[1]


def _holder_process(state: Path, seconds: float) -> subprocess.Popen:
    """Another process that takes the lock as `mlops up` would, says so on stdout, and holds it."""
    code = (
        "import sys, time; from mlops._layout import Layout; from mlops._lock import project_lock\n"
        f"with project_lock(Layout({str(state)!r}), 'mlops up recipe=churn'):\n"
        "    print('held', flush=True); time.sleep(float(sys.argv[1]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_fails_fast_naming_the_first(tmp_path):
    proc = _holder_process(tmp_path, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(ProjectBusy) as info, project_lock(Layout(tmp_path), "mlops deploy churn@1"):
            pass
        assert time.monotonic() - t0 < 2
        msg = str(info.value)
        assert f"pid {proc.pid} (`mlops up recipe=churn`, since 20" in msg
        assert "add --wait to wait for it" in msg and "\n" not in msg
        assert info.value.exit_code == 8
        # Nothing of the loser was written: lock.json still names the holder.
        assert holder(Layout(tmp_path))["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_wait_waits_for_the_holder_then_holds_it(tmp_path):
    proc = _holder_process(tmp_path, 1.5)
    told = []
    t0 = time.monotonic()
    with project_lock(Layout(tmp_path), "mlops up --wait", wait=True, on_wait=told.append):
        waited = time.monotonic() - t0
        assert holder(Layout(tmp_path)) == {"pid": os.getpid(), "command": "mlops up --wait",
                                            "since": pytest.approx(time.time(), abs=5)}
    proc.wait()
    assert waited >= 1.0 and proc.returncode == 0
    assert len(told) == 1 and told[0].startswith(f"pid {proc.pid} (`mlops up recipe=churn`")


def test_a_lock_left_by_a_killed_holder_is_taken_over(tmp_path):
    proc = _holder_process(tmp_path, 60)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # lock.json still names the dead process; it does not matter: the kernel released the flock.
    assert json.loads(Layout(tmp_path).lock_holder.read_text())["pid"] == proc.pid
    t0 = time.monotonic()
    with project_lock(Layout(tmp_path), "mlops up"):
        assert holder(Layout(tmp_path))["pid"] == os.getpid()
    assert time.monotonic() - t0 < 1


def test_the_lock_is_reentrant_and_not_inherited_by_services(tmp_path):
    layout = Layout(tmp_path)
    with project_lock(layout, "mlops up"):
        with project_lock(layout, "mlops up (inner)"):
            pass
        # A service started while the lock is held (Prefect, Triton) must not keep it after the command ends.
        service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        with project_lock(layout, "mlops down"):
            pass
    finally:
        service.kill()
        service.wait()
