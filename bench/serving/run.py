"""Serving benchmark: our Triton against naive FastAPI servers and an identity floor, with wrk on loopback.

    python bench/serving/run.py                  # about 6 min on 2 cores: 3 interleaved rounds of 6 s per point
    python bench/serving/run.py --perf           # + the CPU split by process under load (needs linux-perf)
    python bench/serving/run.py --tune           # also sweeps Triton's batching / instances / threads

Not a test. See README.md here for what is measured and the results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from mlops.recipe import load  # noqa: E402
from mlops.serving import _repository, _server, publish, serve_version  # noqa: E402
from mlops.serving import ensure_triton, stop_triton  # noqa: E402

IDENTITY = '''import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The floor: hands each request's input back, the least a python-backend model can do."""

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "output", pb_utils.get_input_tensor_by_name(r, "numeric").as_numpy())]) for r in requests]
'''


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def train(tmp: Path):
    """breast_cancer trained by the real code (mlops.training.fit), exported by the real exporter."""
    from mlops.data import read_frame
    from mlops.serving._export import export_onnx
    from mlops.training import fit, load_module, split_frame

    cfg = load(["recipe=breast_cancer"], ROOT)
    frame = read_frame(cfg.data, ROOT)
    split = split_frame(frame, cfg.data, cfg.model.task)
    result = fit(cfg, split, tmp / "training")
    signature = export_onnx(load_module(result.checkpoint), tmp / "model.onnx").to_dict()
    return cfg, result.checkpoint, tmp / "model.onnx", signature, split.test[cfg.data.features]


def body(rows: np.ndarray, path: Path) -> Path:
    path.write_text(json.dumps({"inputs": [{"name": "numeric", "shape": list(rows.shape), "datatype": "FP32",
                                            "data": rows.ravel().tolist()}]}))
    return path


def post(url: str, payload: Path) -> dict:
    req = urllib.request.Request(url, data=payload.read_bytes(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wrk(url: str, payload: Path, conns: int, duration: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{int(duration)}s", "--latency", "-s", str(HERE / "post.lua"),
                          url], capture_output=True, text=True, env={**os.environ, "BENCH_BODY": str(payload)},
                         timeout=duration + 30).stdout
    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms("50%"), "p99": ms("99%"),
            "errors": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors
            else ""}


def stats(url: str, model: str) -> dict:
    s = _server.statistics(url, model)["model_stats"][0]
    i = s["inference_stats"]
    return {"n": int(i["success"]["count"]), "rows": int(s["inference_count"]), "exec": int(s["execution_count"]),
            **{k: int(i[k]["ns"]) for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")}}


def where(before: dict, after: dict) -> str:
    d = {k: after[k] - before[k] for k in after}
    n = max(d["n"], 1)
    return (f"per request: total {d['success'] / n / 1e3:.0f} us = queue {d['queue'] / n / 1e3:.0f} + "
            f"in {d['compute_input'] / n / 1e3:.0f} + infer {d['compute_infer'] / n / 1e3:.0f} + "
            f"out {d['compute_output'] / n / 1e3:.0f}; rows/execute {d['rows'] / max(d['exec'], 1):.1f}")


def med(values: list[float]) -> float:
    return float(np.median(values))


def report(runs: dict, spent: dict, rounds: int) -> None:
    """Medians over the rounds, and ratios taken within each round (median [min-max])."""
    print(f"\nmedians over {rounds} rounds (req/s, p50 / p99 ms):")
    for (label, conns), rs in runs.items():
        unit, k = ("rows/s", 64) if "64-row" in label else ("req/s", 1)
        rps = [r["rps"] * k for r in rs]
        line = (f"  c={conns:<2} {label:<32} {med(rps):8.0f} {unit} [{min(rps):.0f}-{max(rps):.0f}]  "
                f"p50 {med([r['p50'] for r in rs]):6.2f}  p99 {med([r['p99'] for r in rs]):6.2f}  "
                f"errors {sum(r['errors'] for r in rs)}")
        if (label, conns) in spent:
            line += f"\n        [{where({k: 0 for k in spent[label, conns]}, spent[label, conns])}]"
        print(line)

    def ratio(a: str, b: str, conns: int, key: str = "rps") -> str:
        per = [x[key] / y[key] for x, y in zip(runs[(a, conns)], runs[(b, conns)])]
        return f"{med(per):5.2f}x [{min(per):.2f}-{max(per):.2f}]"

    ours, a, b, c = "triton (ours)", "(a) fastapi+torch", "(b) fastapi+onnxruntime", "(c) triton identity"
    print("\nratios within a round, median [min-max]:")
    for conns in (1, 8, 32):
        print(f"  c={conns:<2} ours/(a) {ratio(ours, a, conns)}  ours/(b) {ratio(ours, b, conns)}  "
              f"ours/(c) {ratio(ours, c, conns)}  p50 ours/(b) {ratio(ours, b, conns, 'p50')}")
    off = "ours, monitoring off"
    print(f"  c=32 monitoring off: ours/(b) {ratio(off, b, 32)}  ours/(c) {ratio(off, c, 32)}; "
          f"monitoring on/off {ratio(ours, off, 32)}")
    print("  the floor, what any python-backend model can reach at most: "
          f"c=32 (c)/(a) {ratio(c, a, 32)}  (c)/(b) {ratio(c, b, 32)}")
    print(f"  64-row c=8 rows/s ours/(a) {ratio(ours + ' 64-row', a + ' 64-row', 8)}  "
          f"ours/(b) {ratio(ours + ' 64-row', b + ' 64-row', 8)}")


def cpu_share(url: str, payload: Path, duration: float) -> str:
    """Where the CPU goes under load: `perf record -a` while wrk runs, then the share of each process."""
    if not shutil.which("perf"):
        return "  (perf is not installed: apt-get install linux-perf)"
    data = Path(tempfile.mkdtemp(prefix="bench-perf-")) / "perf.data"
    load = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{int(duration) + 2}s", "-s", str(HERE / "post.lua"), url],
                            stdout=subprocess.DEVNULL, env={**os.environ, "BENCH_BODY": str(payload)})
    try:
        time.sleep(1)
        subprocess.run(["perf", "record", "-a", "-F", "999", "-o", str(data), "--", "sleep", str(duration)],
                       capture_output=True, timeout=duration + 30)
    finally:
        load.wait(duration + 30)
    out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "comm", "--stdio"], capture_output=True,
                         text=True).stdout
    shutil.rmtree(data.parent, ignore_errors=True)
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("#")]
    return "\n".join("  " + ln.strip() for ln in lines[:8])


def start_naive(mode: str, model: Path, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.serving.naive_servers:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning", "--no-access-log"], cwd=ROOT,
                            env={**os.environ, "BENCH_MODE": mode, "BENCH_MODEL": str(model),
                                 "PYTHONPATH": str(ROOT)}, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{mode} server did not start; see {log}")


def write_identity(repo: Path, serving, width: int) -> None:
    d = repo / "identity"
    (d / "1").mkdir(parents=True, exist_ok=True)
    (d / "1" / "model.py").write_text(IDENTITY)
    # The builder of our own config, so the floor batches exactly as the model it is compared with.
    signature = {"inputs": [{"name": "numeric", "datatype": "FP32", "columns": list(range(width))}],
                 "outputs": [{"name": "output", "datatype": "FP32", "dims": [width]}]}
    config = _repository._model_config("identity", signature, serving)
    config.backend = "python"
    config.instance_group.add(count=serving.instance_count, kind="KIND_CPU")
    (d / "config.pbtxt").write_text(_repository.render_config(config))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians over them")
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--perf", action="store_true", help="also split the CPU by process with `perf record -a`")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a serving.* setting for our Triton (and the identity floor), e.g. max_queue_delay_us=0")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    procs: list[subprocess.Popen] = []
    state = tmp / "state"
    try:
        t0 = time.perf_counter()
        cfg, ckpt, onnx, signature, test_rows = train(tmp)
        print(f"trained + exported in {time.perf_counter() - t0:.1f} s; {len(signature['inputs'][0]['columns'])} "
              "numeric columns", flush=True)
        http, grpc, metrics, p_torch, p_ort = free_ports(5)
        settings = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        serving = cfg.serving.model_copy(update={"http_port": http, "grpc_port": grpc, "metrics_port": metrics,
                                                 **settings})
        print("serving:", json.dumps(serving.model_dump(include={"max_batch_size", "preferred_batch_sizes",
              "max_queue_delay_us", "instance_count", "intra_op_threads"})), flush=True)
        cfg = cfg.model_copy(update={"serving": serving})
        ensure_triton(cfg, state)
        name, triton = serving.model_name, f"http://127.0.0.1:{http}"
        publish(cfg, state, 1, onnx, signature)
        serve_version(cfg, state, 1)
        write_identity(state / "triton" / "models", serving, len(signature["inputs"][0]["columns"]))
        _server.load("identity", triton)
        # The same version without traffic capture: ours against the floor is then the wrapper's cost alone.
        _repository.write_version(state / "triton" / "models", f"{name}_nomon", 1, onnx, signature, serving)
        _server.load(f"{name}_nomon", triton)
        procs.append(start_naive("torch", ckpt, p_torch, tmp / "torch.log"))
        procs.append(start_naive("ort", onnx, p_ort, tmp / "ort.log"))
        endpoints = {
            "triton (ours)": f"{triton}/v2/models/{name}/infer",
            "ours, monitoring off": f"{triton}/v2/models/{name}_nomon/infer",
            "(a) fastapi+torch": f"http://127.0.0.1:{p_torch}/v2/models/{name}/infer",
            "(b) fastapi+onnxruntime": f"http://127.0.0.1:{p_ort}/v2/models/{name}/infer",
            "(c) triton identity": f"{triton}/v2/models/identity/infer",
        }
        rows = test_rows.to_numpy(np.float32)
        one, bulk = body(rows[:1], tmp / "one.json"), body(np.resize(rows, (64, rows.shape[1])), tmp / "bulk.json")

        # Correctness: the same rows answer the same on every model endpoint.
        answers = {k: np.array(post(u, bulk)["outputs"][0]["data"]) for k, u in endpoints.items() if "identity" not in k}
        ref = answers["(b) fastapi+onnxruntime"]
        for k, a in answers.items():
            assert np.allclose(a, ref, atol=1e-5), k
        print(f"correctness: the {len(answers)} model endpoints agree to 1e-5 on 64 held-out rows", flush=True)

        labels = list(endpoints)
        runs: dict[tuple[str, int], list[dict]] = {}
        spent: dict[tuple[str, int], dict] = {}
        for rnd in range(args.rounds):
            # Interleaved rounds, each starting at another endpoint: a slow spell of this shared
            # machine then hits every endpoint, and ratios are taken within a round.
            order = labels[rnd % len(labels):] + labels[:rnd % len(labels)]
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
            for conns in (1, 8, 32):
                for label in order:
                    model = "identity" if "identity" in label else f"{name}_nomon" if "off" in label else name
                    before = stats(triton, model) if "triton" in label or "off" in label else None
                    r = wrk(endpoints[label], one, conns, args.duration)
                    runs.setdefault((label, conns), []).append(r)
                    if before:
                        after = stats(triton, model)
                        acc = spent.setdefault((label, conns), {k: 0 for k in after})
                        for k in after:
                            acc[k] += after[k] - before[k]
                    print(f"  1-row  c={conns:<2} {label:<24} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                          f"p99 {r['p99']:6.2f} ms  errors {r['errors']} {r['socket_errors']}", flush=True)
            for label in order:
                if "identity" in label or "off" in label:
                    continue
                r = wrk(endpoints[label], bulk, 8, args.duration)
                runs.setdefault((label + " 64-row", 8), []).append(r)
                print(f"  64-row c=8  {label:<24} {r['rps'] * 64:8.0f} rows/s  p50 {r['p50']:6.2f} ms  "
                      f"p99 {r['p99']:6.2f} ms  errors {r['errors']}", flush=True)
        report(runs, spent, args.rounds)
        if args.perf:
            for label in ("triton (ours)", "(c) triton identity"):
                print(f"\nCPU by process, {label}, 1-row c=32 (perf record -a):")
                print(cpu_share(endpoints[label], one, args.duration))

        if args.tune:
            print("\ntuning (ours, 1-row, c=32 and c=1):")
            for update in ({"instance_count": 2}, {"max_queue_delay_us": 200}, {"max_queue_delay_us": 1000},
                           {"preferred_batch_sizes": [8, 32]}, {"intra_op_threads": 1}):
                tuned = cfg.model_copy(update={"serving": serving.model_copy(update=update)})
                serve_version(tuned, state, 1)  # same version, new config: Triton reloads it
                for c in (1, 32):
                    before = stats(triton, name)
                    r = wrk(endpoints["triton (ours)"], one, c, args.duration)
                    print(f"  {json.dumps(update):<36} c={c:<2} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                          f"p99 {r['p99']:6.2f} ms  [{where(before, stats(triton, name))}]", flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        stop_triton(state, drain_s=0)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
