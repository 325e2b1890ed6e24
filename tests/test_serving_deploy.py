"""Publishing, zero-downtime swaps, rollback, drain and bad requests, against a real tritonserver on loopback."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from _client_thread import ClientThread
from _training_cfg import breast_cancer
from test_serving import CLASSIFIER_SIG, MIXED_SIG, linear_onnx, mixed_onnx, ort_run, port_free, serving_config

from mlops._layout import Layout
from mlops.errors import RegistryError
from mlops.serving import (
    drain_triton,
    ensure_triton,
    model_statistics,
    publish,
    rollback,
    serve_version,
    served_models,
    serving_state,
    stop_triton,
)
from mlops.serving import _repository

ROWS = np.random.default_rng(11).normal(size=(4, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        **{f"v{i}": linear_onnx(d / f"v{i}.onnx", 3, 2, seed=i, softmax=True) for i in (1, 2, 3)},
        "mixed": mixed_onnx(d / "mixed.onnx"),
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One tritonserver for the module, through the same functions `mlops up` uses."""
    state = tmp_path_factory.mktemp("state")
    cfg = breast_cancer()[1].model_copy(update={"serving": serving_config()})
    ensure_triton(cfg, state)
    yield types.SimpleNamespace(cfg=cfg, state=state, url=f"127.0.0.1:{cfg.serving.http_port}")
    stop_triton(state, drain_s=0)


def _cfg(env, name: str):
    return env.cfg.model_copy(update={"serving": env.cfg.serving.model_copy(update={"model_name": name})})


def _post(conn: http.client.HTTPConnection, model: str, body: dict | str, version: str = "") -> tuple[int, dict]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    conn.request("POST", path, body if isinstance(body, str) else json.dumps(body),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}")


