"""The tracker's UI process on this machine (`tracking.ui: true`: the MLflow UI), supervised like Prefect.

The tracker says what to run (`Tracker.ui()` -> UiService); this module starts it under
:class:`~mlops._process.Supervisor` (pid and log under the state directory's Layout), stops every one `down`
finds there, and reports each as a service with its URL. No tool is named here.
"""

from __future__ import annotations

import os
import urllib.request
from typing import Any

from mlops._layout import Layout
from mlops._process import Supervisor
from mlops.tracking._base import UiService

_PREFIX = "ui-"  # pid/log file names: ui-<name>.pid, so `down` finds them without the recipe's config


def _service(name: str, layout: Layout) -> Supervisor:
    return Supervisor(f"{_PREFIX}{name}", layout)


def answers(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status < 500
    except OSError:
        return False


def start(ui: UiService, layout: Layout, timeout: float) -> int | None:
    """Start the UI unless it already answers (a repeated `up` is a no-op); returns its pid."""
    service = _service(ui.name, layout)
    if service.pid() is not None and answers(ui.url):
        return service.pid()
    service.stop()
    return service.start(ui.argv, env={**os.environ}, ports={ui.port_key: (ui.host, ui.port)},
                         ready=[("answering", lambda: answers(ui.url))], timeout=timeout,
                         timeout_key="target.prefect.start_timeout_s")


def stop_all(layout: Layout) -> dict[str, bool]:
    """Stop every tracker UI this state directory started (found by its pid file: no config needed)."""
    stopped = {}
    for pid_file in sorted(layout.pids.glob(f"{_PREFIX}*.pid")) if layout.pids.is_dir() else []:
        name = pid_file.stem.removeprefix(_PREFIX)
        stopped[name] = _service(name, layout).stop()
    return stopped


def services(ui: UiService | None, layout: Layout) -> dict[str, dict[str, Any]]:
    """The UI as `mlops status` lists services (healthy, url, pid)."""
    if ui is None:
        return {}
    return {ui.name: {"healthy": answers(ui.url), "url": ui.url, "pid": _service(ui.name, layout).pid()}}
