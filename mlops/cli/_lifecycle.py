"""Model lifecycle commands: `run` and `deploy` (level 0 by hand), `promote`, `rollback`, `runs`."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from mlops._names import MANUAL_STEPS
from mlops._layout import Layout
from mlops.cli._app import JsonFlag, Overrides, WaitFlag, _load, _locked, _print_json, _project, app, out
from mlops.errors import ConfigError, Problem

Force = Annotated[bool, typer.Option("--force", help="Also promote a version the gate rejected.")]


def _ref(ref: str) -> tuple[str, int]:
    model, at, version = ref.partition("@")
    if not at or not version.isdigit():
        raise ConfigError([Problem("", f"expected <model>@<version>, e.g. breast_cancer@2, got {ref!r}",
                                   "command line", "`mlops runs` and `mlops status` list the versions")])
    return model, int(version)


def _cfg_for(model: str, overrides: list[str] | None):
    """The recipe named like the model, unless the overrides choose one."""
    overrides = list(overrides or [])
    if not any(o.split("=")[0] == "recipe" for o in overrides):
        overrides.append(f"recipe={model}")
    cfg = _load(overrides, check_data=False)
    if cfg.name != model:
        raise ConfigError([Problem("name", f"the recipe chosen is {cfg.name!r}, not {model!r}", "command line",
                                   f"choose it with recipe=<file> whose `name:` is {model}")])
    return cfg


def _state_dir(cfg) -> Path:
    return (_project() / cfg.target.state_dir).resolve()


def promote_version(cfg, version: int, by: str, force: bool = False) -> dict[str, Any]:
    """Export (once), serve `version`, then make it the champion (mlops.steps.promote)."""
    from mlops import steps
    from mlops.registry import RunLog
    from mlops.stack import Stack

    stack = Stack(cfg, _project())
    served = steps.promote(stack, version, by=by, force=force)
    RunLog(stack.layout.runs).record(cfg.name, {"flow": by, "trigger": "manual", "steps": ["export", "deploy"],
                                                "version": version, "outcome": "deployed"})
    return {"model": cfg.name, "version": version, "endpoint": served.endpoint, "url": served.url}


def _make_champion(ref: str, overrides: list[str] | None, force: bool, json_: bool, by: str, wait: bool) -> None:
    """`mlops deploy` (level 0) and `mlops promote` (level 2): the same act, named for who does it."""
    model, version = _ref(ref)
    cfg = _cfg_for(model, overrides)
    with _locked(cfg, wait):
        result = promote_version(cfg, version, by, force)
    _print_json(result) if json_ else out.print(f"{model}@{version} is the champion, served at {result['endpoint']}")


@app.command()
def deploy(ref: Annotated[str, typer.Argument(help="<model>@<version>")], overrides: Overrides = None,
           force: Force = False, json_: JsonFlag = False, wait: WaitFlag = False) -> None:
    """Export a registered version, serve it on the model server and make it the champion (level 0: a person deploys).

    Example: mlops deploy breast_cancer@1
    """
    _make_champion(ref, overrides, force, json_, by="mlops deploy", wait=wait)


@app.command()
def promote(ref: Annotated[str, typer.Argument(help="<model>@<version>")], overrides: Overrides = None,
            force: Force = False, json_: JsonFlag = False, wait: WaitFlag = False) -> None:
    """Move the champion alias to a registered version and serve it (level 2: promotion is manual).

    Example: mlops promote breast_cancer@2
    """
    _make_champion(ref, overrides, force, json_, by="mlops promote", wait=wait)


@app.command()
def rollback(model: Annotated[str, typer.Argument(help="The model (recipe name).")], overrides: Overrides = None,
             json_: JsonFlag = False, wait: WaitFlag = False) -> None:
    """Restore the previous champion: the model server serves it again and the champion alias points back to it.

    Example: mlops rollback breast_cancer
    """
    from mlops import steps
    from mlops.registry import RunLog
    from mlops.stack import Stack

    cfg = _cfg_for(model, overrides)
    stack = Stack(cfg, _project())
    with _locked(cfg, wait):
        frm, to, served = steps.rollback(stack)
        RunLog(stack.layout.runs).record(model, {"flow": "mlops rollback", "trigger": "manual", "steps": ["deploy"],
                                                 "version": to, "outcome": f"rolled back from {frm}"})
    if json_:
        _print_json({"model": model, "from": frm, "to": to, "endpoint": served.endpoint, "url": served.url})
    else:
        out.print(f"{model}: rolled back from version {frm} to {to}, served at {served.endpoint}")


@app.command()
def run(step: Annotated[str, typer.Argument(help=" | ".join(MANUAL_STEPS))],
        overrides: Overrides = None, json_: JsonFlag = False, wait: WaitFlag = False) -> None:
    """Run one step of the pipeline by hand, as a Prefect flow run (level 0: a person runs each step).

    Each step uses what the previous one left: ingest, then validate, train, evaluate, register;
    then `mlops deploy <model>@<version>`.

    Example: mlops run train recipe=churn
    """
    if step not in MANUAL_STEPS:
        raise ConfigError([Problem("", f"unknown step {step!r}", "command line",
                                   f"steps: {', '.join(MANUAL_STEPS)}; then `mlops deploy <model>@<version>`")])
    from mlops.targets import _prefect, get_target

    cfg = _load(overrides)
    if cfg.target.kind != "local":
        # target=aws provisions the stack with Pulumi (`mlops up`); nothing in it runs a single step remotely.
        given = [o for o in overrides or [] if o.split("=")[0] == "target"]
        again = " ".join(["mlops run", step, *(o for o in overrides or [] if o not in given), "target=local"])
        raise ConfigError([Problem(
            "target", f"is {cfg.target.kind}, and `mlops run {step}` runs a step on this machine only: "
            f"target={cfg.target.kind} provisions the stack's infrastructure with Pulumi (`mlops up target="
            f"{cfg.target.kind}`, offline with `mlops plan target={cfg.target.kind}`) and runs no pipeline step",
            f"override '{given[-1]}'" if given else "command line", f"run the step here: `{again}`")])
    target = get_target(cfg, _project())
    with _locked(cfg, wait):
        target._ensure_prefect()
        os.environ.update(_prefect.prefect_env(cfg, target.state_dir))
        from mlops._names import STEP_FLOW
        from mlops.flows import in_this_process, step_flow
        from mlops.targets._recover import in_flight

        with in_flight(target.stack, STEP_FLOW), in_this_process():
            result = step_flow(cfg, str(target.project), str(target.state_dir), step)
    if json_:
        _print_json(result)
    elif step == "register":
        out.print(f"registered {cfg.name}@{result['version']}; deploy it with `mlops deploy {cfg.name}@{result['version']}`")
    else:
        out.print(f"{step} done")


@app.command()
def runs(overrides: Overrides = None, json_: JsonFlag = False) -> None:
    """The recipe's run history: which flow ran, what triggered it, the version and the gate's verdict.
    Without recipe=, every recipe's runs in the project's state, each line led by its recipe.

    Example: mlops runs recipe=churn --json
    """
    from mlops.cli._app import names_recipe
    from mlops.registry import RunLog

    one = names_recipe(overrides)
    cfg = _load(overrides, check_data=False, needs_recipe=False)
    history = RunLog(Layout(_state_dir(cfg)).runs).runs(cfg.name if one else None)
    if json_:
        _print_json(history)
        return
    if not history:
        out.print(f"no runs of {cfg.name} yet" if one else "no runs yet")
    for r in history:
        when = dt.datetime.fromtimestamp(r["at"]).strftime("%Y-%m-%d %H:%M:%S")
        if not one:
            when = f"{r.get('model', '?')}  {when}"
        version = f"v{r['version']}" if r.get("version") is not None else "-"
        outcome = r.get("outcome", "done")
        line = f"{when}  {r['flow']:<14} {r['trigger']:<32} {version:<5} {outcome}"
        if r.get("gate"):
            g = r["gate"]
            line += f"  gate: {g['metric']} {g['candidate']:.4f} vs champion {g['champion'] if g['champion'] is None else format(g['champion'], '.4f')}"
            line += "".join(f"\n{'':<22}- {reason}" for reason in g["reasons"])
        if r.get("drifted"):
            scores = ", ".join(f"{c} {v}" for c, v in r.get("scores", {}).items())
            line += f"  window {r['window']}: {scores}"
        if r.get("drift_window"):
            line += f"  (retrained on the drift of window {r['drift_window']})"
        if r.get("reasons") and not r.get("gate"):  # quarantined, failed: why (a gate's reasons are above)
            line += "".join(f"\n{'':<22}- {reason.splitlines()[0]}" for reason in r.get("reasons", []))
        out.print(line, markup=False)
