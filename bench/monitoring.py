"""Monitoring benchmark: what profiling served traffic costs Triton, and how fast whylogs profiles.

    python bench/monitoring.py                   # ~4 min on 2 cores; --duration S per wrk run (default 6)
    python bench/monitoring.py --duration 2 --pairs 1          # a quick look
    python bench/monitoring.py --only profiling                # only the whylogs rows/s part

Not a test. One Triton serves the same breast_cancer ONNX under three model names, each deployed the way
`mlops` deploys it (`publish` + `serve_version`, which writes the `mlops.*` config.pbtxt parameters):

    bc_mon_off   monitoring.flavor=none                        (no capture)
    bc_mon_on    monitoring.flavor=whylogs, sample_rate=0.1    (the default)
    bc_mon_all   monitoring.flavor=whylogs, sample_rate=1.0    (every served row profiled)

wrk posts 1-row KServe-v2 JSON requests at 8 and 32 connections, on/off interleaved (order alternating),
`--pairs` rounds each; median req/s and p50/p99 per model, and the ratio on/off (goal >= 0.97). Then the
models are unloaded (their traffic profilers close and write the open window) and the window files'
row counts are checked against sample_rate x rows served. Last, whylogs rows/s off the request path:
`WhylogsProfiler.profile` and `TrafficProfiler` end to end, for 10 and 30 numeric columns.
See bench/README.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving.run import body, free_ports, post, stats, train, wrk  # noqa: E402
from mlops.monitoring import TrafficProfiler, WhylogsProfiler, make_profiler, windows  # noqa: E402
from mlops.serving import _repository, _server, ensure_triton, publish, serve_version, stop_triton  # noqa: E402

GOAL = 0.97
# label -> (model name, monitoring update)
VARIANTS = {
    "off": ("bc_mon_off", {"flavor": "none"}),
    "on": ("bc_mon_on", {"flavor": "whylogs", "sample_rate": 0.1}),
    "all": ("bc_mon_all", {"flavor": "whylogs", "sample_rate": 1.0}),
}
DESCR = {"off": "monitoring off", "on": "whylogs, sample 0.1", "all": "whylogs, sample 1.0"}


def variant_cfg(cfg, serving, name: str, monitoring: dict):
    # cfg.name names the monitoring dir (<state>/monitoring/<cfg.name>), serving.model_name the Triton model:
    # both distinct per variant, so the windows of two models never mix.
    return cfg.model_copy(update={"name": name, "serving": serving.model_copy(update={"model_name": name}),
                                  "monitoring": cfg.monitoring.model_copy(update=monitoring)})


def window_rows(windows_dir: Path) -> tuple[int, int]:
    """(window files, rows in them) under one version's windows dir."""
    prof = make_profiler("whylogs")
    found = windows(windows_dir)
    return len(found), sum(prof.rows(prof.read(p)) for _start, p in found)


def wait_unloaded(url: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(m["name"] == name and m["state"] == "READY" for m in _server.served_models(url)):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} still READY {timeout} s after the unload")


