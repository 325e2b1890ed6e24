"""Serving against a real tritonserver (the one bundled in nvidia-pytriton) on loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlops.errors import PredictError, RegistryError, ServiceError
from mlops.recipe.schema import ServingConfig
from mlops.serving._client import predict, validate
from mlops.serving._repository import parse_config, stock_config, write_stock_repository, write_version
from mlops.serving._server import TritonServer, http_url, load, served_models, statistics

CLASSIFIER_SIG = {
    "task": "classification",
    "target": "y",
    "inputs": [{"name": "numeric", "datatype": "FP32", "columns": ["a", "b", "c"]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "dims": [2]}],
    "classes": ["no", "yes"],
}
MIXED_SIG = {
    "task": "classification",
    "target": "y",
    "inputs": [
        {"name": "numeric", "datatype": "FP32", "columns": ["a", "b"]},
        {"name": "categorical", "datatype": "BYTES", "columns": ["colour"]},
    ],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "dims": [3]}],
    "classes": [0, 1, 2],
}
REGRESSOR_SIG = {
    "task": "regression",
    "target": "y",
    "inputs": [{"name": "numeric", "datatype": "FP32", "columns": ["a", "b", "c"]}],
    "outputs": [{"name": "prediction", "datatype": "FP32", "dims": [1]}],
}


def _save(graph: onnx.GraphProto, path: Path, ml: bool = False) -> Path:
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.onnx.ml", 3)] if ml else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def linear_onnx(path: Path, n_in: int, n_out: int, seed: int, softmax: bool) -> Path:
    """numeric [batch, n_in] -> softmax(xW + b) or xW + b, named like the exporter names them."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(n_in, n_out)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(n_out,)).astype(np.float32), "b")
    out = "probabilities" if softmax else "prediction"
    nodes = [
        helper.make_node("MatMul", ["numeric", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits" if softmax else out]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [out], axis=1))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", n_out])],
        initializer=[w, b],
    )
    return _save(graph, path)


