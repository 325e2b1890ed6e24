"""Serving benchmark: our Triton against what a team would pick instead (BentoML with adaptive batching,
`mlflow models serve`), naive FastAPI servers and an identity floor, with wrk on loopback.

    python bench/serving/run.py                  # about 10 min on 2 cores: 3 interleaved rounds of 6 s per point
    python bench/serving/run.py --ports 8660     # Triton on 8660-8662, the other servers on 8663-8666
    python bench/serving/run.py --skip torch,identity,off   # leave endpoints out (substrings of their labels)
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
import signal
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
        if (a, conns) not in runs or (b, conns) not in runs:
            return "   -  "
        per = [x[key] / y[key] for x, y in zip(runs[(a, conns)], runs[(b, conns)])]
        return f"{med(per):5.2f}x [{min(per):.2f}-{max(per):.2f}]"

    ours, a, b, c = "triton (ours)", "(a) fastapi+torch", "(b) fastapi+onnxruntime", "(c) triton identity"
    bento, mlf = "bentoml (adaptive batching)", "mlflow models serve"
    print("\nwhat a team would pick instead, ratios within a round, median [min-max]:")
    for conns in (1, 8, 32):
        print(f"  c={conns:<2} throughput ours/bentoml {ratio(ours, bento, conns)}  "
              f"ours/mlflow {ratio(ours, mlf, conns)}   p50 ours/bentoml {ratio(ours, bento, conns, 'p50')}  ours/mlflow {ratio(ours, mlf, conns, 'p50')}")
    print("  goal: throughput >= 3x both at c=32; p50 at c=1 no worse than either (ratio <= 1)")
    print("\nratios within a round, median [min-max]:")
    for conns in (1, 8, 32):
        print(f"  c={conns:<2} ours/(a) {ratio(ours, a, conns)}  ours/(b) {ratio(ours, b, conns)}  "
              f"ours/(c) {ratio(ours, c, conns)}  p50 ours/(b) {ratio(ours, b, conns, 'p50')}")
    off = "ours, monitoring off"
    print(f"  c=32 monitoring off: ours/(b) {ratio(off, b, 32)}  ours/(c) {ratio(off, c, 32)}  ours/bentoml "
          f"{ratio(off, bento, 32)}; monitoring on/off {ratio(ours, off, 32)}")
    print("  the floor, what any python-backend model can reach at most: "
          f"c=32 (c)/(a) {ratio(c, a, 32)}  (c)/(b) {ratio(c, b, 32)}  (c)/bentoml {ratio(c, bento, 32)}  "
          f"(c)/mlflow {ratio(c, mlf, 32)}")
    print(f"  64-row c=8 rows/s ours/(a) {ratio(ours + ' 64-row', a + ' 64-row', 8)}  "
          f"ours/(b) {ratio(ours + ' 64-row', b + ' 64-row', 8)}  ours/bentoml "
          f"{ratio(ours + ' 64-row', bento + ' 64-row', 8)}  ours/mlflow {ratio(ours + ' 64-row', mlf + ' 64-row', 8)}")


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
                                 "PYTHONPATH": str(ROOT)}, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return wait_port(proc, port, f"{mode} server", log, timeout=60)


BENTO_VENV = HERE / ".venv-bentoml"  # gitignored; BentoML's dependencies stay out of the framework's venv


def bento_venv() -> Path:
    """BentoML in a venv of its own, made on first use: `pip install bentoml onnxruntime numpy`."""
    bentoml = BENTO_VENV / "bin" / "bentoml"
    if not bentoml.exists():
        print(f"creating {BENTO_VENV} (pip install bentoml onnxruntime numpy; a few minutes, once)", flush=True)
        base = Path(sys.base_prefix) / "bin" / "python3"
        subprocess.run([str(base), "-m", "venv", str(BENTO_VENV)], check=True)
        subprocess.run([str(BENTO_VENV / "bin" / "pip"), "install", "-q", "bentoml", "onnxruntime", "numpy"],
                       check=True)
    return bentoml


def wait_port(proc: subprocess.Popen, port: int, what: str, log: Path, timeout: float = 120) -> subprocess.Popen:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not start; see {log}:\n{log.read_text()[-2000:]}")


def start_bento(model: Path, port: int, log: Path) -> subprocess.Popen:
    """`bentoml serve` of bento_service.py (onnxruntime, adaptive batching), access log off like the others."""
    proc = subprocess.Popen([str(bento_venv()), "serve", "bento_service:OnnxModel", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=HERE, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True,
                            env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
                                 "BENCH_MODEL": str(model), "BENTOML_DO_NOT_TRACK": "true",
                                 "BENTOML_CONFIG_OPTIONS": "services.OnnxModel.logging.access.enabled=false",
                                 # bento_service.py's knobs (batchable, workers, max latency), for diagnosis
                                 **{k: v for k, v in os.environ.items() if k.startswith("BENCH_BENTO_")}})
    return wait_port(proc, port, "bentoml serve", log)


def mlflow_model(onnx_path: Path, rows: np.ndarray, out: Path) -> Path:
    """The same model.onnx as an MLflow model (the `onnx` flavor, whose pyfunc runs onnxruntime), with the
    signature a team would log: what `mlflow models serve` loads."""
    import mlflow.onnx
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    signature = infer_signature({"numeric": rows}, {"probabilities": sess.run(None, {"numeric": rows})[0]})
    mlflow.onnx.save_model(onnx.load(str(onnx_path)), str(out), signature=signature)
    return out


def start_mlflow(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow models serve --env-manager local` (uvicorn, MLflow's default one worker), access log off."""
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir),
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], cwd=model_dir.parent,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "UVICORN_ACCESS_LOG": "false", "MLFLOW_ALLOW_FILE_STORE": "true"})
    return wait_port(proc, port, "mlflow models serve", log)