def serving_bench(args, tmp: Path) -> dict:
    t0 = time.perf_counter()
    cfg, _ckpt, onnx, signature, test_rows = train(tmp)
    width = len(signature["inputs"][0]["columns"])
    print(f"trained + exported in {time.perf_counter() - t0:.1f} s; {width} numeric columns", flush=True)
    state = tmp / "state"
    http, grpc, metrics = free_ports(3)
    serving = cfg.serving.model_copy(update={"http_port": http, "grpc_port": grpc, "metrics_port": metrics})
    triton = f"http://127.0.0.1:{http}"
    print("serving:", json.dumps(serving.model_dump(include={"max_batch_size", "preferred_batch_sizes",
          "max_queue_delay_us", "instance_count", "intra_op_threads"})), "window_s", cfg.monitoring.window_s,
          flush=True)
    cfgs = {k: variant_cfg(cfg, serving, name, mon) for k, (name, mon) in VARIANTS.items()}
    out: dict = {"runs": {}, "stats": {}, "windows": {}}
    try:
        ensure_triton(cfgs["off"], state)
        for k, c in cfgs.items():
            publish(c, state, 1, onnx, signature)
            serve_version(c, state, 1)
            config = _repository.parse_config(
                (state / "triton" / "models" / c.serving.model_name / "config.pbtxt").read_text())
            params = [f"{k}: {v.string_value}" for k, v in sorted(config.parameters.items()) if k.startswith("mlops.")]
            print(f"  {c.serving.model_name:<11} ({DESCR[k]}): {len(params)} mlops.* parameters"
                  + "".join(f"\n      {p}" for p in params), flush=True)

        rows = test_rows.to_numpy(np.float32)
        one, bulk = body(rows[:1], tmp / "one.json"), body(np.resize(rows, (64, width)), tmp / "bulk.json")
        urls = {k: f"{triton}/v2/models/{c.serving.model_name}/infer" for k, c in cfgs.items()}
        answers = {k: np.array(post(u, bulk)["outputs"][0]["data"]) for k, u in urls.items()}
        assert all(np.allclose(a, answers["off"], atol=1e-6) for a in answers.values())
        print("correctness: the three models agree on 64 held-out rows", flush=True)

        for conns in args.conns:
            for i in range(args.pairs):
                # on/off adjacent, their order alternating; the sample-1.0 model last, then a pause so its
                # profiling backlog (if any) does not spill into the next pair.
                for k in (["on", "off"] if i % 2 == 0 else ["off", "on"]) + ["all"]:
                    name = cfgs[k].serving.model_name
                    before = stats(triton, name)
                    r = wrk(urls[k], one, conns, args.duration)
                    after = stats(triton, name)
                    d = {f: after[f] - before[f] for f in after}
                    r["exec_us"] = d["compute_infer"] / max(d["n"], 1) / 1e3
                    r["rows_per_exec"] = d["rows"] / max(d["exec"], 1)
                    out["runs"].setdefault((k, conns), []).append(r)
                    print(f"  c={conns:<2} pair {i + 1} {k:<3} ({DESCR[k]:<19}) {r['rps']:7.0f} req/s  "
                          f"p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  execute {r['exec_us']:5.0f} us/req  "
                          f"rows/execute {r['rows_per_exec']:4.1f}  errors {r['errors']} {r['socket_errors']}",
                          flush=True)
                    if k == "all":
                        time.sleep(2)

        # Did monitoring run? Unload: each model's finalize() closes its TrafficProfiler, which profiles what is
        # queued and writes the open window. Then count rows in the windows against what Triton served.
        for k, c in cfgs.items():
            name = c.serving.model_name
            out["stats"][k] = stats(triton, name)
            _server.unload(name, triton)
            wait_unloaded(triton, name)
        for k, c in cfgs.items():
            wdir = state / "monitoring" / c.name / "1" / "windows"
            rate = c.monitoring.sample_rate if c.monitoring.flavor != "none" else 0.0
            served = out["stats"][k]["rows"]
            deadline = time.monotonic() + 30
            n_files, got = window_rows(wdir)
            while rate and got < 0.9 * rate * served and time.monotonic() < deadline:  # finalize may lag the unload
                time.sleep(0.5)
                n_files, got = window_rows(wdir)
            out["windows"][k] = {"served": served, "rate": rate, "expected": rate * served, "files": n_files,
                                 "rows": got, "dir_exists": (state / "monitoring" / c.name).exists()}
    finally:
        stop_triton(state, drain_s=0)
    return out


def profiling_bench(args) -> dict:
    prof = WhylogsProfiler()
    rng = np.random.default_rng(0)
    res: dict = {}
    prof.profile(pd.DataFrame(rng.normal(size=(1000, 10)), columns=[f"c{j}" for j in range(10)]))  # warm-up
    for ncols in (10, 30):
        frame = pd.DataFrame(rng.normal(size=(args.rows, ncols)).astype(np.float32),
                             columns=[f"c{j}" for j in range(ncols)])
        # (a) one profile() call over the whole frame; (b) 1024-row chunks, about what the traffic profiler's
        # thread hands whylogs per call (it drains up to 64 queued batches at a time), merged.
        t = time.perf_counter()
        p = prof.profile(frame)
        res[(ncols, "profile, one call")] = args.rows / (time.perf_counter() - t)
        assert prof.rows(p) == args.rows
        t = time.perf_counter()
        acc = None
        for s in range(0, args.rows, 1024):
            q = prof.profile(frame.iloc[s:s + 1024])
            acc = q if acc is None else prof.merge(acc, q)
        res[(ncols, "profile, 1024-row chunks + merge")] = args.rows / (time.perf_counter() - t)
        assert prof.rows(acc) == args.rows
        # (c) TrafficProfiler end to end: submit() batches as the backend would (sample_rate 1.0), close(), read
        # the windows back. Submission is paced so the bounded queue never drops (checked).
        for batch in (16, 256):
            parts = [frame.iloc[s:s + batch] for s in range(0, args.rows, batch)]
            with tempfile.TemporaryDirectory(prefix="bench-traffic-") as d:
                tp = TrafficProfiler(prof, Path(d), sample_rate=1.0, window_s=3600)
                t = time.perf_counter()
                for part in parts:
                    while tp._queue.qsize() > 768:
                        time.sleep(0.0005)
                    tp.submit(part)
                tp.close(timeout=300)
                el = time.perf_counter() - t
                n_files, got = window_rows(Path(d))
            assert tp.dropped == 0 and got == args.rows, (tp.dropped, got)
            res[(ncols, f"TrafficProfiler, {batch}-row submits")] = args.rows / el
        for (nc, what), v in res.items():
            if nc == ncols:
                print(f"  {ncols} columns, {args.rows} rows: {what:<36} {v:9.0f} rows/s", flush=True)
        # (d) the fixed cost of one call, which is what a small sampled batch pays: ms per profile() of 16 rows.
        small = frame.iloc[:16]
        t = time.perf_counter()
        for _ in range(20):
            prof.profile(small)
        res[(ncols, "ms per profile() call of 16 rows")] = (time.perf_counter() - t) / 20 * 1e3
        print(f"  {ncols} columns: {res[(ncols, 'ms per profile() call of 16 rows')]:.1f} ms per profile() call "
              "of 16 rows", flush=True)
    return res


