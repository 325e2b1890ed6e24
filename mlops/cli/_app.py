"""`mlops`: the command line. Every command validates the config before any side effect.

Exit codes: 0 ok · 1 unexpected · 2 bad config or usage · 3 data failed validation ·
4 a service failed · 5 target unavailable · 6 registry · 7 bad input rows · 8 project busy (another command holds its lock).

Each command imports the layers it uses inside its body (import cost: targets, serving and flows bring in
pandas, Triton's client and Prefect), so `mlops --help` and the light commands start fast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mlops.errors import MlopsError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

OVERRIDES_HELP = "Hydra overrides: group=option (recipe=churn, stack=reasonable-scale, maturity=3) or key=value (model.lr=3e-4)."
Overrides = Annotated[list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
WaitFlag = Annotated[bool, typer.Option("--wait", help="If another command is changing this project, wait for it "
                                        "to finish instead of failing with exit code 8.")]

app = typer.Typer(
    name="mlops",
    help="Declarative MLOps: a Hydra recipe becomes a Prefect flow that trains with Lightning and serves on Triton.\n\n"
    "Example: mlops up stack=reasonable-scale recipe=breast_cancer model.lr=3e-4",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class _Options:
    project: Path | None = None
    debug: bool = False


@app.callback()
def _root(
    project_dir: Annotated[Path | None, typer.Option("--project-dir", "-C", help="Project folder (recipes/, stacks/, "
                                                     "state). Default: $MLOPS_PROJECT_DIR or the current folder.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    _Options.project = project_dir
    _Options.debug = debug
    import os

    given = project_dir or (Path(os.environ["MLOPS_PROJECT_DIR"]) if os.environ.get("MLOPS_PROJECT_DIR") else None)
    if given is not None and not given.is_dir():
        from mlops.errors import ConfigError, Problem

        where = "-C" if project_dir is not None else "MLOPS_PROJECT_DIR"
        raise ConfigError([Problem("", f"the project folder {str(given)!r} does not exist"
                                   + (" (it is a file)" if given.exists() else ""), where,
                                   "give an existing folder, or create one with `mlops init DIR`")])


def recipes() -> list[str]:
    """The recipes this project can run (recipes/*.yaml)."""
    from mlops.recipe._sources import Sources

    # The stub that stands in for a project without recipes (mlops/recipe/_stub) is not one of them.
    return [r for r in Sources.discover(_project()).options("recipe") if not r.startswith("_")]


def names_recipe(overrides: list[str] | None) -> bool:
    return any(o.partition("=")[0].lstrip("~+") == "recipe" for o in overrides or [])


def _with_recipe(overrides: list[str] | None, needs_recipe: bool) -> list[str]:
    """The overrides, with a recipe chosen when they name none.

    A command that runs a recipe and gets none uses the project's only recipe, or `breast_cancer` where the
    project has it (the framework's default); otherwise it stops and lists the recipes. A command that acts on
    the project's state (status, down, runs) only needs some recipe's stack and state directory: the first.
    """
    from mlops.errors import ConfigError, Problem

    overrides = list(overrides or [])
    if names_recipe(overrides):
        return overrides
    found = recipes()
    if "breast_cancer" in found:
        return overrides  # the default choice (mlops/recipe/_loader.py)
    if len(found) == 1 or (found and not needs_recipe):
        return [*overrides, f"recipe={found[0]}"]
    folder = _project() / "recipes"
    if not found and not needs_recipe:
        # No recipe yet: the project's state (nothing, or what a removed recipe left) with the framework's
        # defaults; mlops/recipe/_stub/_project.yaml is offered as `recipe=_project` only in such a project.
        return [*overrides, "recipe=_project"]
    if not found:
        raise ConfigError([Problem("", f"this project has no recipe: {folder} holds no *.yaml", "command line",
                                   "write recipes/<name>.yaml, or scaffold a project with `mlops init`")])
    raise ConfigError([Problem("", f"this command runs one recipe and none was chosen (recipe=...); the "
                               f"project's recipes are: {', '.join(found)}", "command line",
                               f"choose one, e.g. `recipe={found[0]}`")])


def _load(overrides: list[str] | None, check_data: bool = True, needs_recipe: bool = True):
    from mlops._layout import Layout
    from mlops.recipe import load

    overrides = _with_recipe(overrides, needs_recipe)
    cfg = load(overrides, _Options.project, check_data=check_data)
    if not Layout(_project() / cfg.target.state_dir).services.is_file():
        return cfg
    from mlops.targets._services import recall

    # The ports `up` started this project's services with are its defaults now (<state_dir>/services.json).
    cfg, notes = recall(cfg, _project(), list(overrides))
    for note in notes:
        err.print(f"note: {note}", markup=False)
    return cfg


def _project() -> Path:
    from mlops.recipe import project_dir

    return project_dir(_Options.project)


def _locked(cfg, wait: bool):
    """The project lock (mlops._lock) for a command that changes the project's state or services."""
    from mlops._layout import Layout
    from mlops._lock import project_lock

    state_dir = (_project() / cfg.target.state_dir).resolve()
    return project_lock(Layout(state_dir), wait=wait,
                        on_wait=lambda who: err.print(f"waiting for {who} to finish ...", markup=False))


def _print_json(obj: Any) -> None:
    """Strict JSON (RFC 8259 has no NaN or Infinity): a non-finite number becomes null, and its path is listed
    under "non_finite" so a reader knows the null is not a missing value."""
    try:
        text = json.dumps(obj, indent=2, default=str, allow_nan=False)
    except ValueError:
        paths: list[str] = []
        obj = _finite(obj, "", paths)
        if isinstance(obj, dict):
            obj = {**obj, "non_finite": {"paths": paths, "reason": "NaN or infinite values, shown as null"}}
        text = json.dumps(obj, indent=2, default=str, allow_nan=False)
    sys.stdout.write(text + "\n")


def _finite(obj: Any, path: str, paths: list[str]) -> Any:
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        paths.append(path or "$")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), paths) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v, f"{path}[{i}]", paths) for i, v in enumerate(obj)]
    return obj


@app.command()
def up(
    overrides: Overrides = None,
    rerun: Annotated[bool, typer.Option("--rerun", help="Run the flow even when the served model is up to date "
                                        "(cached steps are still reused).")] = False,
    wait: WaitFlag = False,
) -> None:
    """Start the services and run the recipe end to end: ingest, validate, train, evaluate, register, export, deploy.

    Ends when the model is READY on Triton. A second `up` with nothing changed trains nothing.

    Example: mlops up recipe=breast_cancer
    """
    from mlops.targets import get_target

    t0 = time.perf_counter()
    cfg = _load(overrides)
    target = get_target(cfg, _project())
    with _locked(cfg, wait):
        result = target.up(progress=err.is_terminal, rerun=rerun)
    took = time.perf_counter() - t0
    served = f"{result['model']} version {result['version']}"
    err.print(f"[bold green]up[/] in {took:.1f}s: {served} is READY "
              f"({'new version' if result['new_version'] else 'unchanged, nothing retrained'})")
    for k, v in result["metrics"].items():
        if k.startswith("test_"):
            err.print(f"  {k:<10} {v:.4f}")
    out.print(f"endpoint   {result['endpoint']}")
    out.print(f"prefect ui {result['prefect_ui']}")


@app.command()
def down(overrides: Overrides = None, json_: JsonFlag = False, wait: WaitFlag = False) -> None:
    """Stop every service `up` started and free their ports. Artifacts, registry and tracking data stay.

    Example: mlops down
    """
    from mlops.targets import get_target

    cfg = _load(overrides, check_data=False, needs_recipe=False)
    with _locked(cfg, wait):
        stopped = get_target(cfg, _project()).down()
    if json_:
        _print_json(stopped)
    else:
        for name, was in stopped.items():
            out.print(f"{name:<8} {'stopped' if was else 'was not running'}")


@app.command()
def status(overrides: Overrides = None, json_: JsonFlag = False) -> None:
    """Services with their health and URLs, and the models served with their versions.

    Example: mlops status --json
    """
    from mlops.targets import get_target

    cfg = _load(overrides, check_data=False, needs_recipe=False)
    st = get_target(cfg, _project()).status()
    if json_:
        _print_json(st)
        return
    for name, s in st["services"].items():
        mark = "[green]healthy[/]" if s["healthy"] else "[red]down[/]"
        out.print(f"{name:<8} {mark:<24} {s['url']}")
        if s.get("foreign"):
            out.print(f"         {s['foreign']}", markup=False)
    for m in st["models"]:
        out.print(f"model    {m['name']} version {m['version']} {m['state']}")
    if not st["models"]:
        out.print("model    (none served)")
    if wd := st.get("watchdog"):  # level 3+: the runner restarts a dead server (mlops.flows._watchdog)
        line = f"watchdog {wd['status']}"
        if wd.get("reason") and wd["status"] != "watching":
            line += f": {wd['reason']}"
        if last := wd.get("last_restart"):
            line += f" (last restart: {wd['server']} down {last['down_s']:g} s, attempt {last['attempt']})"
        out.print(line, markup=False)
    server = st["services"].get(cfg.serving.flavor, {})
    for t in st.get("statistics", []):
        out.print(f"{cfg.serving.flavor:<8} {t['name']} v{t['version']}  {t['requests']} req  {t['failures']} failed  "
                  f"queue {t['queue_ms']:.2f} ms  compute {t['compute_ms']:.2f} ms  "
                  f"({t['rows_per_execution']:.1f} rows/exec)  metrics {server.get('metrics_url', '-')}")
    regs = st.get("registries") or [st.get("registry") or {}]
    if names_recipe(overrides):  # else every model of the project's state
        regs = [r for r in regs if r.get("model") == cfg.name] or [st.get("registry") or {}]
    for reg in regs:
        if not reg.get("versions"):
            continue
        out.print(f"champion {reg['model']}@{reg['champion']}" if reg["champion"] else f"champion {reg['model']}: none")
        for v in reg["versions"]:
            reasons = f": {'; '.join(v['reasons'])}" if v["reasons"] else ""
            out.print(f"version  {reg['model']}@{v['version']} {v['status']}{reasons}", markup=False)
    out.print(f"tracking {st['tracking']}")


@app.command()
def plan(
    overrides: Overrides = None,
    diff: Annotated[list[str] | None, typer.Option("--diff", help="Compare with the Plan of these overrides "
                                                  "applied on top (e.g. --diff maturity=2): what would change.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Plan every recipe in recipes/ with these overrides, one "
                                       "line each (no data checks); exit 2 if any is invalid.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Compose and validate the config, print the Plan of its maturity level and what `up` would do. No side effects.

    With --diff, print what changes from the Plan of the --diff overrides to this one: steps that become
    automated, new deployments, automations (triggers), gates and infrastructure.

    With --all, print one line per recipe in recipes/: its stack, target, maturity level, how many steps
    are automated, its deployments, automations and gates, and the Plan's digest (1,000 recipes in seconds).

    Example: mlops plan recipe=churn model.lr=3e-4

    Example: mlops plan maturity=3 --diff maturity=2

    Example: mlops plan --all maturity=3
    """
    from mlops.plan import build_plan, compile_plan, diff_plans, render_diff

    if all_:
        _plan_all(overrides or [], diff, json_)
        return
    overrides = _with_recipe(overrides, needs_recipe=True)
    if diff:
        new_cfg = _load(overrides, check_data=False)
        old_cfg = _load([*(overrides or []), *diff], check_data=False)
        new, old = compile_plan(new_cfg), compile_plan(old_cfg)
        changes = diff_plans(old, new)
        if new_cfg.target.kind == "aws":
            from mlops.targets._aws import planned_resources, resource_diff

            changes["resources"] = resource_diff(planned_resources(old_cfg), planned_resources(new_cfg))
        if json_:
            _print_json({"from": old.to_json(), "to": new.to_json(), "diff": changes})
            return
        out.print(f"[bold]# {' '.join(diff)} -> {' '.join(overrides or []) or '(defaults)'}[/]")
        for line in render_diff(changes):
            out.print(line, markup=False)
        for mark, key in (("+", "add"), ("-", "remove"), ("~", "change")):
            for r in changes.get("resources", {}).get(key, []):
                out.print(f"{mark} resource {r['type']} {r['name']}", markup=False)
        return
    from mlops.recipe import resolved_yaml
    from mlops.targets import get_target

    cfg = _load(overrides)
    p = build_plan(cfg, _project(), get_target(cfg, _project()))
    if cfg.target.kind == "aws":
        from mlops.targets._aws import planned_resources

        # Offline, through Pulumi's mock engine: no CLI, no credentials.
        p["resources"] = [{"type": r["type"], "name": r["name"]} for r in planned_resources(cfg) if r["custom"]]
    if json_:
        _print_json({"config": cfg.model_dump(mode="json"), "plan": p})
        return
    out.print("[bold]# resolved config[/]")
    out.print(resolved_yaml(overrides or [], _Options.project), markup=False)
    out.print(f"[bold]# the Plan at maturity level {p['maturity']} (digest {p['digest']})[/]")
    for kind, name in p["components"].items():
        out.print(f"flavor     {kind:<11} {name}", markup=False)
    for svc in p["services"]:
        out.print(f"service    {svc['name']:<8} {svc['action']:<8} {svc['url']}", markup=False)
        if svc.get("owner"):
            out.print(f"           {svc['owner']}", markup=False)
    for step in p["steps"]:
        who = "automated" if step["automated"] else "manual"
        how = step["run_by"] if step["automated"] else f"`{step['command']}`"
        out.print(f"step       {step['name']:<9} {who:<9} {how}: {step['action']}", markup=False)
    for d in p["deployments"]:
        when = f"every {d['interval_s']:g}s" if d["interval_s"] else "when triggered"
        out.print(f"deployment {d['name']} ({d['flow']}: {' -> '.join(d['steps'])}) {when}", markup=False)
    for a in p["automations"]:
        out.print(f"automation {a['name']}: on {a['event']} ({a['resource']}) run {a['deployment']}", markup=False)
    for g in p["gates"]:
        out.print(f"gate       {g['name']}: {g['metric']} {g['direction']}, min improvement {g['min_improvement']:g}, "
                  f"floors {g['floors'] or '-'}, ceilings {g['ceilings'] or '-'}", markup=False)
    for c in p["infrastructure"]:
        out.print(f"component  {c['name']:<14} {c['flavor']}",
                  markup=False)
    for r in p.get("resources", []):
        out.print(f"resource   {r['type']} {r['name']}", markup=False)


def _plan_all(overrides: list[str], diff: list[str] | None, json_: bool) -> None:
    """`plan --all`: one line (or JSON object) per recipe; the problems of the invalid ones as one ConfigError."""
    from dataclasses import replace

    from mlops.errors import ConfigError, Problem
    from mlops.plan import compile_plan
    from mlops.recipe import load_many

    if diff or any(o.partition("=")[0].lstrip("~+") == "recipe" for o in overrides):
        raise ConfigError([Problem("", "--all plans every recipe in recipes/", "command line",
                                   "drop --diff and recipe=, or drop --all to plan one recipe")])
    rows, problems = [], []
    for name, cfg in load_many(None, _Options.project, overrides).items():
        if isinstance(cfg, ConfigError):
            rows.append({"recipe": name, "problems": [p.render() for p in cfg.problems]})
            problems += [replace(p, where=f"recipe={name}" + (f" {p.where}" if p.where else "")) for p in cfg.problems]
        else:
            plan = compile_plan(cfg)
            rows.append({"recipe": name, "digest": plan.digest(), "plan": plan.to_json()})
    if not rows:
        raise ConfigError([Problem("", "there is no recipe to plan", f"{_project() / 'recipes'}",
                                   "add recipes/<name>.yaml")])
    if json_:
        _print_json(rows)
    width = max(len(r["recipe"]) for r in rows)
    for r in [] if json_ else rows:
        if "problems" in r:
            out.print(f"{r['recipe']:<{width}}  invalid: {len(r['problems'])} problem(s), listed below", markup=False)
            continue
        p = r["plan"]
        automated = sum(s["automated"] for s in p["steps"])
        out.print(f"{r['recipe']:<{width}}  maturity {p['maturity']}  stack {p['stack']}  target {p['target']}  "
                  f"automated {automated}/{len(p['steps'])} steps  deployments {len(p['deployments'])}  "
                  f"automations {len(p['automations'])}  gates {len(p['gates'])}  digest {r['digest']}", markup=False)
    if problems:
        raise ConfigError(problems)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="The recipe reference as Markdown (docs/).")] = False,
) -> None:
    """Write the recipe JSON Schema, for editors to validate and autocomplete recipes.

    Example: mlops schema -o recipe.schema.json
    """
    from mlops.recipe.reference import recipe_json_schema, recipe_markdown

    text = recipe_markdown() if markdown else json.dumps(recipe_json_schema(), indent=2) + "\n"
    if output:
        from mlops._atomic import write_atomic

        try:
            write_atomic(output, text)
        except OSError as exc:
            from mlops.errors import ConfigError, Problem

            raise ConfigError([Problem("", f"cannot write {output}: {exc.strerror or exc}", "--output",
                                       "give a file path in a folder you can write to")]) from None
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@app.command()
def predict(
    overrides: Overrides = None,
    input_: Annotated[Path, typer.Option("--input", "-i", help="What to score: rows (.csv, or .json: a list of "
                                         "objects); arrays for a tensor model (.npy, or .json lists); or images "
                                         "(a .png/.jpg file, or a folder of them) for an image model.")]
    = Path("rows.csv"),
    json_: JsonFlag = False,
) -> None:
    """Send raw feature rows, arrays or images to the served model and print the predictions.

    Example: mlops predict recipe=breast_cancer --input rows.csv --json

    Images (an image model): mlops predict recipe=digits --input digits/ (a folder of PNG/JPEG files, or one file;
    each is sent as its uint8 pixels). Arrays (a tensor model): mlops predict recipe=my_net --input batch.npy
    """
    from mlops.serving import read_rows
    from mlops.serving._images import is_image_input, predict_images
    from mlops.stack import Stack

    cfg = _load(overrides, check_data=False)
    server = Stack(cfg, _project()).server
    if is_image_input(input_):
        image = getattr(cfg.data, "image", None)
        result = predict_images(server, input_, image.channels if image is not None else None)
        if json_:
            _print_json(result)
            return
        out.print("file  label  " + "  ".join(f"p({c})" for c in result["classes"]), markup=False)
        for name, lab, probs in zip(result["files"], result["labels"], result["probabilities"], strict=True):
            out.print(f"{name}  {lab!s}  " + "  ".join(f"{p:.4f}" for p in probs), markup=False)
        return
    result = server.predict(read_rows(input_))
    if json_:
        _print_json(result)
        return
    if "labels" in result:
        classes = result["classes"]
        out.print("row  label  " + "  ".join(f"p({c})" for c in classes))
        for i, (lab, probs) in enumerate(zip(result["labels"], result["probabilities"], strict=True)):
            out.print(f"{i:<4} {lab!s:<6} " + "  ".join(f"{p:.4f}" for p in probs))
    else:
        for i, v in enumerate(result["predictions"]):
            out.print(f"{i:<4} {v:.6g}")


def main() -> None:
    import atexit
    import gc

    from mlops._process import COLLECTOR_THRESHOLDS

    thresholds = gc.get_threshold()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    # The interpreter's exit ends with full cyclic collections over every object: 1.5-2 s of CPU for ~700k
    # objects (py-spy: gc_collect_main after atexit), to free memory the OS frees anyway. Frozen by the last
    # atexit handler (the first registered), they are out of its reach; the other handlers, buffered output and
    # open files are flushed and closed as before. At exit only: a caller of main() in its own process (tests)
    # keeps its collector as it was.
    global _exit_freeze_registered
    if not _exit_freeze_registered:
        atexit.register(gc.freeze)
        _exit_freeze_registered = True
    try:
        _main()
    finally:
        gc.set_threshold(*thresholds)


_exit_freeze_registered = False


def _main() -> None:
    import click

    try:  # typer 0.2x runs a copy of click of its own (typer._click): its errors are not click's classes
        from typer._click.exceptions import ClickException, UsageError
    except ImportError:  # older typer runs click itself
        from click import ClickException, UsageError
    exits = (click.exceptions.Exit, typer.Exit)
    usage = (click.UsageError, UsageError)
    click_errors = (click.ClickException, ClickException)
    aborts = (click.Abort, typer.Abort, KeyboardInterrupt)

    try:
        rv = app(standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except MlopsError as exc:
        if _Options.debug:
            raise
        err.print(f"[bold red]mlops: {exc.title}[/]")
        err.print(str(exc), markup=False)
        sys.exit(exc.exit_code)
    except exits as exc:
        sys.exit(exc.exit_code)
    except click_errors as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, usage) else exc.exit_code)
    except aborts:
        err.print("aborted")
        sys.exit(130)
