"""Triton python-backend model: one onnxruntime session behind dynamic batching.

This file is not imported by mlops. ``write_version`` copies it verbatim to
``<repo>/<model>/<version>/model.py``, where Triton's python backend stub loads
it next to the version's ``model.onnx`` and ``signature.json``. It may import
only what the serving environment has: numpy, onnxruntime and the backend's
``triton_python_backend_utils``.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_NUMPY_DTYPE = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT8": np.int8,
                "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "BYTES": object}


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "signature.json"), encoding="utf-8") as f:
            signature = json.load(f)
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        threads = int(params.get("intra_op_threads", {}).get("string_value", "1"))

        options = ort.SessionOptions()
        # Triton already runs `instance_count` copies side by side; one
        # deliberate pool per session keeps them from oversubscribing the CPU.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # A tabular input's shape past the batch is its column count; a tensor input's is its dims (-1: any).
        self.inputs = [(i["name"], i["datatype"], [len(i["columns"])] if "columns" in i else list(i["dims"]))
                       for i in signature["inputs"]]
        self.columns = {i["name"]: list(i.get("columns", [])) for i in signature["inputs"]}
        self.outputs = [o["name"] for o in signature["outputs"]]
        self.capture = None
        monitoring_dir = params.get("mlops.monitoring_dir", {}).get("string_value")
        if monitoring_dir:
            # Sampled rows are spooled by a thread; a worker process profiles them, off the request path.
            from mlops.monitoring._capture import Capture

            self.capture = Capture(
                signature,
                os.path.join(monitoring_dir, args["model_version"], "windows"),
                float(params["mlops.sample_rate"]["string_value"]),
                float(params["mlops.window_s"]["string_value"]),
                python=params.get("mlops.python", {}).get("string_value"),
                profiler=params.get("mlops.profiler", {}).get("string_value") or "whylogs",
            )

    def execute(self, requests):
        # One entry per request: its ORT feed, or the text of what is wrong
        # with it, so a malformed request fails alone and the rest are served.
        feeds = []
        for request in requests:
            try:
                feeds.append(self._feed(request))
            except ValueError as e:
                feeds.append(str(e))

        good = [f for f in feeds if isinstance(f, dict)]
        results = None
        if good:
            # Dynamic batching hands us many requests at once: one ORT call
            # over all of them is the whole point of batching.
            try:
                # Requests whose tensors differ past the batch axis (images of two sizes) cannot be concatenated:
                # they go one by one below.
                batched = {name: np.concatenate([f[name] for f in good]) for name in good[0]}
                results = self.session.run(self.outputs, batched)
                if self.capture is not None:
                    self.capture.observe(batched, dict(zip(self.outputs, results)))
            except Exception:
                # A request that passed the shape checks can still upset the
                # graph; the fallback below runs them one by one so only the
                # culprit fails.
                results = None

        responses, offset = [], 0
        for feed in feeds:
            if isinstance(feed, str):
                responses.append(_error(feed))
                continue
            n = len(next(iter(feed.values())))
            if results is not None:
                arrays = [r[offset : offset + n] for r in results]
                offset += n
            else:
                try:
                    arrays = self.session.run(self.outputs, feed)
                except Exception as e:
                    responses.append(_error(f"onnxruntime rejected the request: {e}"))
                    continue
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(array, dtype=np.float32))
                for name, array in zip(self.outputs, arrays)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def _feed(self, request):
        feed, batch = {}, None
        for name, datatype, dims in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            array = tensor.as_numpy()
            if array.ndim != len(dims) + 1 or any(d not in (-1, n) for d, n in zip(dims, array.shape[1:])):
                expected = ", ".join(["batch", *(str(d) if d != -1 else "any" for d in dims)])
                raise ValueError(f"input {name!r} has shape {list(array.shape)}, expected [{expected}]")
            if batch is not None and array.shape[0] != batch:
                raise ValueError(f"inputs disagree on the batch size: {batch} rows and {array.shape[0]} rows")
            batch = array.shape[0]
            if datatype == "BYTES":
                # Triton hands strings over as bytes objects; ORT wants str.
                array = np.char.decode(array.astype(np.bytes_), "utf-8").astype(object)
            else:
                array = array.astype(_NUMPY_DTYPE[datatype], copy=False)
                _check_finite(array, self.columns[name])
            feed[name] = array
        return feed

    def finalize(self):
        self.session = None
        if self.capture is not None:
            self.capture.close()


def _check_finite(array, columns):
    # An FP32 tensor cannot hold a value beyond float32's range: such a value arrives as ±inf. NaN stays
    # allowed (a missing value, imputed by the graph); inf would make every output of the row NaN.
    bad = np.isinf(array)
    if bad.any():
        where = list(zip(*np.nonzero(bad)))[:3]
        if columns and array.ndim == 2:
            shown = ", ".join(f"row {r} column {columns[c]!r}: {array[r, c]}" for r, c in where)
        else:  # a tensor input: the element's index
            shown = ", ".join(f"row {i[0]} element {list(i[1:])}: {array[i]}" for i in where)
        raise ValueError(f"{int(bad.sum())} non-finite or out-of-float32-range value(s) ({shown}); send finite "
                         "numbers, or null for a missing value")


def _error(message):
    # INVALID_ARG makes Triton answer 400, not 500: the request was wrong, the server is fine.
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)