def _body(rows: np.ndarray) -> dict:
    return {"inputs": [{"name": "numeric", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}


def _answer(env, model: str) -> tuple[str, np.ndarray]:
    conn = http.client.HTTPConnection(env.url, timeout=10)
    try:
        status, out = _post(conn, model, _body(ROWS))
    finally:
        conn.close()
    assert status == 200, out
    return out["model_version"], np.array(out["outputs"][0]["data"]).reshape(len(ROWS), -1)


def _ready(env, model: str) -> list[str]:
    return sorted(m["version"] for m in served_models("http://" + env.url) if m["name"] == model
                  and m["state"] == "READY")


def _steady(env, timeout: float = 60) -> None:
    """Wait until no model version is UNLOADING (a deploy returns once the new version is ready, as Triton's load
    does; a replaced version unloads after, and strict readiness is false until it has)."""
    deadline = time.monotonic() + timeout
    while any(m["state"] == "UNLOADING" for m in served_models("http://" + env.url)) and time.monotonic() < deadline:
        time.sleep(0.05)


def _answered(load: "Load", n: int, timeout: float = 60) -> None:
    """Wait until ``load`` has had ``n`` more answers (a fixed sleep sees few under a busy machine)."""
    target, deadline = load.ok + n, time.monotonic() + timeout
    while load.ok < target and time.monotonic() < deadline:
        time.sleep(0.02)


def _statistics(env, model: str, requests: int, timeout: float = 10) -> list[dict]:
    """Triton's statistics once it has counted ``requests`` answers for ``model``.

    Triton records a request's statistics after it has sent the response, so a client that has just read
    its answer can see the count one short for a moment.
    """
    deadline = time.monotonic() + timeout
    while True:
        stats = model_statistics("http://" + env.url, model)
        if sum(s["requests"] for s in stats) >= requests or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def _instances_started(env, model: str) -> int:
    """How many model instances Triton has started for ``model`` (its log says so for each, at INFO level)."""
    log = Layout(env.state).log("triton").read_text(errors="replace")
    return log.count(f"TRITONBACKEND_ModelInstanceInitialize: {model}_0_0 (")


class Load(ClientThread):
    """A client thread posting one request after another, counting failures and who answered."""

    def __init__(self, env, model: str, stop_when_not_ready: bool = False):
        super().__init__()
        self.env, self.model, self.stop_when_not_ready = env, model, stop_when_not_ready
        self.versions, self.saw_not_ready = {}, False

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.env.url, timeout=10)
        while not self.stopped():
            try:
                if self.stop_when_not_ready:
                    # What a load balancer does: send only while the server says it is ready.
                    conn.request("GET", "/v2/health/ready")
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        self.saw_not_ready = True
                        break
                status, out = _post(conn, self.model, _body(ROWS))
                if status == 200:
                    self.ok += 1
                    self.versions[out["model_version"]] = self.versions.get(out["model_version"], 0) + 1
                else:
                    self.errors.append((status, out))
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection(self.env.url, timeout=10)
        conn.close()


# ---------------------------------------------------------------- atomic publish
def _killed_mid_copy(repo: str, onnx: str) -> None:
    """A publisher killed halfway through copying model.onnx: half a file, no finally blocks."""
    def half_then_die(src, dst):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        os._exit(9)

    _repository._copy = half_then_die
    _repository.publish(Path(repo), "guarded", 2, Path(onnx), CLASSIFIER_SIG)


def test_interrupted_or_corrupted_uploads_are_never_loaded(env, models, monkeypatch):
    cfg, repo = _cfg(env, "guarded"), env.state / "triton" / "models"
    version_dir = repo / "guarded" / "2"
    publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)
    serve_version(cfg, env.state, 1)
    served = _answer(env, "guarded")
    config = (repo / "guarded" / "config.pbtxt").read_text()

    def still_serving_v1() -> None:
        assert _ready(env, "guarded") == ["1"]
        version, answer = _answer(env, "guarded")
        assert version == "1" and np.array_equal(answer, served[1])
        assert (repo / "guarded" / "config.pbtxt").read_text() == config
        assert serving_state(cfg, env.state)["champion"] == 1

    # 1. The publishing process dies mid-copy: debris in a .publishing-* folder, no version 2.
    child = multiprocessing.get_context("fork").Process(target=_killed_mid_copy, args=(str(repo), str(models["v2"])))
    child.start()
    child.join(30)
    assert child.exitcode == 9
    assert not version_dir.exists() and any(p.name.startswith(".publishing-2-") for p in version_dir.parent.iterdir())
    with pytest.raises(RegistryError, match="has no MANIFEST.json and COMMITTED: its upload never completed"):
        serve_version(cfg, env.state, 2)
    still_serving_v1()

    # 2. A byte flipped on the way: caught before the commit marker, so version 2 never appears.
    def corrupting_copy(src, dst):
        data = bytearray(Path(src).read_bytes())
        data[len(data) // 2] ^= 0xFF
        Path(dst).write_bytes(bytes(data))

    with monkeypatch.context() as m:
        m.setattr(_repository, "_copy", corrupting_copy)
        with pytest.raises(RegistryError, match=r"model.onnx does not match its sha256 in MANIFEST.json"):
            publish(cfg, env.state, 2, models["v2"], CLASSIFIER_SIG)
    assert not version_dir.exists()
    still_serving_v1()

    # 3. A version folder written in place by an uploader that stopped early (no marker, half a file).
    version_dir.mkdir()
    (version_dir / "model.onnx").write_bytes(models["v2"].read_bytes()[:100])
    with pytest.raises(RegistryError, match="its upload never completed, so it is not loaded"):
        serve_version(cfg, env.state, 2)
    still_serving_v1()

    # 4. Committed, then damaged on disk: the checksums catch it before Triton is asked.
    publish(cfg, env.state, 2, models["v2"], CLASSIFIER_SIG)
    (version_dir / "model.onnx").chmod(0o644)
    with open(version_dir / "model.onnx", "r+b") as f:
        f.seek(40)
        f.write(b"\0\0\0\0")
    with pytest.raises(RegistryError, match="model.onnx does not match its sha256"):
        serve_version(cfg, env.state, 2)
    still_serving_v1()

    # The retry repairs it: exactly one version 2, no debris, and it serves.
    publish(cfg, env.state, 2, models["v2"], CLASSIFIER_SIG)
    assert sorted(p.name for p in (repo / "guarded").iterdir()) == [".publish.lock", "1", "2", "config.pbtxt"]
    serve_version(cfg, env.state, 2)
    version, answer = _answer(env, "guarded")
    assert version == "2"
    np.testing.assert_allclose(answer, ort_run(models["v2"], {"numeric": ROWS}), rtol=1e-5, atol=1e-6)


def test_retried_and_concurrent_publishes_yield_one_version(env, models):
    cfg, repo = _cfg(env, "retried"), env.state / "triton" / "models"
    errors = []

    def one() -> None:
        try:
            publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)
        except Exception as e:  # noqa: BLE001 (collected, asserted below)
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)

    assert errors == []
    assert sorted(p.name for p in (repo / "retried").iterdir()) == [".publish.lock", "1"]
    assert _repository.verify(repo / "retried" / "1")["model.onnx"] == _repository.sha256_file(models["v1"])
    with pytest.raises(RegistryError, match="published versions are immutable"):
        publish(cfg, env.state, 1, models["v2"], CLASSIFIER_SIG)


