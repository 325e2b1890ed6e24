"""target=local: a Prefect server and a Triton server on this machine, state under the project."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlops.recipe.schema import Config
from mlops.targets import _prefect
from mlops.targets._process import wait_ports_free


class LocalTarget:
    def __init__(self, cfg: Config, project: Path):
        self.cfg = cfg
        self.project = project
        self.state_dir = (project / cfg.target.state_dir).resolve()

    # ------------------------------------------------------------ urls
    @property
    def triton_url(self) -> str:
        s = self.cfg.serving
        return f"http://{s.host}:{s.http_port}"

    def planned_services(self) -> list[dict[str, Any]]:
        from mlops.serving import triton_live

        ext = _prefect.external_api_url()
        url = _prefect.api_url(self.cfg)
        prefect_up = _prefect.healthy(url)
        return [
            {"name": "prefect", "url": url,
             "action": "external" if ext else ("reuse" if prefect_up else "start")},
            {"name": "triton", "url": self.triton_url, "action": "reuse" if triton_live(self.triton_url) else "start"},
        ]

    # ------------------------------------------------------------ lifecycle
    def _ensure_prefect(self) -> None:
        if _prefect.external_api_url():
            if not _prefect.healthy(_prefect.api_url(self.cfg), timeout=5):
                from mlops.errors import ServiceError

                raise ServiceError(
                    f"PREFECT_API_URL is set to {_prefect.api_url(self.cfg)} but that API does not answer "
                    "/health. Check the URL and PREFECT_API_KEY, or unset PREFECT_API_URL to use a local server."
                )
            return
        if not _prefect.healthy(_prefect.api_url(self.cfg)):
            _prefect.start_server(self.cfg, self.state_dir)

    def _ensure_triton(self) -> None:
        from mlops.serving import ensure_triton

        ensure_triton(self.cfg, self.state_dir)

    def up(self, progress: bool = False, rerun: bool = False) -> dict[str, Any]:
        from rich.console import Console

        console = Console(stderr=True, highlight=False, soft_wrap=True)
        with console.status("starting Prefect server (about 20 s the first time) ..."):
            self._ensure_prefect()
        console.print(f"  [green]✓[/] prefect   {_prefect.ui_url(self.cfg)}")
        with console.status("starting Triton ..."):
            self._ensure_triton()
        console.print(f"  [green]✓[/] triton    {self.triton_url}")
        if not rerun and (current := self.up_to_date()) is not None:
            console.print(f"  [green]✓[/] up to date: {current['model']}@{current['version']} was trained on this "
                          "config and data and is served; nothing to run (--rerun runs the flow anyway)")
            return {**current, "prefect_ui": _prefect.ui_url(self.cfg)}
        os.environ.update(_prefect.prefect_env(self.cfg, self.state_dir))
        os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")
        from mlops.flows import up_flow

        result = up_flow(self.cfg, str(self.project), str(self.state_dir), progress)
        return {**result, "prefect_ui": _prefect.ui_url(self.cfg)}

    def up_to_date(self) -> dict[str, Any] | None:
        """What is served, if it is exactly what `up` would produce now: then there is nothing to run."""
        from mlops.plan import current_training_key
        from mlops.registry import Registry
        from mlops.serving import served_models

        key = current_training_key(self.cfg, self.project, self.state_dir)
        mv = Registry(self.state_dir / "registry").find(self.cfg.name, key)
        if mv is None:
            return None
        name = self.cfg.serving.model_name
        if not any(m["name"] == name and m["state"] == "READY" and str(m["version"]) == str(mv.version)
                   for m in served_models(self.triton_url)):
            return None
        return {"model": self.cfg.name, "version": mv.version, "new_version": False,
                "metrics": mv.lineage["metrics"], "flow_run_id": None,
                "endpoint": f"{self.triton_url}/v2/models/{name}/versions/{mv.version}/infer",
                "triton_url": self.triton_url}

    def down(self) -> dict[str, bool]:
        from mlops.serving import stop_triton

        stopped = {"triton": stop_triton(self.state_dir)}
        stopped["prefect"] = _prefect.prefect_service(self.state_dir).stop()
        s = self.cfg.serving
        ports = [(s.host, s.http_port), (s.host, s.grpc_port), (s.host, s.metrics_port)]
        if stopped["prefect"]:
            ports.append((self.cfg.target.prefect.host, self.cfg.target.prefect.port))
        busy = wait_ports_free(ports)
        if busy:
            from mlops.errors import ServiceError

            raise ServiceError(f"ports {busy} are still in use after stopping the services; another process "
                               "holds them (`ss -ltnp` shows which).")
        return stopped

    def status(self) -> dict[str, Any]:
        from mlops.serving import served_models, triton_live
        from mlops.tracking import make_tracker

        api = _prefect.api_url(self.cfg)
        triton_ok = triton_live(self.triton_url)
        s = self.cfg.serving
        return {
            "services": {
                "prefect": {"healthy": _prefect.healthy(api), "url": _prefect.ui_url(self.cfg), "api_url": api,
                            "managed": _prefect.external_api_url() is None,
                            "pid": _prefect.prefect_service(self.state_dir).pid()},
                "triton": {"healthy": triton_ok, "url": self.triton_url,
                           "grpc_url": f"{s.host}:{s.grpc_port}",
                           "metrics_url": f"http://{s.host}:{s.metrics_port}/metrics"},
            },
            "models": served_models(self.triton_url) if triton_ok else [],
            "state_dir": str(self.state_dir),
            "tracking": make_tracker(self.cfg.tracking, self.state_dir).ui_hint(),
        }
