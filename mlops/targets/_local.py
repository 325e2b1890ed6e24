"""target=local: a Prefect server and the stack's model server on this machine, state under the project."""

from __future__ import annotations

import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops import steps
from mlops._names import UP_FLOW
from mlops._process import Supervisor, wait_ports_free
from mlops.plan import compile_plan, current_training_key
from mlops.recipe.schema import Config
from mlops.stack import Stack
from mlops.steps._warm import warm_imports
from mlops.targets import _prefect, _services, _tracking_ui
from mlops.targets._base import Target

if TYPE_CHECKING:
    from mlops.serving._server_api import ModelServer


class LocalTarget(Target):
    """`target: {kind: local}`: Prefect and the stack's model server in the background on this machine."""

    def __init__(self, cfg: Config, project: Path):
        super().__init__(cfg, project)
        self.stack = Stack(cfg, project, self.state_dir)

    @property
    def server(self) -> ModelServer:
        return self.stack.server

    def planned_services(self) -> list[dict[str, Any]]:
        ext = _prefect.external_api_url()
        url = _prefect.api_url(self.cfg)
        prefect_up = _prefect.healthy(url)
        services = [
            {"name": "prefect", "url": url,
             "action": "external" if ext else ("reuse" if prefect_up else "start")},
            {"name": self.cfg.serving.flavor, "url": self.server.url,
             "action": "reuse" if self.server.live() else "start"},
        ]
        foreign = self.foreign_services() if any(svc["action"] == "reuse" for svc in services) else {}
        for svc in services:
            if svc["action"] == "reuse" and (note := foreign.get(svc["name"])):
                svc.update(action="blocked", owner=note)
        return services

    def foreign_services(self) -> dict[str, str]:
        """Services answering on this project's ports that another project (or anyone) started: name -> whose
        it is and what to do. `up` refuses to run on them; `plan` says so."""
        found = {}
        api = _prefect.api_url(self.cfg)
        if not _prefect.external_api_url() and _prefect.healthy(api):
            note = _services.foreign("prefect", self.cfg.target.prefect.port, "target.prefect.port", self.state_dir,
                                     api)
            if note:
                found["prefect"] = note
        server_ports = [(k, p) for k, p in _services.service_ports(self.cfg).items() if k.startswith("serving.")]
        if server_ports and self.server.live():
            key, port = server_ports[0]
            if note := _services.foreign(self.cfg.serving.flavor, port, key, self.state_dir):
                found[self.cfg.serving.flavor] = note
        return found

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

    def up(self, progress: bool = False, rerun: bool = False) -> dict[str, Any]:
        try:
            return self._up(progress, rerun)
        except BaseException as exc:
            # A crash before or around the flow (a service that did not start) is in the history too; the
            # flow records its own failures (mlops.flows), with the step that failed.
            if not getattr(exc, "mlops_recorded", False):
                steps.log_run(self.stack, UP_FLOW, "up", outcome="interrupted" if isinstance(
                    exc, KeyboardInterrupt) else "failed", reasons=[str(exc).strip() or type(exc).__name__], steps=[])
            raise

    def _up(self, progress: bool, rerun: bool) -> dict[str, Any]:
        from rich.console import Console

        console = Console(stderr=True, highlight=False, soft_wrap=True)
        if foreign := self.foreign_services():
            from mlops.errors import ServiceError

            raise ServiceError(" ".join(foreign.values()) + ".")
        server = self.cfg.serving.flavor
        # The model server starts beside the Prefect server, and the libraries the flow's steps import load
        # meanwhile: nothing here waits on another, and the Prefect server is the slow one (bench/zero.py).
        # Only then: with the services up there is no wait to fill, and an import thread beside the flow's
        # setup costs more than it hides (two threads taking turns on the GIL, the flow's every API round
        # trip waiting for it back): 0.25-0.45 s more per `up` (bench/up.py, flow against script).
        if not (_prefect.healthy(_prefect.api_url(self.cfg)) and self.server.live()):
            threading.Thread(target=warm_imports, args=(self.stack.implementation_modules(),),
                             name="mlops-warm-imports", daemon=True).start()
        with ThreadPoolExecutor(1, thread_name_prefix="mlops-start") as pool:
            model_server = pool.submit(self.server.start)
            with console.status(f"starting Prefect server (about 20 s the first time) and {server} ..."):
                try:
                    self._ensure_prefect()
                except BaseException:
                    model_server.exception()  # not left starting behind a failed `up`; its own error comes second
                    raise
            console.print(f"  [green]✓[/] prefect   {_prefect.ui_url(self.cfg)}")
            self._recover(console)
            with console.status(f"starting {server} ..."):
                model_server.result()
        console.print(f"  [green]✓[/] {server:<9} {self.server.url}")
        if (ui := self.tracking_ui()) is not None:
            with console.status(f"starting the {ui.name} UI ..."):
                _tracking_ui.start(ui, self.layout, self.cfg.target.prefect.start_timeout_s)
            console.print(f"  [green]✓[/] {ui.name:<9} {ui.url}")
        # Remembered before the flow runs: a failed flow leaves the services running, and status/down find them.
        _services.remember(self.cfg, self.project, self.state_dir,
                           {"prefect": _prefect.api_url(self.cfg), server: self.server.url})
        if not rerun and self.cfg.maturity.level >= 1 and (current := self.champion_served()) is not None:
            console.print(f"  [green]✓[/] champion {current['model']}@{current['version']} is served; at level "
                          f"{self.cfg.maturity.level} new data is the deployments' job (--rerun runs the flow anyway)")
            result = {**current, "prefect_ui": _prefect.ui_url(self.cfg)}
        elif not rerun and (current := self.up_to_date()) is not None:
            console.print(f"  [green]✓[/] up to date: {current['model']}@{current['version']} was trained on this "
                          "config and data and is served; nothing to run (--rerun runs the flow anyway)")
            result = {**current, "prefect_ui": _prefect.ui_url(self.cfg)}
        else:
            os.environ.update(_prefect.prefect_env(self.cfg, self.state_dir))
            from mlops.flows import in_this_process, up_flow
            from mlops.targets._recover import in_flight

            with in_flight(self.stack, UP_FLOW), in_this_process():
                result = {**up_flow(self.cfg, str(self.project), str(self.state_dir), progress),
                          "prefect_ui": _prefect.ui_url(self.cfg)}
        result["automation"] = self.apply_plan(console)
        return result

    def _recover(self, console: Any) -> None:
        """Orphaned runs Crashed, never-judged candidates rejected (mlops.targets._recover)."""
        from mlops.targets._recover import needed, recover

        if not needed(self.stack):
            return
        os.environ.update(_prefect.prefect_env(self.cfg, self.state_dir))

        done = recover(self.stack)
        if done["crashed"]:
            console.print(f"  [yellow]![/] marked Crashed: {', '.join(done['crashed'])} (their process had ended)")
        for v in done["rejected"]:
            console.print(f"  [yellow]![/] {self.cfg.name}@{v} was left candidate by a run that ended: rejected")

    # ------------------------------------------------------------ the Plan's deployments (level 1+)
    def runner_service(self) -> Supervisor:
        return Supervisor(f"runner-{self.cfg.name}", self.layout)

    def _runner_spec(self) -> Path:
        return self.layout.runner_spec(self.cfg.name)

    def apply_plan(self, console: Any) -> dict[str, Any]:
        """Make the Prefect server hold exactly the Plan's deployments and automations, served by a runner.

        Level 0: no runner, and the recipe's deployments (with their automations) are deleted.
        Level 1+: the runner (`mlops.flows._serve`) applies the Plan and serves it; it is restarted
        only when the Plan changed (its digest), so a repeated `up` is a no-op.
        """
        plan = compile_plan(self.cfg)
        spec, ready = self._runner_spec(), self._runner_spec().with_suffix(".ready")
        service = self.runner_service()
        if not plan.deployments:
            if not spec.is_file():
                return {"runner": None, "deployments": []}
            service.stop()
            os.environ.update(_prefect.prefect_env(self.cfg, self.state_dir))
            from mlops.flows._serve import remove_all

            removed = remove_all(self.cfg.name)
            spec.unlink(missing_ok=True)
            ready.unlink(missing_ok=True)
            console.print(f"  [green]✓[/] level 0: removed deployments {removed or 'none'} and their automations")
            return {"runner": None, "deployments": [], "removed": removed}
        digest = plan.digest()
        if service.pid() is not None and ready.is_file() and ready.read_text() == digest:
            console.print(f"  [green]✓[/] runner    serving {', '.join(d.name for d in plan.deployments)} (unchanged)")
            return {"runner": service.pid(), "deployments": [d.name for d in plan.deployments], "digest": digest}
        service.stop()
        ready.unlink(missing_ok=True)
        from mlops.registry import write_atomic

        write_atomic(spec, json.dumps({"config": self.cfg.model_dump(mode="json"), "project": str(self.project),
                                       "state_dir": str(self.state_dir)}, indent=2))
        env = {**os.environ, **_prefect.prefect_env(self.cfg, self.state_dir)}
        with console.status("starting the Prefect runner (applying the Plan's deployments) ..."):
            pid = service.start([sys.executable, "-m", "mlops.flows._serve", str(spec)], env=env, ports={},
                                ready=[("serving the Plan's deployments",
                                        lambda: ready.is_file() and ready.read_text() == digest)],
                                timeout=self.cfg.target.prefect.start_timeout_s,
                                timeout_key="target.prefect.start_timeout_s", cwd=self.project)
        console.print(f"  [green]✓[/] runner    serving {', '.join(d.name for d in plan.deployments)}; "
                      f"automations: {', '.join(a.name for a in plan.automations) or 'none'}")
        return {"runner": pid, "deployments": [d.name for d in plan.deployments], "digest": digest}

    def _served_result(self, version: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {"model": self.cfg.name, "version": version, "new_version": False, "metrics": metrics,
                "flow_run_id": None, "endpoint": self.server.endpoint(version), "url": self.server.url}

    def champion_served(self) -> dict[str, Any] | None:
        """The champion, if the server serves it (levels 1+: `up` then leaves new data to the deployments)."""
        store = self.stack.model_store
        champion = store.aliases(self.cfg.name).get("champion")
        if champion is None or not self.server.champion_served(champion):
            return None
        return self._served_result(champion, store.get(self.cfg.name, champion).lineage["metrics"])

    def up_to_date(self) -> dict[str, Any] | None:
        """What is served, if it is exactly what `up` would produce now: then there is nothing to run."""
        key = current_training_key(self.cfg, self.project, self.state_dir)
        mv = self.stack.model_store.find(self.cfg.name, key)
        # The previous champion may stay loaded for instant rollback: what answers is the highest READY version.
        if mv is None or self.server.answering_version() != mv.version:
            return None
        return self._served_result(mv.version, mv.lineage["metrics"])

    def registry_status(self, model: str | None = None) -> dict[str, Any]:
        """The recipe's (or `model`'s) versions with their status (rejections with reasons) and the champion."""
        store, model = self.stack.model_store, model or self.cfg.name
        st = store.statuses(model)
        return {"model": model, "champion": store.aliases(model).get("champion"),
                "versions": [{"version": v, **s} for v, s in sorted(st.items())]}

    def down(self) -> dict[str, bool]:
        stopped = {}
        for pid_file in sorted(self.layout.pids.glob("runner-*.pid")):
            if Supervisor(pid_file.stem, self.layout).stop():
                stopped[pid_file.stem] = True
        stopped[self.cfg.serving.flavor] = self.server.stop()
        stopped["prefect"] = _prefect.prefect_service(self.state_dir).stop()
        ports = self.server.ports()
        stopped.update(_tracking_ui.stop_all(self.layout))
        if stopped["prefect"]:
            ports.append((self.cfg.target.prefect.host, self.cfg.target.prefect.port))
        busy = wait_ports_free(ports)
        _services.forget(self.state_dir)
        if busy:
            from mlops.errors import ServiceError

            raise ServiceError(f"ports {busy} are still in use after stopping the services; another process "
                               "holds them (`ss -ltnp` shows which).")
        return stopped

    def status(self) -> dict[str, Any]:
        api = _prefect.api_url(self.cfg)
        # A service that answers on this project's port but is another project's is not this project's stack.
        foreign = self.foreign_services()
        live = self.server.live() and self.cfg.serving.flavor not in foreign
        st = {
            "services": {
                "prefect": {"healthy": _prefect.healthy(api) and "prefect" not in foreign,
                            "url": _prefect.ui_url(self.cfg), "api_url": api,
                            "managed": _prefect.external_api_url() is None,
                            "pid": _prefect.prefect_service(self.state_dir).pid()},
                self.cfg.serving.flavor: {"healthy": live, **self.server.urls()},
            },
            "models": self.server.served() if live else [],
            "statistics": self.server.statistics() if live else [],
            "registry": self.registry_status(),
            # every model of the project's state, whichever recipe the command was given
            "registries": [self.registry_status(m) for m in getattr(self.stack.model_store, "models", list)()],
            "runner": {"pid": self.runner_service().pid(), "digest": (
                r.read_text() if (r := self._runner_spec().with_suffix(".ready")).is_file() else None)},
            "watchdog": self.watchdog_state(),
            "state_dir": str(self.state_dir),
            "tracking": self.stack.tracker().ui_hint(),
        }
        st["services"].update(_tracking_ui.services(self.tracking_ui(), self.layout))
        for name, note in foreign.items():
            st["services"][name]["foreign"] = note
        return st

    def watchdog_state(self) -> dict[str, Any] | None:
        """What the runner's watchdog (level 3+, mlops.flows._watchdog) last wrote, while that runner runs."""
        pid = self.runner_service().pid()
        try:
            state = json.loads(self.layout.watchdog(self.cfg.name).read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and pid is not None and state.get("pid") == pid else None

    def tracking_ui(self) -> Any:
        """The tracker's own UI process, if its config asks for one (`tracking.ui: true`). A config without a
        true `ui` has none, and its flavor is not imported for that (MLflow's import is ~1.5 s of a warm `up`)."""
        return self.stack.tracker().ui() if getattr(self.cfg.tracking, "ui", False) else None
