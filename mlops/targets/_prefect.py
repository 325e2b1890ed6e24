"""The Prefect API the flows talk to: a managed local server, or one the user points us at."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from mlops.recipe.schema import Config
from mlops.targets._process import Service


def external_api_url() -> str | None:
    """PREFECT_API_URL from the environment (Prefect Cloud or an existing server): then we start nothing."""
    return os.environ.get("PREFECT_API_URL") or None


def api_url(cfg: Config) -> str:
    return external_api_url() or f"http://{cfg.target.prefect.host}:{cfg.target.prefect.port}/api"


def ui_url(cfg: Config) -> str:
    url = api_url(cfg)
    if "api.prefect.cloud" in url:
        return url.replace("api.prefect.cloud/api/accounts", "app.prefect.cloud/account").replace("/workspaces/", "/workspace/")
    return url.removesuffix("/api")


def prefect_env(cfg: Config, state_dir: Path) -> dict[str, str]:
    """Settings for the server and for every process that runs flows (set before prefect is imported)."""
    home = state_dir / "prefect"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url(cfg),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    }


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def prefect_service(state_dir: Path) -> Service:
    return Service("prefect", state_dir)


# The managed server keeps SQLite's writers few: a short interval schedule (a data poll every few seconds) would
# otherwise get 100 runs created ahead, each later marked Late and cancelled, and those writes contend with
# the runs that matter ("database is locked"). A few runs ahead, topped up every 15 s, is enough.
SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "5",
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "15",
}


def start_server(cfg: Config, state_dir: Path) -> None:
    env = {**os.environ, **prefect_env(cfg, state_dir), **SERVER_SETTINGS}
    host, port = cfg.target.prefect.host, cfg.target.prefect.port
    url = api_url(cfg)
    prefect_service(state_dir).start(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        env=env,
        ports={"target.prefect.port": (host, port)},
        healthy=lambda: healthy(url),
        timeout=cfg.target.prefect.start_timeout_s,
    )
