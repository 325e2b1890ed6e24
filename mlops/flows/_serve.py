"""The project's Prefect runner: serves the Plan's deployments and applies its automations.

`mlops up` (level 1+) starts it as a background service (`python -m mlops.flows._serve <file>`)
and `mlops down` stops it. It reads the Plan compiled from the validated config in <file>, and
applies exactly that Plan: each Deployment with its schedule, each Automation as a
DeploymentEventTrigger of the deployment it runs. Deployments of the recipe that the Plan no
longer has (moving down a level) are deleted with the automations they own. Then it writes
<file>.ready with the Plan's digest and serves until stopped. No scheduler or loop of ours:
Prefect schedules, triggers and runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from mlops.plan import Plan, compile_plan
from mlops.recipe.schema import Config


def recipe_tag(name: str) -> str:
    return f"mlops.recipe:{name}"


async def runner_deployments(plan: Plan, cfg: Config, project: str, state_dir: str) -> list[Any]:
    """The Plan's deployments as Prefect RunnerDeployments, triggers attached."""
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    from mlops.flows._pipeline import data_flow, train_flow

    flows = {"mlops-data": data_flow, "mlops-train": train_flow}
    base = {"config": cfg.model_dump(mode="json"), "project": project, "state_dir": state_dir}
    out = []
    for d in plan.deployments:
        triggers = [DeploymentEventTrigger(name=a.name, expect={a.event}, match={"prefect.resource.id": a.resource},
                                           parameters={**base, **d.parameters, **a.parameters})
                    for a in plan.automations if a.deployment == d.name]
        out.append(await flows[d.flow].ato_deployment(
            name=d.name, interval=d.interval_s, parameters={**base, **d.parameters}, triggers=triggers,
            tags=["mlops", recipe_tag(plan.recipe)], description=f"mlops Plan {plan.digest()}: {' -> '.join(d.steps)}",
            enforce_parameter_schema=False, entrypoint_type=EntrypointType.MODULE_PATH))
    return out


async def remove_stale(client: Any, recipe: str, keep: set[str]) -> list[str]:
    """Delete the recipe's deployments not in `keep`, and the automations they own."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    removed = []
    for dep in await client.read_deployments(deployment_filter=DeploymentFilter(
            tags=DeploymentFilterTags(all_=[recipe_tag(recipe)]))):
        if dep.name not in keep:
            await client.delete_resource_owned_automations(f"prefect.deployment.{dep.id}")
            await client.delete_deployment(dep.id)
            removed.append(dep.name)
    return removed


def remove_all(recipe: str) -> list[str]:
    """Level 0: the recipe has no deployments and no automations."""
    from prefect.client.orchestration import get_client

    async def go() -> list[str]:
        async with get_client() as client:
            return await remove_stale(client, recipe, set())

    return asyncio.run(go())


async def _serve(spec_file: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.runner import Runner

    spec = json.loads(spec_file.read_text())
    cfg = Config.model_validate(spec["config"])
    plan = compile_plan(cfg)
    deployments = await runner_deployments(plan, cfg, spec["project"], spec["state_dir"])
    async with get_client() as client:
        await remove_stale(client, plan.recipe, {d.name for d in plan.deployments})
    runner = Runner(name=f"mlops-{plan.recipe}", limit=1, pause_on_shutdown=True)
    for d in deployments:
        await runner.aadd_deployment(d)
    tmp = spec_file.with_suffix(".ready.tmp")
    tmp.write_text(plan.digest())
    tmp.replace(spec_file.with_suffix(".ready"))
    await runner.start()


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1])))
