"""target=aws: the stack's Pulumi program through Pulumi's Automation API.

Everything that can stop a run is checked first (:meth:`AwsTarget.unavailable`), so a missing
`pulumi` CLI, AWS credentials or passphrase stop `up`/`down` before any side effect (exit 5).
State lives in the stack's backend (`stack.backend`, default ``file://<state_dir>/pulumi``), and
where it lives is recorded in ``<state_dir>/pulumi-stack.json`` so `down` needs nothing else.
Pulumi itself gives the rest: a second `up` with nothing changed updates nothing, and a
concurrent `up` on the same stack fails fast on the backend's lock (reported as exit 5).
`plan` uses :func:`planned_resources`: the same program under Pulumi's mocks, offline.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from mlops._names import DATA_FLOW, MONITOR_FLOW
from mlops._layout import Layout
from mlops.errors import TargetUnavailable
from mlops.infra import InfraSpec, Schedule
from mlops.infra import planned_resources as _run_offline
from mlops.plan import Plan, compile_plan
from mlops.recipe.schema import Config
from mlops.targets._base import Target


# Which infrastructure component starts each scheduled flow's deployment in the cloud, and the stack parameter
# (stacks/*.yaml `parameters.schedules`) with its cadence there. Which deployments exist and what they are
# called is the Plan's to say; the Plan's own `interval_s` is the local runner's poll (seconds), not this.
_SCHEDULED = {DATA_FLOW: ("data_schedule", "data"), MONITOR_FLOW: ("monitoring", "drift")}


def _aws_credentials() -> bool:
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    home = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", Path.home() / ".aws" / "credentials"))
    return home.is_file()


def _kubeconfig() -> bool:
    return any(Path(p).expanduser().is_file() for p in os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep))


def plan_at(cfg: Config, level: int | None = None) -> Plan:
    """The Plan of `cfg` at `level` (default the recipe's own)."""
    if level is not None and level != cfg.maturity.level:
        cfg = cfg.model_copy(update={"maturity": cfg.maturity.model_copy(update={"level": level})})
    return compile_plan(cfg)


def infra_spec(cfg: Config, plan: Plan | None = None) -> InfraSpec:
    """The Pulumi program's input: the components of `plan.infrastructure` and its scheduled deployments
    (default: the recipe's Plan), built the way the stack's parameters say."""
    plan = plan or plan_at(cfg)
    schedules = []
    for d in plan.deployments:
        if d.interval_s is None:  # runs only when an automation triggers it
            continue
        if d.flow not in _SCHEDULED:
            raise TargetUnavailable(f"the Plan's deployment {d.name!r} (flow {d.flow!r}) runs on a schedule, but no "
                                    f"infrastructure component schedules flow {d.flow!r} in the cloud "
                                    f"(mlops.targets._aws._SCHEDULED knows {', '.join(_SCHEDULED)})")
        component, param = _SCHEDULED[d.flow]
        schedules.append(Schedule(component=component, flow=d.flow, deployment=d.name, emits=d.emits,
                                  expression=getattr(cfg.stack.parameters.schedules, param)))
    return InfraSpec.build(cfg, plan.maturity, (c.name for c in plan.infrastructure), schedules)


def planned_resources(cfg: Config, level: int | None = None, plan: Plan | None = None) -> list[dict[str, Any]]:
    """What the stack's program declares for `plan` (default the recipe's Plan at `level`, default its own),
    offline: Pulumi's mocks, no CLI, no credentials. ``[{"type", "name", "custom", "inputs"}]`` in declaration
    order; components have ``custom: False``. Raises TargetUnavailable if the stack names no program."""
    if cfg.stack.pulumi_project is None:
        raise TargetUnavailable(f"stack {cfg.stack.name!r} provisions nothing (stack.pulumi_project is null); "
                                "use stack=reasonable-scale or stack=k8s")
    return _run_offline(infra_spec(cfg, plan or plan_at(cfg, level)))


def resource_diff(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """Resources added, removed and changed between two planned_resources lists (e.g. two levels)."""
    a = {(r["type"], r["name"]): r for r in before}
    b = {(r["type"], r["name"]): r for r in after}

    def row(k: tuple[str, str]) -> dict[str, str]:
        return {"type": k[0], "name": k[1]}

    return {"add": [row(k) for k in b if k not in a], "remove": [row(k) for k in a if k not in b],
            "change": [row(k) for k in b if k in a and a[k]["inputs"] != b[k]["inputs"]]}


class AwsTarget(Target):
    """`target: {kind: aws}`: the stack's Pulumi program, through Pulumi's Automation API."""

    # ------------------------------------------------------------ checks (no side effects)
    @property
    def backend(self) -> str:
        return self.cfg.stack.backend or Layout(self.state_dir).pulumi.as_uri()

    def missing(self) -> list[str]:
        """What this machine lacks to run the stack's program; empty when it can run."""
        missing = []
        if shutil.which("pulumi") is None:
            missing.append("the `pulumi` CLI is not on PATH (install it: https://www.pulumi.com/docs/install/, "
                           "then check `pulumi version`)")
        if not _aws_credentials():
            missing.append("no AWS credentials (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           "or run `aws configure`)")
        if self.cfg.stack.pulumi_project is None:
            missing.append(f"stack {self.cfg.stack.name!r} names no Pulumi project (stack.pulumi_project); "
                           "use stack=reasonable-scale")
        elif self.cfg.stack.pulumi_project == "k8s" and not _kubeconfig():
            missing.append("no kubeconfig for stack=k8s (set KUBECONFIG or create ~/.kube/config)")
        if self.cfg.stack.secrets_provider == "passphrase" and not (
                os.environ.get("PULUMI_CONFIG_PASSPHRASE") is not None or os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")):
            missing.append("no PULUMI_CONFIG_PASSPHRASE (or _FILE) for the passphrase secrets provider "
                           "(or set stack.secrets_provider: awskms://alias/...)")
        return missing

    def unavailable(self) -> TargetUnavailable | None:
        """Why this target cannot run here, or None; checked before any side effect."""
        missing = self.missing()
        if not missing:
            return None
        return TargetUnavailable(
            "target=aws cannot run from here, and nothing was changed: " + "; ".join(missing)
            + ". Use target=local (the default) to run the same recipe on this machine, or "
            "`mlops plan target=aws` to see the resources offline."
        )

    def _check(self) -> None:
        exc = self.unavailable()
        if exc is not None:
            raise exc

    # ------------------------------------------------------------ Automation API
    def _stack(self, spec: Any | None, stack_name: str, program_name: str, backend: str):
        """Select (or create) the Pulumi stack. `spec` None: an empty program (destroy, outputs)."""
        from pulumi import automation as auto

        if backend.startswith("file://"):
            Path(backend[len("file://"):]).mkdir(parents=True, exist_ok=True)

        def program() -> None:
            if spec is not None:
                from mlops.infra.programs import program_for

                program_for(spec.program)(spec)

        opts = auto.LocalWorkspaceOptions(
            project_settings=auto.ProjectSettings(name=f"mlops-{program_name}", runtime="python",
                                                  backend=auto.ProjectBackend(url=backend)),
            secrets_provider=self.cfg.stack.secrets_provider,
            env_vars={"PULUMI_BACKEND_URL": backend, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        )
        try:
            return auto.create_or_select_stack(stack_name=stack_name, project_name=f"mlops-{program_name}",
                                               program=program, opts=opts)
        except FileNotFoundError as exc:  # the CLI vanished between the check and now
            raise TargetUnavailable(f"the `pulumi` CLI is not on PATH ({exc}); nothing was changed.") from exc

    def _locked(self, exc: Exception) -> TargetUnavailable:
        return TargetUnavailable(f"another `mlops up`/`down` holds the lock of Pulumi stack {self.cfg.name!r} "
                                 f"in {self.backend}; this run changed nothing. Wait for it, or if it died, "
                                 f"`pulumi cancel` in that backend. ({exc})")

    def up(self, progress: bool = False, rerun: bool = False) -> dict[str, Any]:
        self._check()
        from pulumi import automation as auto

        spec = infra_spec(self.cfg)
        stack = self._stack(spec, self.cfg.name, spec.program, self.backend)
        stack.set_config("aws:region", auto.ConfigValue(spec.region))
        stack.set_config("mlops:spec", auto.ConfigValue(json.dumps(spec.to_json())))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        Layout(self.state_dir).pulumi_stack.write_text(json.dumps(
            {"backend": self.backend, "project": f"mlops-{spec.program}", "program": spec.program,
             "stack": self.cfg.name, "level": spec.level}, indent=2) + "\n")
        try:
            res = stack.up(color="never", on_output=print if progress else None)
        except auto.ConcurrentUpdateError as exc:
            raise self._locked(exc) from exc
        changes = {k: v for k, v in (res.summary.resource_changes or {}).items() if k != "same"}
        outputs = {k: v.value for k, v in res.outputs.items()}
        return {"model": self.cfg.serving.model_name, "version": f"infra level {spec.level}",
                "new_version": bool(changes), "metrics": {}, "changes": changes, "outputs": outputs,
                "endpoint": outputs.get("endpoint", "(no serving at this level)"),
                "prefect_ui": "(your Prefect Cloud or self-hosted server: stack.parameters.orchestration)"}

    def down(self) -> dict[str, bool]:
        """Destroy from the saved state alone (the backend recorded by `up`); the bucket is retained."""
        self._check()
        from pulumi import automation as auto

        saved = Layout(self.state_dir).pulumi_stack
        rec = json.loads(saved.read_text()) if saved.is_file() else {
            "backend": self.backend, "program": self.cfg.stack.pulumi_project, "stack": self.cfg.name}
        stack = self._stack(None, rec["stack"], rec["program"], rec["backend"])
        try:
            res = stack.destroy(color="never")
        except auto.ConcurrentUpdateError as exc:
            raise self._locked(exc) from exc
        return {"pulumi": bool((res.summary.resource_changes or {}).get("delete"))}

    def status(self) -> dict[str, Any]:
        self._check()
        saved = Layout(self.state_dir).pulumi_stack
        if not saved.is_file():
            return {"services": {}, "models": [], "tracking": "(nothing provisioned from here)"}
        rec = json.loads(saved.read_text())
        outputs = {k: v.value for k, v in self._stack(None, rec["stack"], rec["program"], rec["backend"]).outputs().items()}
        return {"services": {"pulumi": {"healthy": True, "url": f"{rec['backend']} stack {rec['stack']}"}},
                "models": [], "tracking": outputs.get("tracking_artifact_uri", ""), "outputs": outputs}

    def planned_services(self) -> list[dict[str, Any]]:
        return [{"name": "pulumi", "url": f"{self.backend} stack {self.cfg.name}", "action": "provision " +
                 ", ".join(c.name for c in plan_at(self.cfg).infrastructure)},
                {"name": self.cfg.serving.flavor, "url": "(from the stack outputs)", "action": "provision"}]
