"""Benchmark of `mlops up` at 100k, 1M and 10M rows: time per step, peak memory of every process, growth.

    python bench/scale.py [--sizes 100k,1m,10m] [--epochs 3] [--fit-reps 1] [--keep]

See bench/README.md ("bench: scale"). Data: bench/_scale_data.py writes a deterministic Parquet file per size
(10 numeric + 2 categorical columns, a binary target) under bench/.data/ (gitignored), once. Each size runs
`mlops up` in a fresh temporary project with its own ports (Prefect 4650, Triton 8650-8652), samples the
resident memory of all its processes (the CLI, which runs the flow; the Prefect server; Triton and its python
backend stubs; any worker: the CLI's process tree plus every process whose command line names the project or
one of the ports) every 0.2 s, and then `mlops down`. Then bench/_scale_fit.py trains the same split with the
framework's `fit` and with a plain PyTorch loop, side by side in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
import _scale_data as data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MLOPS = str(Path(sys.executable).with_name("mlops"))
FIT = str(Path(__file__).with_name("_scale_fit.py"))
PORTS = ["target.prefect.port=4650", "serving.http_port=8650", "serving.grpc_port=8651", "serving.metrics_port=8652",
         "target.prefect.start_timeout_s=600"]  # a shared, loaded machine can take minutes to start Prefect
PORT_WORDS = ("4650", "8650", "8651", "8652")
SIZES = {"100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}
STEP_LINE = re.compile(r"✓ (\w+)\s+([\d.]+)s")
TIMEOUT_S = 3600


def recipe(path: Path, rows: int, epochs: int) -> str:
    return f"""# @package _global_
name: scale
data:
  source: file
  path: {path}
  target: {data.TARGET}
  numeric: [{', '.join(data.NUMERIC)}]
  categorical: [{', '.join(data.CATEGORICAL)}]
  checks:
    min_rows: 1000
model:
  task: classification
  hidden: [64, 32]
  lr: 0.003
  batch_size: 1024
  max_epochs: {epochs}
  early_stopping:
    patience: {epochs + 1}
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("PREFECT_API_URL", "PREFECT_API_KEY", "MLOPS_PROJECT_DIR", "PREFECT_HOME"):
        env.pop(k, None)
    env["PYTHONPATH"] = str(ROOT)
    return env


