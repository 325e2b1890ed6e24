"""BentoML baseline of the serving benchmark: the same model.onnx in onnxruntime, adaptive batching on.

    BENCH_MODEL=<model.onnx> bentoml serve bento_service:OnnxModel --host 127.0.0.1 --port N   (in bench/serving)

What a team picking BentoML would write (docs' pattern for a batchable model): one service, one worker, the
api marked ``batchable`` so BentoML's adaptive batcher merges concurrent requests along dim 0. It runs in the
bench's own venv (bench/serving/.venv-bentoml, made by run.py on first use), not the framework's.
Request: ``POST /predict {"input": [[30 floats], ...]}``; response: the probabilities, one row per input row.
For diagnosis only: BENCH_BENTO_BATCHABLE=0 (batching off), BENCH_BENTO_WORKERS, BENCH_BENTO_MAX_LATENCY_MS.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np


@bentoml.service(workers=int(os.environ.get("BENCH_BENTO_WORKERS", "1")))
class OnnxModel:
    def __init__(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(os.environ["BENCH_MODEL"], providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name

    # BentoML's defaults but the batch size (Triton's max_batch_size): its batcher adapts the wait to the
    # traffic it measures, within max_latency_ms (60 s by default; a request that would exceed it gets a 503).
    @bentoml.api(batchable=os.environ.get("BENCH_BENTO_BATCHABLE", "1") == "1", batch_dim=0, max_batch_size=256,
                 max_latency_ms=int(os.environ.get("BENCH_BENTO_MAX_LATENCY_MS", "60000")))
    def predict(self, input: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {"numeric": input.astype(np.float32, copy=False)})[0]
