"""Background processes that outlive the `mlops` command: the one supervisor of pid files, logs, readiness and ports.

Every service a target starts (the Prefect server, the Prefect runner, Triton) is one :class:`Supervisor`;
where its pid file and log live is the state directory's layout (``Layout.pid``/``Layout.log``)::

    proc = Supervisor("prefect", Layout(state_dir))
    proc.start([...], env=env, ports={"target.prefect.port": (host, port)},
               ready=[("healthy", lambda: healthy(url))], timeout=30, timeout_key="target.prefect.start_timeout_s")
    proc.pid()          # None once it is gone (a stale pid file is removed on the way)
    proc.stop()         # SIGTERM, then SIGKILL to its process group; True if something was running

A later CLI process finds the service again from the pid file alone, so every method reads it afresh.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from mlops._atomic import write_atomic
from mlops._layout import Layout
from mlops.errors import ServiceError

_POLL_S = 0.05

# The collector's thresholds for an `mlops` command's own process (mlops.cli sets them; bench/_script.py, its
# baseline, too). A command imports ~700k objects' worth of libraries (typer, Hydra, pandas; Prefect, torch and
# Lightning for `up`): at the default first threshold of 700 allocations the collector runs ~1,000 times while
# they load, each time over young objects that are all alive. 50,000 lets it run ~15 times instead (~0.1 s of a
# warm `up`'s 1.2 s), at the cost of at most 50,000 objects' worth of garbage waiting a little longer.
COLLECTOR_THRESHOLDS = (50_000, 20, 10)


# ---------------------------------------------------------------- ports
def taken_ports(host: str, ports: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """The ``(key, port)`` pairs whose port cannot be bound on ``host`` now."""
    taken = []
    for key, port in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            # SO_REUSEADDR: sockets in TIME_WAIT from a previous run do not block a server that sets it
            # (Triton, uvicorn), so they should not block this check either.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                taken.append((key, port))
    return taken


def port_free(host: str, port: int) -> bool:
    return not taken_ports(host, [("", port)])


def check_ports_free(what: str, ports: Mapping[str, tuple[str, int]]) -> None:
    """Raise a ServiceError naming the config key of every port (``{key: (host, port)}``) already in use."""
    by_host: dict[str, list[tuple[str, int]]] = {}
    for key, (host, port) in ports.items():
        by_host.setdefault(host, []).append((key, port))
    for host, wanted in by_host.items():
        if taken := taken_ports(host, wanted):
            names = ", ".join(f"{key}={port}" for key, port in taken)
            raise ServiceError(
                f"cannot start {what}: {names} already in use on {host} by another process. "
                f"Stop that process or choose free ports with an override, e.g. `{taken[0][0]}={taken[0][1] + 100}`."
            )


def wait_ports_free(ports: Iterable[tuple[str, int]], timeout: float = 10.0) -> list[int]:
    """Wait until every ``(host, port)`` can be bound; returns the ports still taken after ``timeout`` s."""
    ports = list(ports)
    deadline = time.monotonic() + timeout
    while busy := [p for h, p in ports if not port_free(h, p)]:
        if time.monotonic() > deadline:
            return busy
        time.sleep(0.2)
    return []


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (any address), if it is one we may inspect (ours)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


# ---------------------------------------------------------------- processes
def tail(path: Path, lines: int = 15, indent: str = "") -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(indent + line for line in text.splitlines()[-lines:])


def _state(pid: int) -> tuple[str, bytes] | None:
    """(process state letter, argv[0]) of ``pid``, or None if there is no such process (or only a zombie)."""
    # Reap it first if it is our own exited child: a zombie still has a /proc entry.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except (OSError, IndexError):
        return None
    return None if state in ("Z", "X") else (state, program)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Supervisor:
    """One background process of a state directory: ``pids/<name>.pid`` and ``logs/<name>.log``.

    ``label``: what messages call it (default ``name``).
    ``program``: a word that the process's argv[0] contains (``tritonserver``); a pid file whose pid now
    belongs to another program (recycled) then counts as stale, so it is never signalled.
    ``rotate_log``: each start moves the previous log to ``<name>.log.1`` instead of appending to it.
    ``term_group``: SIGTERM goes to the whole process group, not only to the process (a server that stops
    its own children in order, like Triton its python-backend stubs, wants it False).
    """

    def __init__(self, name: str, layout: Layout, *, label: str | None = None, program: str | None = None,
                 rotate_log: bool = False, term_group: bool = True):
        self.name = name
        self.label = label or name
        self.pid_file = layout.pid(name)
        self.log_file = layout.log(name)
        self.program = program.encode() if program else None
        self.rotate_log = rotate_log
        self.term_group = term_group

    # ------------------------------------------------------------ finding it
    def pid(self) -> int | None:
        """The pid if the recorded process is alive (and ``program``); a stale pid file is removed."""
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
            # Someone else's process now has this pid.
            if self.program:
                self.pid_file.unlink(missing_ok=True)
                return None
            return pid
        state = _state(pid)
        if state is None or (self.program is not None and self.program not in state[1]):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def _alive(self, pid: int) -> bool:
        """Whether a pid we already know is ours still exists (an exiting process has an empty argv
        before it turns zombie, so the ``program`` check of :meth:`pid` would call it gone too early)."""
        state = _state(pid)
        # Anything but our program means the pid was recycled: ours is gone.
        return state is not None and (self.program is None or not state[1] or self.program in state[1])

    def log_tail(self, lines: int = 20, indent: str = "    ") -> str:
        return tail(self.log_file, lines, indent)

    # ------------------------------------------------------------ starting
    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen:
        """Start ``argv`` detached (its own session: it outlives the CLI and is stopped as one process group),
        its output going to the log, and record its pid. Does not wait; see :meth:`wait_ready`."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.rotate_log and self.log_file.exists():
            os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        with open(self.log_file, "wb" if self.rotate_log else "ab") as log:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(env), cwd=cwd, start_new_session=True)
        write_atomic(self.pid_file, f"{proc.pid}\n")
        return proc

    def wait_ready(self, proc: subprocess.Popen, ready: Sequence[tuple[str, Callable[[], bool]]], timeout: float,
                   timeout_key: str) -> None:
        """Wait until each ``(what, check)`` of ``ready`` passes, in order, within ``timeout`` s in all.

        If the process exits first, its pid file is removed; if time runs out, it is stopped. Either way a
        ServiceError names the config key of the timeout and quotes the end of the log.
        """
        deadline = time.monotonic() + timeout
        for what, check in ready:
            while not check():
                if proc.poll() is not None:
                    self.pid_file.unlink(missing_ok=True)
                    raise ServiceError(
                        f"{self.label} exited with code {proc.returncode} before it was {what}. "
                        f"The last lines of {self.log_file}:\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServiceError(
                        f"{self.label} was not {what} within {timeout_key}={timeout:g} s, so it was stopped. "
                        f"The last lines of {self.log_file}:\n{self.log_tail()}"
                    )
                time.sleep(_POLL_S)

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], ports: Mapping[str, tuple[str, int]],
              ready: Sequence[tuple[str, Callable[[], bool]]], timeout: float, timeout_key: str,
              cwd: Path | None = None) -> int:
        """Check ``ports`` (``{config key: (host, port)}``) are free, spawn, wait until ready; returns the pid."""
        check_ports_free(self.label, ports)
        proc = self.spawn(argv, env, cwd)
        self.wait_ready(proc, ready, timeout, timeout_key)
        return proc.pid

    # ------------------------------------------------------------ stopping
    def stop(self, timeout: float = 20.0, kill_timeout: float = 5.0) -> bool:
        """SIGTERM, wait ``timeout`` s, then SIGKILL the process group; returns whether something was running.

        Returns once the process is gone; whatever it left behind in its process group is killed too.
        """
        pid = self.pid()
        if pid is None:
            return False
        _signal(-pid if self.term_group else pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            _signal(-pid, signal.SIGKILL)
            if not self._wait_gone(pid, kill_timeout):
                raise ServiceError(f"{self.label} (pid {pid}) survived SIGKILL; check it with `ps -p {pid}`.")
        # Children notice their parent is gone on their own (Triton's python-backend stubs); this only hurries
        # along any that have not yet.
        _signal(-pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)
        return True


# ---------------------------------------------------------------- a group of foreground workers
def run_together(commands: Sequence[tuple[Sequence[str], Mapping[str, str], Path]], *,
                 stop_timeout: float = 5.0) -> list[int | None]:
    """Run ``(argv, env, log)`` commands side by side, each writing its output to its log, until all have exited
    0 or one has failed; then stop the others (SIGTERM, SIGKILL after ``stop_timeout`` s) and return each one's
    exit code as it was when the first failure was seen (negative: killed by that signal; None: still running,
    so stopped here). Workers that wait on each other (DDP ranks in a collective) would otherwise wait for a dead
    peer until their own timeout (gloo: 30 min). Any exception here (Ctrl-C) stops them all too.

    They stay in the caller's process group, so whoever stops the caller's group (a Prefect runner's
    cancellation, a Supervisor) stops them as well.
    """
    procs: list[subprocess.Popen] = []
    try:
        for argv, env, log in commands:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=subprocess.STDOUT, env=dict(env)))
        while True:
            codes = [p.poll() for p in procs]
            if all(c == 0 for c in codes) or any(c not in (None, 0) for c in codes):
                return codes
            time.sleep(_POLL_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + stop_timeout
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