class Sampler(threading.Thread):
    """Peak total RSS of a process tree plus the processes that name the project or a port, every `every` s."""

    def __init__(self, root: int, project: Path, every: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.words, self.every = root, (str(project), *PORT_WORDS), every
        self.peak, self.peak_by = 0, {}
        self.samples: list[tuple[float, int, int]] = []  # (time, RSS of all processes, RSS of the CLI)
        self.cpu: dict[int, float] = {}  # CPU seconds of each process, at its last sample
        self.stop = threading.Event()

    def _ours(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        roots = []
        try:
            roots.append(psutil.Process(self.root))
        except psutil.NoSuchProcess:
            pass
        me = os.getpid()
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid != me and any(w in cmd for w in self.words):
                roots.append(p)
        for r in roots:
            try:
                for p in [r, *r.children(recursive=True)]:
                    found[p.pid] = p
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def run(self) -> None:
        while not self.stop.is_set():
            total, by, cli = 0, {}, 0
            for p in self._ours():
                try:
                    rss = p.memory_info().rss
                    name = p.name()
                    cpu = p.cpu_times()
                except psutil.Error:
                    continue
                self.cpu[p.pid] = cpu.user + cpu.system
                total += rss
                by[name] = by.get(name, 0) + rss
                if p.pid == self.root:
                    cli = rss
            self.samples.append((time.perf_counter(), total, cli))
            if total > self.peak:
                self.peak, self.peak_by = total, by
            self.stop.wait(self.every)


def run_up(project: Path, env: dict[str, str]) -> dict:
    cmd = [MLOPS, "-C", str(project), "up", "recipe=scale", *PORTS]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, project)
    sampler.start()
    ends: list[tuple[str, float]] = []  # each step's line as it arrives: the step ended then

    def read_err(lines: list[str]) -> None:
        for line in proc.stderr:
            lines.append(line)
            if m := STEP_LINE.search(line):
                ends.append((m[1], time.perf_counter()))

    err_lines: list[str] = []
    reader = threading.Thread(target=read_err, args=(err_lines,), daemon=True)
    reader.start()
    try:
        out = proc.stdout.read()
        proc.wait(timeout=TIMEOUT_S)
        reader.join()
    finally:
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    err = "".join(err_lines)
    if proc.returncode != 0:
        sys.stderr.write(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}\n{err[-6000:]}\n")
        raise SystemExit(1)
    steps = {m[1]: float(m[2]) for m in STEP_LINE.finditer(err)}
    # Each step's peak (all processes, and the CLI's own), from the samples between the step line before it and
    # its own (the first step's span starts with `up`: imports, Prefect's start; "after" follows the last step).
    step_peak: dict[str, tuple[int, int]] = {}
    bounds = [*ends, ("after", float("inf"))]
    for (_, a), (name, b) in zip([("", t0), *bounds], bounds):
        inside = [(tot, cli) for t, tot, cli in sampler.samples if a < t <= b]
        if inside:
            step_peak[name] = (max(x[0] for x in inside), max(x[1] for x in inside))
    return {"wall": wall, "step_peak": step_peak, "steps": steps, "peak_rss": sampler.peak,
            "cpu": sum(sampler.cpu.values()),
            "peak_by": {k: v for k, v in sorted(sampler.peak_by.items(), key=lambda kv: -kv[1])}}


def run_fit(project: Path, env: dict[str, str], reps: int, textbook: bool) -> dict:
    p = subprocess.run([sys.executable, FIT, str(project), str(reps), str(int(textbook)), "recipe=scale"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    if p.returncode != 0:
        sys.stderr.write(f"FAILED fit baseline:\n{p.stderr[-6000:]}\n")
        raise SystemExit(1)
    return json.loads(p.stdout.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100k,1m,10m", help="comma-separated, of 100k, 1m, 10m (default all)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--fit-reps", type=int, default=1, help="repetitions of fit vs plain loop (min is kept)")
    ap.add_argument("--no-fit", action="store_true", help="skip the fit vs plain-loop comparison")
    ap.add_argument("--textbook", action="store_true", help="also time a tutorial's loop (stock DataLoader, "
                    "torch's default threads): slow")
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).with_name(".data"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary projects (services are stopped)")
    args = ap.parse_args()
    try:
        sizes = [SIZES[s.strip().lower()] for s in args.sizes.split(",")]
    except KeyError as e:
        ap.error(f"unknown size {e}; choose from {', '.join(SIZES)}")
    env = _env()
    results = []
    t_all = time.perf_counter()
    for rows in sizes:
        path = data.make(rows, args.data_dir)
        arrow = data.arrow_bytes(path)
        project = Path(tempfile.mkdtemp(prefix=f"mlops-scale-{rows}-"))
        (project / "recipes").mkdir()
        (project / "recipes" / "scale.yaml").write_text(recipe(path.resolve(), rows, args.epochs))
        print(f"{rows:>10,} rows  {path} (Arrow {mb(arrow)})  project {project}", flush=True)
        try:
            r = run_up(project, env)
        finally:
            subprocess.run([MLOPS, "-C", str(project), "down", "recipe=scale", *PORTS], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
            if not args.keep and sys.exc_info()[0] is not None:
                shutil.rmtree(project, ignore_errors=True)
        r.update(rows=rows, arrow=arrow)
        steps = " ".join(f"{k}={v:.1f}" for k, v in r["steps"].items())
        print(f"  up {r['wall']:.1f}s ({r['cpu']:.0f} CPU s, all processes) [{steps}]  peak RSS {mb(r['peak_rss'])} "
              f"({r['peak_rss'] / arrow:.1f}x Arrow): " + ", ".join(f"{k} {mb(v)}" for k, v in r["peak_by"].items()),
              flush=True)
        print("  peak RSS per step, all processes / the CLI: " + ", ".join(
            f"{k} {mb(a)} / {mb(c)}" for k, (a, c) in r["step_peak"].items()), flush=True)
        if not args.no_fit:
            try:
                r["fit"] = run_fit(project, env, args.fit_reps, args.textbook)
            finally:
                if not args.keep:
                    shutil.rmtree(project, ignore_errors=True)
            f = r["fit"]
            book = f", tutorial loop {f['textbook_s_per_epoch']:.2f} s/epoch" if "textbook_s_per_epoch" in f else ""
            print(f"  fit {f['fit_s_per_epoch']:.2f} CPU s/epoch vs plain loop {f['plain_s_per_epoch']:.2f} CPU s/epoch "
                  f"({f['threads']} thread(s)): {f['ratio']:.2f}x{book}", flush=True)
        if not args.keep:
            shutil.rmtree(project, ignore_errors=True)
        results.append(r)

    print(f"\nmlops up at scale, {date.today()}, {os.cpu_count()} cores, {args.epochs} epochs, batch 1024")
    steps = sorted({s for r in results for s in r["steps"]}, key=lambda s: list(results[0]["steps"]).index(s)
                   if s in results[0]["steps"] else 99)
    head = f"{'rows':>11} {'up s':>7} {'CPU s':>7} " + " ".join(f"{s:>8}" for s in steps) + \
        f" {'Arrow':>9} {'peak RSS':>9} {'RSS/Arrow':>9} {'valid r/s':>10} {'fit/plain':>9}"
    print(head)
    for r in results:
        v = r["steps"].get("validate")
        line = f"{r['rows']:>11,} {r['wall']:>7.1f} {r['cpu']:>7.0f} " + " ".join(f"{r['steps'].get(s, float('nan')):>8.1f}"
                                                              for s in steps)
        line += f" {mb(r['arrow']):>9} {mb(r['peak_rss']):>9} {r['peak_rss'] / r['arrow']:>9.1f}"
        line += f" {r['rows'] / v if v else float('nan'):>10,.0f}"
        line += f" {r['fit']['ratio']:>9.2f}" if "fit" in r else f" {'-':>9}"
        print(line)
    for a, b in zip(results, results[1:]):
        k = b["rows"] / a["rows"]
        grow = {s: b["steps"][s] / a["steps"][s] for s in steps if a["steps"].get(s) and b["steps"].get(s)}
        print(f"growth {a['rows']:,} -> {b['rows']:,} ({k:.0f}x rows): up {b['wall'] / a['wall']:.1f}x "
              f"(CPU {b['cpu'] / a['cpu']:.1f}x), "
              + ", ".join(f"{s} {g:.1f}x" for s, g in grow.items()) + f", peak RSS {b['peak_rss'] / a['peak_rss']:.1f}x")
    print(f"command: {sys.executable} bench/scale.py --sizes {args.sizes} --epochs {args.epochs}   "
          f"(total {time.perf_counter() - t_all:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