def mixed_onnx(path: Path) -> Path:
    """numeric [batch, 2] + categorical string [batch, 1] (via ai.onnx.ml LabelEncoder) -> 3 class probabilities."""
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.normal(size=(3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["categorical"],
            ["code"],
            domain="ai.onnx.ml",
            keys_strings=["red", "green", "blue"],
            values_floats=[1.0, 2.0, 3.0],
            default_float=-1.0,
        ),
        helper.make_node("Concat", ["numeric", "code"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [
            helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("categorical", TensorProto.STRING, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w],
    )
    return _save(graph, path, ml=True)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def serving_config(**overrides) -> ServingConfig:
    http, grpc, metrics = free_ports(3)
    return ServingConfig(
        model_name="tiny", http_port=http, grpc_port=grpc, metrics_port=metrics, ready_timeout_s=60, **overrides
    )


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        "tiny": linear_onnx(d / "tiny.onnx", 3, 2, seed=1, softmax=True),
        "tiny_v2": linear_onnx(d / "tiny_v2.onnx", 3, 2, seed=2, softmax=True),
        "reg": linear_onnx(d / "reg.onnx", 3, 1, seed=3, softmax=False),
        "mixed": mixed_onnx(d / "mixed.onnx"),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, models):
    """One tritonserver for the module, started with `tiny` v1 loaded."""
    root = tmp_path_factory.mktemp("triton")
    serving = serving_config()
    repo = root / "repo"
    write_version(repo, "tiny", 1, models["tiny"], CLASSIFIER_SIG, serving)
    triton = TritonServer(root / "state")
    url = triton.start(repo, serving, ["tiny"])
    yield types.SimpleNamespace(triton=triton, url=url, repo=repo, serving=serving)
    triton.stop()


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"]).astype(np.float32)


def ort_run(path: Path, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


# ---------------------------------------------------------------- served predictions
def test_predict_matches_onnxruntime_across_client_batches(server, models):
    rows = frame(300)
    got = predict(server.url, "tiny", CLASSIFIER_SIG, rows, batch_size=128)

    want = ort_run(models["tiny"], {"numeric": rows.to_numpy(np.float32)})
    np.testing.assert_allclose(got["probabilities"], want, rtol=1e-5, atol=1e-6)
    assert got["classes"] == ["no", "yes"]
    assert got["labels"] == [["no", "yes"][i] for i in want.argmax(axis=1)]


def test_bytes_input_round_trip(server, models):
    write_version(server.repo, "mixed", 1, models["mixed"], MIXED_SIG, server.serving)
    load("mixed", server.url, timeout=60)
    rows = pd.DataFrame(
        {"a": [0.5, -1.0, 2.0, 0.0], "b": [1.0, 0.0, -0.5, 3.0], "colour": ["red", "blue", None, "purple"]}
    )

    got = predict(server.url, "mixed", MIXED_SIG, rows)

    want = ort_run(
        models["mixed"],
        {
            "numeric": rows[["a", "b"]].to_numpy(np.float32),
            "categorical": np.array([["red"], ["blue"], [""], ["purple"]], dtype=object),
        },
    )
    np.testing.assert_allclose(got["probabilities"], want, rtol=1e-5, atol=1e-6)
    assert got["labels"] == want.argmax(axis=1).tolist()
    # "" and "purple" are both unknown to the encoder, so the 3rd and 4th rows
    # differ only through their numeric columns: the None reached ORT as "".
    assert want[2].tolist() != want[0].tolist()


def test_regression_returns_predictions(server, models):
    write_version(server.repo, "reg", 1, models["reg"], REGRESSOR_SIG, server.serving)
    load("reg", server.url, timeout=60)
    rows = frame(5, seed=3)

    got = predict(server.url, "reg", REGRESSOR_SIG, rows)

    want = ort_run(models["reg"], {"numeric": rows.to_numpy(np.float32)})[:, 0]
    assert set(got) == {"predictions"}
    np.testing.assert_allclose(got["predictions"], want, rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_batched_into_fewer_executions(server, models):
    # A long queue delay makes Triton wait for company, so 8 concurrent
    # single-row requests reach model.py as fewer execute() calls.
    batching = server.serving.model_copy(update={"max_queue_delay_us": 200_000, "preferred_batch_sizes": [8]})
    write_version(server.repo, "batched", 1, models["tiny"], CLASSIFIER_SIG, batching)
    load("batched", server.url, timeout=60)
    rows = frame(8, seed=5)
    results: dict[int, dict] = {}

    def one(i: int) -> None:
        results[i] = predict(server.url, "batched", CLASSIFIER_SIG, rows.iloc[[i]])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    want = ort_run(models["tiny"], {"numeric": rows.to_numpy(np.float32)})
    got = np.array([results[i]["probabilities"][0] for i in range(8)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    stats = statistics(server.url, "batched")["model_stats"][0]
    assert stats["inference_count"] == 8
    assert stats["execution_count"] < 8


def test_bad_shape_request_gets_an_error_and_server_stays_healthy(server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server.url)
    try:
        wrong = np.zeros((2, 5), dtype=np.float32)
        infer_input = httpclient.InferInput("numeric", list(wrong.shape), "FP32")
        infer_input.set_data_from_numpy(wrong)
        with pytest.raises(InferenceServerException, match=r"unexpected shape for input 'numeric'"):
            client.infer("tiny", [infer_input], outputs=[httpclient.InferRequestedOutput("probabilities")])
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    finally:
        client.close()
    assert len(predict(server.url, "tiny", CLASSIFIER_SIG, frame(2))["labels"]) == 2


def test_new_version_swaps_in_on_reload(server, models):
    # Run on a copy of `tiny` so the other tests keep seeing version 1.
    write_version(server.repo, "swap", 1, models["tiny"], CLASSIFIER_SIG, server.serving)
    load("swap", server.url, timeout=60)
    write_version(server.repo, "swap", 2, models["tiny_v2"], CLASSIFIER_SIG, server.serving)
    load("swap", server.url, timeout=60)
    rows = frame(4, seed=9)

    got = predict(server.url, "swap", CLASSIFIER_SIG, rows)

    want = ort_run(models["tiny_v2"], {"numeric": rows.to_numpy(np.float32)})
    np.testing.assert_allclose(got["probabilities"], want, rtol=1e-5, atol=1e-6)
    swap = [m for m in served_models(server.url) if m["name"] == "swap" and m["state"] == "READY"]
    assert swap == [{"name": "swap", "version": "2", "state": "READY"}]


def test_served_models_lists_the_loaded_version(server):
    assert {"name": "tiny", "version": "1", "state": "READY"} in served_models(server.url)


# ---------------------------------------------------------------- model.py without Triton
def _backend_model_with_fake_pb_utils(monkeypatch):
    """model.py imports Triton's utilities; stand in for them (the outside world) to reach its error paths."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class TritonError:
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            self.message, self.code = message, code

    pb.Tensor, pb.InferenceResponse, pb.TritonError = Tensor, InferenceResponse, TritonError
    pb.get_input_tensor_by_name = lambda request, name: next((t for t in request if t.name == name), None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    source = Path(__file__).parents[1] / "mlops" / "serving" / "_backend_model.py"
    spec = importlib.util.spec_from_file_location("served_model", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, pb


def test_backend_batches_requests_and_fails_only_the_bad_one(monkeypatch, tmp_path, models):
    version_dir = write_version(tmp_path, "mixed", 1, models["mixed"], MIXED_SIG, serving_config())
    module, pb = _backend_model_with_fake_pb_utils(monkeypatch)
    served = module.TritonPythonModel()
    served.initialize(
        {
            "model_repository": str(version_dir.parent),
            "model_version": "1",
            "model_config": json.dumps({"parameters": {"intra_op_threads": {"string_value": "1"}}}),
        }
    )
    def request(numeric, colours):
        return [pb.Tensor("numeric", numeric), pb.Tensor("categorical", np.array(colours, dtype=object))]

    good_a = request(np.ones((2, 2), np.float32), [[b"red"], [b"blue"]])
    wrong_width = request(np.ones((1, 3), np.float32), [[b"red"]])
    good_b = request(np.zeros((1, 2), np.float32), [[b"green"]])
    rows_disagree = request(np.ones((2, 2), np.float32), [[b"red"]])

    calls = []
    run = served.session.run
    monkeypatch.setattr(served, "session", types.SimpleNamespace(run=lambda *a: calls.append(a) or run(*a)))
    responses = served.execute([good_a, wrong_width, good_b, rows_disagree])

    assert len(calls) == 1  # the two good requests went to onnxruntime together
    assert [r.error.message if r.error else None for r in responses] == [
        None,
        "input 'numeric' has shape [1, 3], expected [batch, 2]",
        None,
        "inputs disagree on the batch size: 2 rows and 1 rows",
    ]
    assert responses[1].error.code == pb.TritonError.INVALID_ARG  # a 400, not a 500
    want = ort_run(
        models["mixed"],
        {
            "numeric": np.array([[1, 1], [1, 1], [0, 0]], np.float32),
            "categorical": np.array([["red"], ["blue"], ["green"]], dtype=object),
        },
    )
    out_a, out_b = responses[0].output_tensors[0].array, responses[2].output_tensors[0].array
    assert out_a.dtype == np.float32 and out_a.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.concatenate([out_a, out_b]), want, rtol=1e-6)


# ---------------------------------------------------------------- repository
def test_republishing_identical_content_is_a_no_op(tmp_path, models):
    serving = serving_config()
    first = write_version(tmp_path, "tiny", 1, models["tiny"], CLASSIFIER_SIG, serving)
    def snapshot(version_dir):
        files = [*version_dir.iterdir(), version_dir.parent / "config.pbtxt"]
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}

    before = snapshot(first)

    again = write_version(tmp_path, "tiny", 1, models["tiny"], dict(reversed(CLASSIFIER_SIG.items())), serving)

    assert again == first and snapshot(again) == before
    # No temporary folders left behind (the lock file is how publishers take turns).
    assert sorted(os.listdir(tmp_path / "tiny")) == [".publish.lock", "1", "config.pbtxt"]
    assert sorted(os.listdir(first)) == ["COMMITTED", "MANIFEST.json", "__pycache__", "model.onnx", "model.py",
                                         "signature.json"]
    # model.py's bytecode is written at publish, so the python backend has nothing to write there.
    assert os.listdir(first / "__pycache__") == [f"model.{sys.implementation.cache_tag}.pyc"]


def test_published_versions_are_immutable(tmp_path, models):
    serving = serving_config()
    version_dir = write_version(tmp_path, "tiny", 1, models["tiny"], CLASSIFIER_SIG, serving)

    with pytest.raises(RegistryError) as err:
        write_version(tmp_path, "tiny", 1, models["tiny_v2"], {**CLASSIFIER_SIG, "classes": [1, 0]}, serving)

    assert str(err.value) == (
        f"version 1 of model 'tiny' is already published at {version_dir} with a different model.onnx and "
        "signature.json; published versions are immutable. Publish the new model as a new version."
    )
    assert (version_dir / "model.onnx").read_bytes() == models["tiny"].read_bytes()


def test_publishing_points_the_config_at_the_version(tmp_path, models):
    serving = serving_config()
    write_version(tmp_path, "tiny", 1, models["tiny"], CLASSIFIER_SIG, serving)
    write_version(tmp_path, "tiny", 2, models["tiny_v2"], CLASSIFIER_SIG, serving)
    def versions() -> list[int]:
        return list(parse_config((tmp_path / "tiny" / "config.pbtxt").read_text()).version_policy.specific.versions)

    assert versions() == [2]
    # Re-publishing an older version unchanged is how a rollback looks.
    write_version(tmp_path, "tiny", 1, models["tiny"], CLASSIFIER_SIG, serving)
    assert versions() == [1]


def test_local_and_stock_configs_parse_and_agree(tmp_path, models):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    serving = serving_config(instance_count=2, intra_op_threads=2, max_queue_delay_us=500)
    write_version(tmp_path / "local", "mixed", 3, models["mixed"], MIXED_SIG, serving)
    stock_dir = write_stock_repository(tmp_path / "stock", "mixed", 3, models["mixed"], MIXED_SIG, serving)

    local = text_format.Parse((tmp_path / "local/mixed/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    stock = text_format.Parse((stock_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    assert (stock_dir / "config.pbtxt").read_text() == stock_config("mixed", MIXED_SIG, serving)
    assert (stock_dir / "3" / "model.onnx").read_bytes() == models["mixed"].read_bytes()
    assert local.backend == "python" and stock.platform == "onnxruntime_onnx"
    assert stock.default_model_filename == "model.onnx"
    assert list(local.version_policy.specific.versions) == [3]
    assert local.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert local.parameters["intra_op_threads"].string_value == "2"
    assert stock.parameters["intra_op_thread_count"].string_value == "2"
    tensors = lambda c: [(t.name, t.data_type, list(t.dims)) for t in [*c.input, *c.output]]  # noqa: E731
    assert tensors(local) == tensors(stock) == [
        ("numeric", model_config_pb2.TYPE_FP32, [2]),
        ("categorical", model_config_pb2.TYPE_STRING, [1]),
        ("probabilities", model_config_pb2.TYPE_FP32, [3]),
    ]
    for c in (local, stock):
        assert c.max_batch_size == 256
        assert list(c.dynamic_batching.preferred_batch_size) == [16, 64]
        assert c.dynamic_batching.max_queue_delay_microseconds == 500
        assert c.instance_group[0].count == 2


# ---------------------------------------------------------------- client checks
def test_rows_are_checked_against_the_signature_with_every_problem_listed():
    rows = pd.DataFrame({"a": [1.0, "x", "y"], "colour": ["red", None, "blue"]}, index=[10, 11, 12])

    with pytest.raises(PredictError) as err:
        validate(MIXED_SIG, rows)

    assert str(err.value) == (
        "2 problems with the rows to predict:\n"
        "  - numeric column 'b' is missing (the model reads numeric columns 'a', 'b').\n"
        "  - column 'a' must be numeric (FP32; empty cells are allowed), but 2 values are not, "
        "e.g. 'x' in row 11 (column dtype object)."
    )


def test_nan_in_numeric_columns_is_allowed():
    validate(CLASSIFIER_SIG, pd.DataFrame({"a": [np.nan, 1.0], "b": ["2", None], "c": [1, 2]}))


# ---------------------------------------------------------------- lifecycle
def test_start_refuses_a_taken_port_naming_the_config_key(tmp_path):
    serving = serving_config()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", serving.grpc_port))
        busy.listen()
        with pytest.raises(ServiceError) as err:
            TritonServer(tmp_path / "state").start(tmp_path / "repo", serving, [])
    assert str(err.value) == (
        f"cannot start Triton: serving.grpc_port={serving.grpc_port} already in use on 127.0.0.1 by another "
        f"process. Stop that process or choose free ports with an override, e.g. "
        f"`serving.grpc_port={serving.grpc_port + 100}`."
    )
    assert not (tmp_path / "state" / "pids" / "triton.pid").exists()


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path):
    (tmp_path / "repo").mkdir()
    with pytest.raises(ServiceError) as err:
        TritonServer(tmp_path / "state").start(tmp_path / "repo", serving_config(), ["absent"])
    message = str(err.value)
    assert message.startswith("tritonserver exited with code 1 before it was live. The last lines of ")
    assert "absent" in message  # the log line naming the model it could not find
    assert not TritonServer(tmp_path / "state").is_running()


def test_a_stale_pid_file_is_cleared(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    triton = TritonServer(tmp_path)
    triton.pid_path.parent.mkdir(parents=True)
    triton.pid_path.write_text(f"{gone.pid}\n")

    assert not triton.is_running()
    assert not triton.pid_path.exists()
    assert triton.stop() is False


def test_stop_frees_the_ports(server):
    # Last on purpose: it stops the module's server.
    pid = server.triton.pid()
    assert pid is not None and http_url(server.serving) == server.url

    assert server.triton.stop() is True

    assert not server.triton.is_running() and not server.triton.pid_path.exists()
    assert not Path(f"/proc/{pid}").exists()
    ports = [server.serving.http_port, server.serving.grpc_port, server.serving.metrics_port]
    assert all(port_free(p) for p in ports)
    assert server.triton.stop() is False