def med(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def summary(args, serving: dict | None, profiling: dict | None) -> None:
    print("\n" + "=" * 100)
    if serving:
        print(f"Serving, 1-row requests, wrk -t1 -d{args.duration}s, {args.pairs} interleaved runs each, medians")
        print(f"| {'model':<32} | {'conns':>5} | {'req/s':>7} | {'p50 ms':>6} | {'p99 ms':>6} | "
              f"{'execute us/req':>14} | {'runs req/s':<24} |")
        for conns in args.conns:
            for k in ("off", "on", "all"):
                rs = serving["runs"][(k, conns)]
                print(f"| {VARIANTS[k][0] + ' (' + DESCR[k] + ')':<32} | {conns:>5} | {med(rs, 'rps'):7.0f} | "
                      f"{med(rs, 'p50'):6.2f} | {med(rs, 'p99'):6.2f} | {med(rs, 'exec_us'):14.0f} | "
                      f"{' '.join('%.0f' % r['rps'] for r in rs):<24} |")
        print()
        for conns in args.conns:
            off, on, al = (serving["runs"][(k, conns)] for k in ("off", "on", "all"))
            ratio = med(on, "rps") / med(off, "rps")
            pairs = " ".join(f"{a['rps'] / b['rps']:.2f}" for a, b in zip(on, off))
            print(f"  c={conns:<2} throughput on/off {ratio:.3f}  (goal >= {GOAL}: "
                  f"{'met' if ratio >= GOAL else 'not met'}; per pair {pairs});  sample-1.0/off "
                  f"{med(al, 'rps') / med(off, 'rps'):.3f}")
        print("\nDid monitoring run? rows in the window files against sample_rate x rows served (all runs):")
        for k in ("off", "on", "all"):
            w = serving["windows"][k]
            if w["rate"]:
                print(f"  {VARIANTS[k][0]:<11} served {w['served']} rows, x {w['rate']} = {w['expected']:.0f} "
                      f"expected; {w['files']} window file(s) hold {w['rows']} rows "
                      f"({w['rows'] / max(w['expected'], 1):.3f} of expected)")
            else:
                print(f"  {VARIANTS[k][0]:<11} served {w['served']} rows; monitoring dir "
                      f"{'exists (unexpected!)' if w['dir_exists'] else 'absent, as it should be'}")
    if profiling:
        print(f"\nProfiling throughput (whylogs, off the request path, float32 normal columns, {args.rows} rows)")
        kinds = list(dict.fromkeys(w for _n, w in profiling))
        print(f"| {'rows/s':<36} | {'10 columns':>10} | {'30 columns':>10} | {'30/10':>5} |")
        for w in kinds:
            a, b = profiling[(10, w)], profiling[(30, w)]
            print(f"| {w:<36} | {a:10.1f} | {b:10.1f} | {b / a:5.2f} |" if w.startswith("ms ") else
                  f"| {w:<36} | {a:10.0f} | {b:10.0f} | {b / a:5.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    ap.add_argument("--pairs", type=int, default=3, help="interleaved on/off runs per concurrency")
    ap.add_argument("--conns", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--rows", type=int, default=200_000, help="rows per profiling measurement")
    ap.add_argument("--only", choices=["serving", "profiling"])
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    t0 = time.perf_counter()
    try:
        serving = serving_bench(args, tmp) if args.only != "profiling" else None
        profiling = None
        if args.only != "serving":
            print("\nprofiling throughput:", flush=True)
            profiling = profiling_bench(args)
        summary(args, serving, profiling)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