def bodies(rows: np.ndarray, tmp: Path, kind: str) -> Path:
    """The same rows in each server's own JSON: KServe v2 (Triton, the naive servers), BentoML's
    {"input": ...} and MLflow's {"inputs": {name: ...}}."""
    if kind == "kserve":
        return body(rows, tmp / f"kserve-{len(rows)}.json")
    path = tmp / f"{kind}-{len(rows)}.json"
    data = rows.tolist()
    path.write_text(json.dumps({"input": data} if kind == "bento" else {"inputs": {"numeric": data}}))
    return path


def answer(kind: str, reply: dict | list) -> np.ndarray:
    """The probabilities out of each server's reply."""
    if kind == "kserve":
        return np.array(reply["outputs"][0]["data"], dtype=np.float64).ravel()
    if kind == "mlflow":
        reply = reply["predictions"]
        reply = reply.get("probabilities", reply) if isinstance(reply, dict) else reply
        if isinstance(reply, list) and reply and isinstance(reply[0], dict):
            reply = [r["probabilities"] for r in reply]
    return np.array(reply, dtype=np.float64).ravel()


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
    ap.add_argument("--ports", type=int, default=0, metavar="BASE",
                    help="Triton on BASE..BASE+2, the other servers on BASE+3..BASE+6 (default: free random ports)")
    ap.add_argument("--skip", default="", help="comma-separated substrings of endpoint labels to leave out, "
                    "e.g. torch,identity (ours is always measured)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a serving.* setting for our Triton (and the identity floor), e.g. max_queue_delay_us=0")
    args = ap.parse_args()
    skip = [w for w in args.skip.split(",") if w]
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    procs: list[subprocess.Popen] = []
    state = tmp / "state"
    try:
        if not any(w in "bentoml (adaptive batching)" for w in skip):
            bento_venv()  # before the clock starts: creating it takes minutes, once
        t0 = time.perf_counter()
        cfg, ckpt, onnx, signature, test_rows = train(tmp)
        print(f"trained + exported in {time.perf_counter() - t0:.1f} s; {len(signature['inputs'][0]['columns'])} "
              "numeric columns", flush=True)
        ports = list(range(args.ports, args.ports + 7)) if args.ports else free_ports(7)
        http, grpc, metrics, p_torch, p_ort, p_bento, p_mlflow = ports
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
        rows = test_rows.to_numpy(np.float32)
        # label -> (url, the JSON dialect it speaks)
        endpoints = {
            "triton (ours)": (f"{triton}/v2/models/{name}/infer", "kserve"),
            "ours, monitoring off": (f"{triton}/v2/models/{name}_nomon/infer", "kserve"),
            "bentoml (adaptive batching)": (f"http://127.0.0.1:{p_bento}/predict", "bento"),
            "mlflow models serve": (f"http://127.0.0.1:{p_mlflow}/invocations", "mlflow"),
            "(a) fastapi+torch": (f"http://127.0.0.1:{p_torch}/v2/models/{name}/infer", "kserve"),
            "(b) fastapi+onnxruntime": (f"http://127.0.0.1:{p_ort}/v2/models/{name}/infer", "kserve"),
            "(c) triton identity": (f"{triton}/v2/models/identity/infer", "kserve"),
        }
        endpoints = {k: v for k, v in endpoints.items() if k == "triton (ours)" or not any(w in k for w in skip)}
        starts = {"(a) fastapi+torch": lambda: start_naive("torch", ckpt, p_torch, tmp / "torch.log"),
                  "(b) fastapi+onnxruntime": lambda: start_naive("ort", onnx, p_ort, tmp / "ort.log"),
                  "bentoml (adaptive batching)": lambda: start_bento(onnx, p_bento, tmp / "bentoml.log"),
                  "mlflow models serve": lambda: start_mlflow(mlflow_model(onnx, rows[:8], tmp / "mlflow_model"),
                                                              p_mlflow, tmp / "mlflow.log")}
        for label, start in starts.items():
            if label in endpoints:
                procs.append(start())
        payload = {kind: (bodies(rows[:1], tmp, kind), bodies(np.resize(rows, (64, rows.shape[1])), tmp, kind))
                   for kind in {k for _, k in endpoints.values()}}

        # Correctness: the same rows answer the same on every model endpoint.
        answers = {k: answer(kind, post(u, payload[kind][1])) for k, (u, kind) in endpoints.items()
                   if "identity" not in k}
        ref = answers["triton (ours)"]
        for k, a in answers.items():
            assert a.shape == ref.shape and np.allclose(a, ref, atol=1e-5), (k, a[:4], ref[:4])
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
                    url, kind = endpoints[label]
                    model = "identity" if "identity" in label else f"{name}_nomon" if "off" in label else name
                    before = stats(triton, model) if url.startswith(triton) else None
                    r = wrk(url, payload[kind][0], conns, args.duration)
                    runs.setdefault((label, conns), []).append(r)
                    if before:
                        after = stats(triton, model)
                        acc = spent.setdefault((label, conns), {k: 0 for k in after})
                        for k in after:
                            acc[k] += after[k] - before[k]
                    print(f"  1-row  c={conns:<2} {label:<28} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                          f"p99 {r['p99']:6.2f} ms  errors {r['errors']} {r['socket_errors']}", flush=True)
            for label in order:
                if "identity" in label or "off" in label:
                    continue
                url, kind = endpoints[label]
                r = wrk(url, payload[kind][1], 8, args.duration)
                runs.setdefault((label + " 64-row", 8), []).append(r)
                print(f"  64-row c=8  {label:<28} {r['rps'] * 64:8.0f} rows/s  p50 {r['p50']:6.2f} ms  "
                      f"p99 {r['p99']:6.2f} ms  errors {r['errors']}", flush=True)
        report(runs, spent, args.rounds)
        if args.perf:
            for label in ("triton (ours)", "(c) triton identity", "bentoml (adaptive batching)"):
                if label in endpoints:
                    print(f"\nCPU by process, {label}, 1-row c=32 (perf record -a):")
                    print(cpu_share(endpoints[label][0], payload[endpoints[label][1]][0], args.duration))

        if args.tune:
            print("\ntuning (ours, 1-row, c=32 and c=1):")
            for update in ({"instance_count": 2}, {"max_queue_delay_us": 200}, {"max_queue_delay_us": 1000},
                           {"preferred_batch_sizes": [8, 32]}, {"intra_op_threads": 1}):
                tuned = cfg.model_copy(update={"serving": serving.model_copy(update=update)})
                serve_version(tuned, state, 1)  # same version, new config: Triton reloads it
                for c in (1, 32):
                    before = stats(triton, name)
                    r = wrk(endpoints["triton (ours)"][0], payload["kserve"][0], c, args.duration)
                    print(f"  {json.dumps(update):<36} c={c:<2} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                          f"p99 {r['p99']:6.2f} ms  [{where(before, stats(triton, name))}]", flush=True)
    finally:
        for p in procs:  # each in a session of its own: bentoml and mlflow serve through child processes
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        stop_triton(state, drain_s=0)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
