"""Background services that outlive the `mlops` command: pid files, logs, health, ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlops.errors import ServiceError


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def tail(path: Path, lines: int = 15) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Service:
    """One background process: `<state>/pids/<name>.pid`, `<state>/logs/<name>.log`."""

    name: str
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid if the recorded process is alive; a stale pid file is removed."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return None
        except PermissionError:
            return pid
        # A zombie of ours counts as dead.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                self.pid_file.unlink(missing_ok=True)
                return None
        except (FileNotFoundError, IndexError):
            pass
        return pid

    def start(self, argv: list[str], env: dict[str, str], ports: dict[str, tuple[str, int]],
              healthy: Callable[[], bool], timeout: float, cwd: Path | None = None) -> int:
        """Spawn detached, then wait until `healthy()`; raises ServiceError with the log's tail on failure.

        `ports` maps the config key that sets a port (e.g. "serving.http_port") to (host, port).
        """
        for key, (host, port) in ports.items():
            if not port_free(host, port):
                raise ServiceError(
                    f"cannot start {self.name}: port {port} on {host} is already in use (set by `{key}`). "
                    f"Stop whatever holds it (`mlops down`, or `ss -ltnp 'sport = :{port}'` shows it), "
                    f"or choose another port with the override {key}=<port>."
                )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=cwd, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(f"{self.name} exited with code {proc.returncode} while starting. "
                                   f"Last lines of {self.log_file}:\n{tail(self.log_file)}")
            if healthy():
                return proc.pid
            time.sleep(0.25)
        self.stop()
        raise ServiceError(f"{self.name} did not become healthy within {timeout:.0f}s. "
                           f"Last lines of {self.log_file}:\n{tail(self.log_file)}")

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the process group, wait, then SIGKILL. Returns whether something was running."""
        pid = self.pid()
        if pid is None:
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._alive(pid):
                time.sleep(0.1)
            if not self._alive(pid):
                break
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except (FileNotFoundError, IndexError):
            return False


def wait_ports_free(ports: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    busy = [p for h, p in ports if not port_free(h, p)]
    while busy and time.monotonic() < deadline:
        time.sleep(0.2)
        busy = [p for h, p in ports if not port_free(h, p)]
    return busy