# ---------------------------------------------------------------- zero downtime
def test_deploy_promote_and_rollback_under_load_fail_no_request(env, models):
    cfg = _cfg(env, "swap")
    publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)
    serve_version(cfg, env.state, 1)
    timings = {}
    with Load(env, "swap") as load:
        _answered(load, 10)
        for step, version in [("deploy v2", 2), ("promote v3", 3)]:
            publish(cfg, env.state, version, models[f"v{version}"], CLASSIFIER_SIG)
            t0 = time.perf_counter()
            served = serve_version(cfg, env.state, version)
            timings[step] = time.perf_counter() - t0
            assert served["loaded"] == [version, version - 1]
            _answered(load, 10)
        started = _instances_started(env, "swap")
        back = rollback(cfg, env.state)
        started_by_rollback = _instances_started(env, "swap") - started
        _answered(load, 10)
        again = rollback(cfg, env.state)  # undoes the rollback: v3 is loaded again
        _answered(load, 10)

    assert load.errors == [], load.errors[:3]
    assert load.ok >= 50 and set(load.versions) == {"1", "2", "3"}, load.versions
    # v3 stays the previous one but is unloaded: above the champion, it would take the unversioned traffic.
    assert back == {**back, "champion": 2, "previous": 3, "loaded": [2]}
    assert again == {**again, "champion": 3, "previous": 2, "loaded": [3, 2]}
    # The rollback target was still loaded, so rolling back only unloads: no model instance started on the way.
    assert started_by_rollback == 0, timings
    assert _answer(env, "swap")[0] == "3" and _ready(env, "swap") == ["2", "3"]


def test_a_version_with_another_signature_replaces_rather_than_joins(env, models):
    cfg = _cfg(env, "resigned")
    publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)
    serve_version(cfg, env.state, 1)
    publish(cfg, env.state, 2, models["mixed"], MIXED_SIG)

    served = serve_version(cfg, env.state, 2)

    # One config.pbtxt describes the tensors of every loaded version, so v1 cannot stay beside v2.
    assert served["loaded"] == [2] and served["previous"] == 1
    assert _ready(env, "resigned") == ["2"]
    assert rollback(cfg, env.state)["loaded"] == [1] and _ready(env, "resigned") == ["1"]


def test_rollback_without_a_previous_version_says_so(env, models):
    cfg = _cfg(env, "lonely")
    publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)
    serve_version(cfg, env.state, 1)
    with pytest.raises(RegistryError) as err:
        rollback(cfg, env.state)
    assert str(err.value) == "model 'lonely' has no previous served version to roll back to (champion: 1)."


