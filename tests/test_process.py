"""mlops._process: the one supervisor of background processes (Prefect server, runner, Triton), on real processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlops._layout import Layout
from mlops._process import Supervisor, check_ports_free, port_free, wait_ports_free
from mlops.errors import ServiceError

# A parent that starts a child in its process group, both ignoring SIGTERM: `stop` must still end both.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print("child", child.pid, flush=True)
time.sleep(600)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_waits_for_readiness_and_stop_ends_the_whole_group(tmp_path):
    proc = Supervisor("stubborn", Layout(tmp_path))
    marker = tmp_path / "ready"
    pid = proc.start([sys.executable, "-c", f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n" + STUBBORN],
                     env={}, ports={}, ready=[("ready", marker.exists)], timeout=30, timeout_key="x.timeout_s")
    assert proc.pid() == pid and (tmp_path / "pids" / "stubborn.pid").read_text() == f"{pid}\n"
    deadline = time.monotonic() + 10
    while "child" not in proc.log_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(proc.log_file.read_text().split("child")[1].split()[0])

    assert proc.stop(timeout=0.5) is True

    assert proc.pid() is None and not proc.pid_file.exists()
    assert not Path(f"/proc/{pid}").exists()
    deadline = time.monotonic() + 5  # the child is reaped by init, a moment later
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists()
    assert proc.stop() is False


def test_a_process_that_exits_while_starting_is_reported_with_its_log(tmp_path):
    proc = Supervisor("svc", Layout(tmp_path), label="the service")
    with pytest.raises(ServiceError) as err:
        proc.start([sys.executable, "-c", "print('no config here'); raise SystemExit(3)"], env={}, ports={},
                   ready=[("healthy", lambda: False)], timeout=30, timeout_key="x.timeout_s")
    assert str(err.value) == (f"the service exited with code 3 before it was healthy. The last lines of "
                              f"{tmp_path / 'logs' / 'svc.log'}:\n    no config here")
    assert not proc.pid_file.exists()


def test_a_process_never_ready_is_stopped_and_the_timeout_key_named(tmp_path):
    proc = Supervisor("svc", Layout(tmp_path))
    with pytest.raises(ServiceError) as err:
        proc.start([sys.executable, "-c", "import time; time.sleep(600)"], env={}, ports={},
                   ready=[("healthy", lambda: False)], timeout=0.3, timeout_key="target.prefect.start_timeout_s")
    assert str(err.value).startswith("svc was not healthy within target.prefect.start_timeout_s=0.3 s, "
                                     "so it was stopped. The last lines of ")
    assert proc.pid() is None


def test_logs_append_or_rotate(tmp_path):
    for rotate, want in ((False, ["one", "two"]), (True, ["two"])):
        proc = Supervisor(f"r{rotate}", Layout(tmp_path), rotate_log=rotate)
        for word in ("one", "two"):
            proc.spawn([sys.executable, "-c", f"print({word!r})"], env={}).wait()
        assert proc.log_file.read_text().split() == want
    assert (tmp_path / "logs" / "rTrue.log.1").read_text().split() == ["one"]


def test_a_recycled_pid_of_another_program_is_never_ours(tmp_path):
    other = subprocess.Popen(["sleep", "30"])
    try:
        proc = Supervisor("triton", Layout(tmp_path), program="tritonserver")
        proc.pid_file.parent.mkdir(parents=True)
        proc.pid_file.write_text(f"{other.pid}\n")
        assert proc.pid() is None and not proc.pid_file.exists()
        assert proc.stop() is False and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_taken_port_is_refused_naming_its_config_key(tmp_path):
    port = _free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert not port_free("127.0.0.1", port)
        with pytest.raises(ServiceError) as err:
            check_ports_free("prefect", {"target.prefect.port": ("127.0.0.1", port)})
        assert wait_ports_free([("127.0.0.1", port)], timeout=0.2) == [port]
    assert str(err.value) == (
        f"cannot start prefect: target.prefect.port={port} already in use on 127.0.0.1 by another process. "
        f"Stop that process or choose free ports with an override, e.g. `target.prefect.port={port + 100}`.")
    assert port_free("127.0.0.1", port) and wait_ports_free([("127.0.0.1", port)]) == []
