"""Benchmark of `mlops up`: cold, warm, and the Prefect flow against the same work as a plain script.

    python bench/up.py [--reps N] [--keep]

See bench/README.md. Uses its own ports (Prefect 4460, Triton 8460-8462) and a temporary project,
stops its services (`mlops down`) and removes the project at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLOPS = str(Path(sys.executable).with_name("mlops"))
SCRIPT = str(Path(__file__).with_name("_script.py"))
# Other ports with BENCH_PORTS="PREFECT,TRITON_HTTP" (grpc and metrics follow http), e.g. when benches run side by side.
_PP, _TP = (int(x) for x in os.environ.get("BENCH_PORTS", "4460,8460").split(","))
PORTS = [f"target.prefect.port={_PP}", f"serving.http_port={_TP}", f"serving.grpc_port={_TP + 1}",
         f"serving.metrics_port={_TP + 2}"]
RECIPE = ["recipe=breast_cancer"]
TIMEOUT_S = 300
STEP_LINE = re.compile(r"✓ (\w+)\s+([\d.]+)s( \(cached\))?")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("PREFECT_API_URL", "PREFECT_API_KEY", "MLOPS_PROJECT_DIR", "PREFECT_HOME"):
        env.pop(k, None)
    return env


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}\n")
        raise SystemExit(1)
    return wall, p.stdout, p.stderr


def flow_steps(stderr: str) -> dict[str, float]:
    """The per-task seconds `mlops up` prints (prefect/triton lines carry no time)."""
    return {m[1]: float(m[2]) for m in STEP_LINE.finditer(stderr)}


def up(project: Path, env: dict[str, str], *extra: str) -> tuple[float, str]:
    wall, _, err = run([MLOPS, "-C", str(project), "up", *RECIPE, *extra, *PORTS], env)
    return wall, err


def fmt_steps(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in d.items() if isinstance(v, float))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of warm and of flow/script (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project (services are still stopped)")
    args = ap.parse_args()

    env = _env()
    project = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    shutil.copytree(ROOT / "recipes", project / "recipes")
    print(f"project {project}", flush=True)
    t_all = time.perf_counter()
    try:
        # 1. cold: nothing running, empty state
        cold, err = up(project, env)
        if "new version" not in err:
            raise SystemExit(f"cold up did not register a new version:\n{err}")
        print(f"cold   {cold:6.2f}s  [{fmt_steps(flow_steps(err))}]", flush=True)

        # 2. warm: same project, nothing changed
        warm = []
        for _ in range(args.reps):
            w, err = up(project, env)
            steps = flow_steps(err)
            # Either the "up to date" no-op, or (with --rerun) a flow whose train step came from Prefect's cache.
            if "nothing retrained" not in err or not ("up to date" in err or "(cached)" in err):
                raise SystemExit(f"warm up retrained:\n{err}")
            warm.append(w)
            print(f"warm   {w:6.2f}s  [{fmt_steps(steps)}]", flush=True)

        # 3. flow vs plain script, both subprocesses including imports; a new seed = a new training key,
        #    so both retrain; the services stay up. Alternating order.
        flows, scripts, flow_after, script_after = [], [], [], []
        flow_epochs: dict[str, int] = {}
        script_epochs: dict[str, int] = {}
        for i in range(args.reps):
            seed = f"seed={1000 + i}"

            def do_flow() -> None:
                w, err = up(project, env, seed)
                if "new version" not in err:
                    raise SystemExit(f"flow with {seed} did not retrain:\n{err}")
                flows.append(w)
                lineages = (project / ".mlops" / "registry" / "breast_cancer" / "versions").glob("*/lineage.json")
                flow_epochs[seed] = max((json.loads(p.read_text()) for p in lineages), key=lambda d: d["version"])["epochs"]
                m = re.search(r"up in ([\d.]+)s", err)
                flow_after.append(float(m[1]) if m else float("nan"))
                print(f"flow   {w:6.2f}s  [{fmt_steps(flow_steps(err))}]", flush=True)

            def do_script() -> None:
                w, out, _ = run([sys.executable, SCRIPT, str(project), *RECIPE, seed, *PORTS], env)
                steps = json.loads(out.strip().splitlines()[-1])
                scripts.append(w)
                script_epochs[seed] = steps["epochs"]
                script_after.append(steps["after_imports"])
                print(f"script {w:6.2f}s  [{fmt_steps(steps)}]", flush=True)

            for f in ((do_flow, do_script) if i % 2 == 0 else (do_script, do_flow)):
                f()
            if flow_epochs[seed] != script_epochs[seed]:
                raise SystemExit(f"{seed}: the flow trained {flow_epochs[seed]} epochs, the script "
                                 f"{script_epochs[seed]}: not the same fit")
    finally:
        try:
            run([MLOPS, "-C", str(project), "down", *RECIPE, *PORTS], env)
        finally:
            if not args.keep:
                shutil.rmtree(project, ignore_errors=True)

    med = statistics.median
    rows = [
        ("cold up", cold, "1 run"),
        ("warm up", med(warm), " ".join(f"{x:.2f}" for x in warm)),
        ("warm/cold", med(warm) / cold, "goal <= 0.10"),
        ("flow (mlops up, retrain)", med(flows), " ".join(f"{x:.2f}" for x in flows)),
        ("script (same work, no Prefect)", med(scripts), " ".join(f"{x:.2f}" for x in scripts)),
        ("flow/script", med(flows) / med(scripts), "goal <= 1.20"),
    ]
    print()
    print(f"mlops up benchmark, {date.today()}, {os.cpu_count()} cores; "
          "wall time of subprocesses incl. interpreter start and imports; medians of "
          f"{args.reps}")
    print(f"{'measure':<32} {'median':>8}  runs")
    for name, v, note in rows:
        unit = "" if "/" in name else "s"
        print(f"{name:<32} {v:>7.2f}{unit or ' '}  {note}")
    print(f"(same fits: epochs per seed {flow_epochs} in both)")
    print(f"(after imports: flow 'up in' {med(flow_after):.2f}s, script {med(script_after):.2f}s)")
    print(f"command: {sys.executable} bench/up.py --reps {args.reps}   (total {time.perf_counter() - t_all:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
