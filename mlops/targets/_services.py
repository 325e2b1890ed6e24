"""A project's local services are part of its state: the ports `up` started them with, and whose a port is.

`up` writes ``<state_dir>/services.json`` (:attr:`mlops._layout.Layout.services`) once Prefect and the model
server answer; `down` removes it. Every command that loads the config applies the remembered ports where its
overrides name none (:func:`recall`), so `mlops up serving.http_port=8740` is followed by a plain
`mlops status`, `mlops predict` or `mlops down` that finds the stack where it runs, not on the defaults.

A service that answers on a port the project expects, but was started by another project, is never taken
for this project's: :func:`owner` names the other state directory (Prefect's /api/admin/settings home, or
the pid file that holds the listening process) so `plan` and `up` can say whose it is.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlops._atomic import write_atomic
from mlops._layout import Layout
from mlops._process import cmdline, listening_pid, port_free
from mlops.recipe.schema import Config


def service_ports(cfg: Config) -> dict[str, int]:
    """Each service port of a local stack by its config key: Prefect's and the model server's `*_port` keys."""
    ports = {"target.prefect.port": cfg.target.prefect.port}
    for name in type(cfg.serving).model_fields:
        if name.endswith("_port"):
            ports[f"serving.{name}"] = getattr(cfg.serving, name)
    return ports


def remember(cfg: Config, project: Path, state_dir: Path, urls: dict[str, str]) -> None:
    write_atomic(Layout(state_dir).services, json.dumps({
        "project": str(project), "state_dir": str(state_dir), "server": cfg.serving.flavor,
        "ports": service_ports(cfg), "urls": urls, "started_at": time.time()}, indent=2) + "\n")


def remembered(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Layout(state_dir).services.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("ports"), dict) else None


def forget(state_dir: Path) -> None:
    Layout(state_dir).services.unlink(missing_ok=True)


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        data = data[p]
    data[leaf] = value


def recall(cfg: Config, project: Path, overrides: list[str]) -> tuple[Config, list[str]]:
    """`cfg` with the ports its project's running services were started with, for every port key the
    overrides leave unset; and a note for each port the overrides set differently while the remembered
    service still holds its port (two stacks of one project, or a typo)."""
    if cfg.target.kind != "local":
        return cfg, []
    state_dir = (project / cfg.target.state_dir).resolve()
    saved = remembered(state_dir)
    if saved is None:
        return cfg, []
    given = {o.partition("=")[0].lstrip("~+") for o in overrides}
    current = service_ports(cfg)
    apply, notes = {}, []
    for key, port in saved["ports"].items():
        if key not in current or not isinstance(port, int) or port == current[key]:
            continue  # another server flavor's key, or nothing to change
        if key in given:
            if not port_free(cfg.serving.host if key.startswith("serving.") else cfg.target.prefect.host, port):
                notes.append(f"{key}={current[key]} is given, but this project's services were started with "
                             f"{key}={port} and still run there ({Layout(state_dir).services}); using "
                             f"{current[key]}. `mlops down {key}={port}` stops them.")
            continue
        apply[key] = port
    if not apply:
        return cfg, notes
    data = cfg.model_dump()
    for key, port in apply.items():
        _set(data, key, port)
    try:
        return type(cfg).model_validate(data), notes
    except ValidationError:
        # The recipe changed since `up` (a port of it now clashes): its own ports stand.
        return cfg, [*notes, f"the ports in {Layout(state_dir).services} no longer fit the config; using the "
                     "config's ports"]


def _prefect_home(api_url: str) -> Path | None:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/admin/settings", timeout=2) as r:
            home = json.loads(r.read()).get("home")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(home) if isinstance(home, str) else None


def _holds(state_dir: Path, pid: int) -> bool:
    pids = Layout(state_dir).pids
    return pids.is_dir() and any(f.read_text().strip() == str(pid) for f in pids.glob("*.pid") if f.is_file())


def _owning_state_dir(pid: int) -> Path | None:
    """The state directory whose pids/ holds `pid`: found from the paths in the process's command line
    (Triton's --model-repository=<state_dir>/triton/models, for one)."""
    for arg in cmdline(pid):
        path = arg.partition("=")[2] if arg.startswith("-") else arg
        if path.startswith("/"):
            for parent in Path(path).parents:
                if _holds(parent, pid):
                    return parent
    return None


def owner(kind: str, port: int, api_url: str = "") -> Path | None:
    """The state directory of the project whose service listens on `port` (`kind`: "prefect" or a server
    flavor), if it can be told."""
    if kind == "prefect" and api_url and (home := _prefect_home(api_url)) is not None:
        return home.parent  # PREFECT_HOME is <state_dir>/prefect (mlops.targets._prefect.prefect_env)
    pid = listening_pid(port)
    return _owning_state_dir(pid) if pid is not None else None


def foreign(kind: str, port: int, key: str, state_dir: Path, api_url: str = "") -> str | None:
    """A sentence saying whose the service answering on `port` is, if it is not this project's; None if ours."""
    pid = listening_pid(port)
    if pid is not None and _holds(state_dir, pid):
        return None
    theirs = owner(kind, port, api_url)
    if theirs is not None and theirs.resolve() == state_dir.resolve():
        return None
    if theirs is None:
        who, stop = "a process not started by this project", "stop that process (`ss -ltnp` shows which)"
    else:
        project = (remembered(theirs) or {}).get("project") or str(theirs.parent)
        who, stop = f"another project (state directory {theirs})", f"stop it (`mlops -C {project} down`)"
    return (f"{kind} on port {port} ({key}) belongs to {who}, so it is not reused. Choose other ports for this "
            f"project, e.g. `{key}={port + 100}`, or {stop}")
