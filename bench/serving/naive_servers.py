"""The naive baselines of the serving benchmark: plain FastAPI apps speaking KServe v2 JSON.

    BENCH_MODE=torch BENCH_MODEL=<model.ckpt>  uvicorn bench.serving.naive_servers:app   (a) eager torch module
    BENCH_MODE=ort   BENCH_MODEL=<model.onnx>  uvicorn bench.serving.naive_servers:app   (b) onnxruntime

What a team would hand-roll: one process, one request at a time (an ``async def`` endpoint runs on the
event loop, so requests never overlap), no batching, library defaults for threads.
"""

from __future__ import annotations

import os

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MODE, MODEL = os.environ["BENCH_MODE"], os.environ["BENCH_MODEL"]
app = FastAPI()

if MODE == "torch":
    import torch

    from mlops.training import load_module

    module = load_module(MODEL)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x), None).numpy()
else:
    import onnxruntime as ort

    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    out_name = session.get_outputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([out_name], {"numeric": x})[0]


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> JSONResponse:
    body = await request.json()
    spec = body["inputs"][0]
    x = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
    y = run(x)
    return JSONResponse({"model_name": name, "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}]})
