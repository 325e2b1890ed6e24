"""Benchmark of planning many recipes: `load()` + `compile_plan()` one by one against `load_many()`.

    python bench/plan.py [--recipes N] [--sample K] [--seed S] [--keep]

See bench/README.md. Writes N (default 1000) varied recipes into a temporary project (a copy of `recipes/`,
data included): names, hidden layers, learning rates, batch sizes; about half pick a maturity level and a
third a stack through their own `defaults:` list, some a tracking flavor or compute option, some set keys
that interpolate `${name}`. Times the one-by-one path on a random sample of K (default 60) and extrapolates,
times the batch path on all N, and checks that both give the same Plan JSON and config on the whole sample
(exits 1 if not).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mlops.errors import ConfigError
from mlops.plan import compile_plan
from mlops.recipe import load, load_many
from mlops.recipe._batch import load_many_with_fallbacks
from mlops.recipe.keys import config_hash

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 10.0
STACKS = ("k8s", "reasonable-scale")


def recipe(i: int, rng: random.Random, bases: dict[str, dict]) -> dict:
    """The i-th generated recipe."""
    body = yaml.safe_load(yaml.safe_dump(bases[rng.choice(sorted(bases))]))
    body["name"] = f"gen_{i:04d}"
    body["description"] = f"generated recipe {i}"
    body["model"].update(
        hidden=[rng.choice([8, 16, 32, 64, 128]) for _ in range(rng.randint(1, 3))],
        lr=round(10 ** rng.uniform(-4, -1.5), 6),
        batch_size=rng.choice([16, 32, 64, 128, 256]),
        max_epochs=rng.randint(5, 60),
    )
    defaults = []
    maturity = "0"
    if rng.random() < 0.5:
        maturity = str(rng.randint(0, 4))
        defaults.append({"override /maturity": maturity})
    if rng.random() < 0.35:
        defaults.append({"override /stack": rng.choice(STACKS)})
    if rng.random() < 0.1:
        defaults.append({"override /compute": "auto"})
    if rng.random() < 0.1:
        defaults.append({"override /tracking": "neptune"})
    if rng.random() < 0.2:
        body["serving"] = {"model_name": "${name}_svc", "max_queue_delay_us": rng.choice([100, 500, 2000])}
    if maturity == "3" and rng.random() < 0.5:
        body["maturity"] = {"gate": {"min_improvement": 0.01, "floors": {"test_acc": 0.8}}}
    return {"defaults": defaults, **body} if defaults else body


def generate(project: Path, n: int, rng: random.Random) -> tuple[list[str], int]:
    """Write the recipes; their names and how many distinct `defaults:` lists (sets of group choices) they have."""
    shutil.copytree(ROOT / "recipes", project / "recipes")
    bases = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "recipes").glob("*.yaml"))}
    names, choices = [], set()
    for i in range(n):
        body = recipe(i, rng, bases)
        text = "# @package _global_\n" + yaml.safe_dump(body, sort_keys=False)
        (project / "recipes" / f"{body['name']}.yaml").write_text(text)
        names.append(body["name"])
        choices.add(tuple(sorted(next(iter(d.items())) for d in body.get("defaults", []))))
    return names, len(choices)


def one_by_one(project: Path, name: str) -> tuple[dict, str]:
    """The Plan JSON and config hash of one recipe, the way `mlops plan recipe=<name>` gets them."""
    cfg = load([f"recipe={name}"], project, check_data=False)
    return compile_plan(cfg).to_json(), config_hash(cfg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", type=int, default=1000, help="how many recipes to generate and plan (default 1000)")
    ap.add_argument("--sample", type=int, default=60, help="recipes timed one by one and compared (default 60, ≥50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    project = Path(tempfile.mkdtemp(prefix="mlops-bench-plan-"))
    try:
        names, n_choices = generate(project, args.recipes, rng)
        print(f"project {project}: {len(names)} recipes, {n_choices} distinct sets of group choices", flush=True)
        one_by_one(project, names[0])  # warm-up: imports, Hydra's plugin scan; not timed
        load_many(names[:1], project)

        sample = rng.sample(names, min(args.sample, len(names)))
        print(f"one by one: load() + compile_plan() on {len(sample)} recipes", flush=True)
        reference, times = {}, []
        for k, name in enumerate(sample, 1):
            t0 = time.perf_counter()
            reference[name] = one_by_one(project, name)
            times.append(time.perf_counter() - t0)
            if k % 10 == 0 or k == len(sample):
                print(f"  {k}/{len(sample)}  mean {statistics.mean(times) * 1000:.0f} ms/recipe", flush=True)
        per_one = statistics.mean(times)

        print(f"batch: load_many() + compile_plan() on all {len(names)} recipes", flush=True)
        t0 = time.perf_counter()
        configs, through_load = load_many_with_fallbacks(names, project)
        t_loaded = time.perf_counter() - t0
        plans = {n: compile_plan(c) for n, c in configs.items() if not isinstance(c, ConfigError)}
        wall = time.perf_counter() - t0
        failed = [n for n, c in configs.items() if isinstance(c, ConfigError)]
        if failed:
            raise SystemExit(f"FAILED: {len(failed)} generated recipes are invalid, e.g. {failed[0]}:\n"
                             f"{configs[failed[0]]}")

        wrong = [n for n in sample if (plans[n].to_json(), config_hash(configs[n])) != reference[n]]
        if wrong:
            raise SystemExit(f"FAILED: the batch Plan differs from load()'s for {len(wrong)} of {len(sample)} "
                             f"sampled recipes: {', '.join(wrong[:5])}")
        per_batch = wall / len(names)
        print(f"\ncorrect: same Plan JSON and config hash as load() for all {len(sample)} sampled recipes")
        print(f"one by one  {per_one * 1000:8.1f} ms/recipe   -> {per_one * len(names):7.1f} s for {len(names)} "
              f"(extrapolated from {len(sample)})")
        print(f"batch       {per_batch * 1000:8.2f} ms/recipe   -> {wall:7.2f} s for {len(names)} (measured; "
              f"load_many {t_loaded:.2f} s, compile_plan {wall - t_loaded:.2f} s; {len(through_load)} through load())")
        print(f"batch/one-by-one per recipe: {per_batch / per_one:.4f} ({per_one / per_batch:.0f}x faster)")
        print(f"goal ≤{GOAL_S:g} s for {len(names)}: {'met' if wall <= GOAL_S else 'not met'} ({wall:.2f} s)")
    finally:
        if args.keep:
            print(f"kept {project}")
        else:
            shutil.rmtree(project, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
