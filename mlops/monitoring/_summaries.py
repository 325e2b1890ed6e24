"""What is profiled of a served request: named columns as they are; tensors and outputs as per-sample summaries.

One function, :func:`served_columns`, turns the arrays a model takes and returns (its signature's inputs and
outputs, batch first) into the 1-D columns the profiler sees. The profiling worker applies it to the spooled
traffic, and the register step to the model's predictions on the validation split, so a window and its
reference hold the same columns computed the same way:

- a tabular input (the signature names its ``columns``): one column each, as served (BYTES as text);
- an image input (uint8, rank 4, ``[N, H, W, C]``): ``input.<name>.brightness`` (mean), ``.contrast`` (std),
  ``.height``, ``.width`` and ``.channel<k>_mean`` per channel;
- any other tensor input: ``input.<name>.mean``, ``.std``, ``.min``, ``.max`` over each sample's elements;
- ``probabilities`` ``[N, C]`` (classification): ``output.class`` (the predicted class, as text) and
  ``output.confidence`` (its probability);
- any other output (``prediction`` ``[N, 1]``, regression): ``output.<name>`` (the mean over the sample's
  elements when it has several).

It costs O(N × elements) numpy, which is why it runs in the worker, never on Triton's request path: the
backend only spools the sampled arrays (mlops.monitoring._capture).
"""

from __future__ import annotations

from typing import Any

import numpy as np

INPUT = "input."
OUTPUT = "output."


def served_columns(signature: dict[str, Any], inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
                   ) -> dict[str, np.ndarray]:
    """The profiled columns of served (or reference) arrays; an input or output absent from the dicts is skipped."""
    cols: dict[str, np.ndarray] = {}
    for spec in signature.get("inputs", []):
        block = inputs.get(spec["name"])
        if block is None:
            continue
        if "columns" in spec:
            for j, column in enumerate(spec["columns"]):
                # BYTES columns arrive as str objects (model.py decodes them for onnxruntime): one cast, no loop.
                cols[column] = block[:, j].astype(str) if spec["datatype"] == "BYTES" else block[:, j]
        else:
            cols.update(tensor_summary(spec["name"], block))
    classes = [str(c) for c in signature.get("classes") or []]
    for spec in signature.get("outputs", []):
        block = outputs.get(spec["name"])
        if block is None:
            continue
        block = np.asarray(block, dtype=np.float64).reshape(len(block), -1)
        if spec["name"] == "probabilities" and block.shape[1] > 1:
            top = block.argmax(axis=1)
            labels = np.array(classes if len(classes) == block.shape[1] else [str(i) for i in range(block.shape[1])])
            cols[f"{OUTPUT}class"] = labels[top].astype(object)
            cols[f"{OUTPUT}confidence"] = block[np.arange(len(block)), top]
        else:
            cols[f"{OUTPUT}{spec['name']}"] = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
    return cols


def tensor_summary(name: str, block: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample statistics of a tensor input ``[N, ...]``: an image's, or any tensor's."""
    n = len(block)
    prefix = f"{INPUT}{name}."
    if block.dtype == np.uint8 and block.ndim == 4:  # an image batch, NHWC as image_classifier serves it
        pixels = block.reshape(n, -1, block.shape[3]).astype(np.float32)
        out = {f"{prefix}brightness": pixels.mean(axis=(1, 2)), f"{prefix}contrast": pixels.std(axis=(1, 2)),
               f"{prefix}height": np.full(n, block.shape[1], np.float64),
               f"{prefix}width": np.full(n, block.shape[2], np.float64)}
        for k, mean in enumerate(pixels.mean(axis=1).T):
            out[f"{prefix}channel{k}_mean"] = mean
        return out
    if block.dtype.kind not in "biuf":  # strings or objects: nothing numeric to summarise
        return {}
    flat = block.reshape(n, -1).astype(np.float64)
    if flat.shape[1] == 0:
        return {}
    with np.errstate(invalid="ignore"):  # a sample of NaNs summarises to NaN, which whylogs counts as null
        return {f"{prefix}mean": flat.mean(axis=1), f"{prefix}std": flat.std(axis=1),
                f"{prefix}min": flat.min(axis=1), f"{prefix}max": flat.max(axis=1)}


def split_columns(profiled: list[str], features: list[str]) -> tuple[list[str], list[str]]:
    """(input columns, output columns) that drift is scored on, from the reference profile's columns: the recipe's
    features (or, for a tensor model, the ``input.`` summaries), and the ``output.`` summaries."""
    tensor = sorted(c for c in profiled if c.startswith(INPUT))
    return tensor or list(features), sorted(c for c in profiled if c.startswith(OUTPUT))