# ---------------------------------------------------------------- the edge
BAD_REQUESTS = {
    "wrong width": _body(np.zeros((1, 4), np.float32)),
    "no batch dimension": {"inputs": [{"name": "numeric", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]},
    "wrong datatype": {"inputs": [{"name": "numeric", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]},
    "unknown input": {"inputs": [{"name": "numerix", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
    "no inputs": {"inputs": []},
    "batch above max_batch_size": _body(np.zeros((257, 3), np.float32)),
    "strings for the categorical's numbers": {"inputs": [
        {"name": "numeric", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
        {"name": "categorical", "shape": [1, 1], "datatype": "FP32", "data": [1]}]},
}
# Triton 2.51's HTTP frontend answers these JSON-level mistakes with 500, not 400 (its choice, not the
# model's); what matters to us is that they are refused cleanly and the server keeps serving.
MALFORMED = {
    "data count differs from shape": {"inputs": [{"name": "numeric", "shape": [1, 3], "datatype": "FP32",
                                                  "data": [1, 2]}]},
    "strings in FP32 data": {"inputs": [{"name": "numeric", "shape": [1, 3], "datatype": "FP32",
                                         "data": ["a", "b", "c"]}]},
    "not JSON": "{not json",
}


def test_bad_requests_straight_to_triton_get_clean_errors_and_it_stays_healthy(env, models):
    cfg = _cfg(env, "edge")
    publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)
    serve_version(cfg, env.state, 1)
    mixed = _cfg(env, "edge-mixed")
    publish(mixed, env.state, 1, models["mixed"], MIXED_SIG)
    serve_version(mixed, env.state, 1)
    conn = http.client.HTTPConnection(env.url, timeout=10)
    try:
        got = {}
        for what, body in {**BAD_REQUESTS, **MALFORMED}.items():
            model = "edge-mixed" if "categorical" in what else "edge"
            status, out = _post(conn, model, body)
            got[what] = (status, set(out) == {"error"})
        assert got == {**{w: (400, True) for w in BAD_REQUESTS}, **{w: (500, True) for w in MALFORMED}}
        _steady(env)  # a version an earlier test replaced may still be unloading: strict readiness is false then
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/edge/ready"):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            assert r.status == 200, path
    finally:
        conn.close()
    assert _answer(env, "edge")[0] == "1"
    stats = {(s["name"], s["version"]): s for s in model_statistics("http://" + env.url)}
    assert stats[("edge", "1")]["failures"] == 0  # refused at the door: none reached the model


def test_model_statistics_count_requests_and_split_the_time(env, models):
    cfg = _cfg(env, "counted")
    publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)
    serve_version(cfg, env.state, 1)
    for _ in range(5):
        _answer(env, "counted")

    (stats,) = _statistics(env, "counted", 5)

    assert stats == {**stats, "name": "counted", "version": "1", "requests": 5, "failures": 0, "rows": 20}
    assert 1 <= stats["executions"] <= 5 and stats["rows_per_execution"] >= 4
    assert 0 < stats["compute_ms"] < stats["request_ms"] and stats["queue_ms"] >= 0


def test_a_deploy_loads_only_the_new_version(env, models):
    """The previous champion stays loaded as it is, not re-initialized: its statistics survive the deploy."""
    cfg, repo = _cfg(env, "kept"), env.state / "triton" / "models"
    publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)
    serve_version(cfg, env.state, 1)
    for _ in range(3):
        _answer(env, "kept")
    v1_folder = (repo / "kept" / "1").stat().st_mtime_ns

    publish(cfg, env.state, 2, models["v2"], CLASSIFIER_SIG)
    assert serve_version(cfg, env.state, 2)["loaded"] == [2, 1]

    stats = {s["version"]: s["requests"] for s in _statistics(env, "kept", 3)}
    assert stats == {"1": 3, "2": 0}  # a re-initialized version 1 would count from 0 again
    assert (repo / "kept" / "1").stat().st_mtime_ns == v1_folder  # serving wrote nothing into a published folder
    assert _answer(env, "kept")[0] == "2"


# ---------------------------------------------------------------- drain, last: it stops the module's server
def test_stop_drains_readiness_goes_false_before_traffic_stops(env, models):
    cfg = _cfg(env, "drained")
    publish(cfg, env.state, 1, models["v1"], CLASSIFIER_SIG)
    serve_version(cfg, env.state, 1)
    with Load(env, "drained", stop_when_not_ready=True) as load:
        time.sleep(0.3)
        drained = drain_triton(env.state, timeout=5)
        load.thread.join(5)
        assert load.saw_not_ready and not load.thread.is_alive()
        # Not ready, yet still answering whoever had not noticed.
        assert _answer(env, "drained")[0] == "1"
        assert stop_triton(env.state) is True

    assert load.errors == [] and load.ok > 10
    assert drained["ready"] is False and drained["waited_s"] < 5
    assert all(port_free(p) for p in (cfg.serving.http_port, cfg.serving.grpc_port, cfg.serving.metrics_port))
    assert not (env.state / "triton" / "models" / "_mlops_draining").exists()
