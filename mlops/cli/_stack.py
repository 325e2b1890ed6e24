"""`mlops stack`: the stack templates, what each provisions per maturity level, and their parameters."""

from __future__ import annotations

from typing import Annotated

import typer

from mlops.cli._app import JsonFlag, _load, _print_json, out

stack_app = typer.Typer(
    help="Stack templates (stacks/, installed `mlops.stacks` packages, the project's stacks/): what each "
    "provisions at each maturity level, and its parameters.\n\nExample: mlops stack show reasonable-scale",
    no_args_is_help=True, rich_markup_mode=None,
)


def _stack_names() -> list[str]:
    from mlops.cli._app import _project
    from mlops.recipe._sources import Sources

    names: set[str] = set()
    for folder in Sources.discover(_project()).stack_dirs:
        names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def _levels(name: str, overrides: list[str]) -> list[dict]:
    from mlops.targets._aws import plan_at, planned_resources

    cfg = _load([f"stack={name}", *overrides], check_data=False, needs_recipe=False)
    rows = []
    for level in range(5):
        plan = plan_at(cfg, level)
        resources = [] if cfg.stack.pulumi_project is None else planned_resources(cfg, plan=plan)
        rows.append({"level": level, "components": [c.name for c in plan.infrastructure],
                     "resources": [{"type": r["type"], "name": r["name"]} for r in resources if r["custom"]]})
    return rows


@stack_app.command("list")
def list_(json_: JsonFlag = False) -> None:
    """Every stack this project can use, with its Pulumi project.

    Example: mlops stack list --json
    """
    rows = []
    for name in _stack_names():
        cfg = _load([f"stack={name}"], check_data=False, needs_recipe=False)
        rows.append({"name": name, "description": cfg.stack.description, "pulumi_project": cfg.stack.pulumi_project})
    if json_:
        _print_json(rows)
        return
    for r in rows:
        out.print(f"{r['name']:<18} {r['pulumi_project'] or '-':<18} {r['description']}", markup=False)


@stack_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A stack name from `mlops stack list`.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Hydra overrides, e.g. stack.parameters.serving.max_capacity=8.",
                                                          show_default=False)] = None,
    json_: JsonFlag = False,
    pulumi_config: Annotated[bool, typer.Option("--pulumi-config", help="Print the `mlops:spec` config for a "
                                                "standalone `pulumi up` in infra/<project>/ (the recipe's level).")] = False,
) -> None:
    """A stack's components and flavors, its parameters, and the resources it provisions at each level
    (computed offline with Pulumi's mocks).

    Example: mlops stack show reasonable-scale stack.parameters.serving.mode=sagemaker
    """
    import yaml

    cfg = _load([f"stack={name}", *(overrides or [])], check_data=False)
    if pulumi_config:
        from mlops.infra.programs import program_for
        from mlops.targets._aws import infra_spec

        spec = infra_spec(cfg)
        program_for(spec.program)  # a spec naming no program would only fail later, in `pulumi up`
        out.print(yaml.safe_dump({"config": {"mlops:spec": spec.to_json()}}, sort_keys=False), markup=False)
        return
    levels = _levels(name, overrides or [])
    data = {"name": cfg.stack.name, "description": cfg.stack.description, "pulumi_project": cfg.stack.pulumi_project,
            "backend": cfg.stack.backend, "components": {k: v.model_dump(exclude_none=True)
                                                        for k, v in cfg.stack.components.items()},
            "parameters": cfg.stack.parameters.model_dump(mode="json"), "levels": levels}
    if json_:
        _print_json(data)
        return
    out.print(f"[bold]{data['name']}[/]: {data['description']}")
    out.print(f"pulumi project: {data['pulumi_project'] or '(none: nothing to provision)'}")
    for comp, flavors in data["components"].items():
        out.print(f"  {comp:<13} " + "  ".join(f"{t}={f}" for t, f in flavors.items()), markup=False)
    if data["pulumi_project"]:
        prev: set[tuple[str, str]] = set()
        for lv in levels:
            now = {(r["type"], r["name"]) for r in lv["resources"]}
            out.print(f"[bold]level {lv['level']}[/]: {', '.join(lv['components'])} "
                      f"({len(now)} resources, +{len(now - prev)})")
            for t, n in sorted(now - prev):
                out.print(f"  + {t:<70} {n}", markup=False)
            prev = now
        out.print("[bold]parameters[/] (override as stack.parameters.<key>=...):")
        out.print(yaml.safe_dump(data["parameters"], sort_keys=False), markup=False)
