"""Predictions over Triton's HTTP endpoint, checked against the model's signature first.

The signature (written next to model.onnx at export time) is the contract:
which columns feed which input tensor, in which order, and what comes back.
Rows that do not fit it are refused here, with every problem listed, rather
than surfacing as a shape error from inside Triton.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlops.errors import PredictError, ServiceError
from mlops.features import bad_values, categorical_strings, numeric_array


_NUMPY_DTYPE = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT8": np.int8,
                "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_, "BYTES": object}


def tensor_inputs(signature: dict, arrays: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The input tensors of a tensor signature (a model without named columns), checked against its names, ranks
    and dims and cast to its dtypes; a lone array feeds a model of one input. Raises PredictError listing every
    problem."""
    specs = signature["inputs"]
    if not isinstance(arrays, dict):
        arrays = {specs[0]["name"]: arrays} if len(specs) == 1 else {}
    problems, out = [], {}
    for spec in specs:
        name, dims = spec["name"], [len(spec["columns"])] if "columns" in spec else list(spec["dims"])
        expected = "[" + ", ".join(["batch", *(str(d) if d != -1 else "any" for d in dims)]) + "]"
        if name not in arrays:
            problems.append(f"input {name!r} ({spec['datatype']} {expected}) is missing")
            continue
        array = np.asarray(arrays[name])
        if array.ndim != len(dims) + 1 or any(d not in (-1, n) for d, n in zip(dims, array.shape[1:])):
            problems.append(f"input {name!r} has shape {list(array.shape)}, expected {expected}")
            continue
        try:
            out[name] = array.astype(_NUMPY_DTYPE[spec["datatype"]])
        except (TypeError, ValueError) as exc:
            problems.append(f"input {name!r} cannot be read as {spec['datatype']}: {exc}")
    batches = {len(a) for a in out.values()}
    if len(batches) > 1:
        problems.append(f"the inputs disagree on the batch size: {sorted(batches)}")
    if not problems and not next(iter(batches), 0):
        problems.append("there are no rows to predict")
    if problems:
        n = len(problems)
        raise PredictError("\n".join([f"{n} problem{'s' if n > 1 else ''} with the arrays to predict:",
                                      *(f"  - {p}." for p in problems)]))
    return out


def validate(signature: dict, frame: pd.DataFrame) -> None:
    """Raise :class:`PredictError` listing every way ``frame`` does not fit ``signature``."""
    if any("columns" not in spec for spec in signature["inputs"]):
        raise PredictError("this model takes tensors, not rows: give it arrays (.npy, or JSON lists) for its "
                           "inputs " + ", ".join(repr(spec["name"]) for spec in signature["inputs"]) + ".")
    problems = []
    if len(frame) == 0:
        problems.append("there are no rows to predict")
    for spec in signature["inputs"]:
        missing = [c for c in spec["columns"] if c not in frame.columns]
        if missing:
            kind = "numeric" if spec["datatype"] == "FP32" else "categorical"
            problems.append(
                f"{kind} column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                f"{'are' if len(missing) > 1 else 'is'} missing "
                f"(the model reads {kind} columns {', '.join(map(repr, spec['columns']))})"
            )
        if spec["datatype"] != "FP32":
            continue
        for column in spec["columns"]:
            if column not in frame.columns:
                continue
            values = frame[column]
            if pd.api.types.is_numeric_dtype(values):
                continue
            bad = values.notna() & pd.to_numeric(values, errors="coerce").isna()
            if bad.any():
                first = int(np.argmax(bad.to_numpy()))
                count = int(bad.sum())
                problems.append(
                    f"column {column!r} must be numeric (FP32; empty cells are allowed), but {count} "
                    f"value{'s are' if count > 1 else ' is'} not, e.g. {values.iloc[first]!r} in row "
                    f"{frame.index[first]!r} (column dtype {values.dtype})"
                )
    # ±inf, and values float32 cannot hold (they become inf in the FP32 tensor): the model would answer NaN.
    numeric = [c for spec in signature["inputs"] if spec["datatype"] == "FP32" for c in spec["columns"]]
    problems += [b.render() for b in bad_values(frame, numeric)]
    if problems:
        n = len(problems)
        raise PredictError(
            "\n".join(
                [f"{n} problem{'s' if n > 1 else ''} with the rows to predict:", *(f"  - {p}." for p in problems)]
            )
        )


def to_inputs(signature: dict, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The input tensors, encoded exactly as training encoded them (NaN kept for the model to impute)."""
    return {
        spec["name"]: (numeric_array if spec["datatype"] == "FP32" else categorical_strings)(frame, spec["columns"])
        for spec in signature["inputs"]
    }


def predict(
    url: str, model_name: str, signature: dict, frame: pd.DataFrame | np.ndarray | dict[str, np.ndarray], *,
    batch_size: int = 256, version: int | str = ""
) -> dict:
    """Predict ``frame`` on ``model_name`` served at ``url`` (``host:port`` of Triton's HTTP endpoint).

    Classification returns ``{"classes", "probabilities", "labels"}`` (a label is
    the class of highest probability); regression returns ``{"predictions"}``.
    ``batch_size`` must not exceed the model's ``serving.max_batch_size``. ``version`` "" means the
    highest loaded version, which is where Triton sends a request that names none.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    if isinstance(frame, pd.DataFrame):
        validate(signature, frame)
        tensors = to_inputs(signature, frame)
    else:  # arrays, for a model whose signature names tensors rather than columns
        tensors = tensor_inputs(signature, frame)
    rows = len(next(iter(tensors.values())))
    output = signature["outputs"][0]
    chunks = []
    client = httpclient.InferenceServerClient(url=url.split("://", 1)[-1].rstrip("/"))
    try:
        for start in range(0, rows, batch_size):
            inputs = []
            for spec in signature["inputs"]:
                part = tensors[spec["name"]][start : start + batch_size]
                infer_input = httpclient.InferInput(spec["name"], list(part.shape), spec["datatype"])
                infer_input.set_data_from_numpy(part)
                inputs.append(infer_input)
            # Without an explicit requested output, some client/server pairs
            # answer with no outputs at all.
            result = client.infer(model_name, inputs, model_version=str(version),
                                  outputs=[httpclient.InferRequestedOutput(output["name"])])
            chunks.append(result.as_numpy(output["name"]))
    except InferenceServerException as e:
        raise ServiceError(f"Triton at {url} refused the prediction for model {model_name!r}: {e.message()}.") from None
    except (ConnectionError, OSError) as e:
        raise ServiceError(f"Triton does not answer at {url} ({e}); is it running (`mlops status`)?") from None
    finally:
        client.close()

    values = np.concatenate(chunks).astype(float)
    if not np.isfinite(values).all():
        rows = sorted({int(r) for r in np.argwhere(~np.isfinite(values.reshape(len(values), -1)))[:, 0]})
        raise ServiceError(f"model {model_name!r} at {url} answered non-finite values for row(s) {rows[:5]} of "
                           "the input; the served version is broken: roll it back (`mlops rollback`).")
    if signature["task"] == "classification":
        classes = list(signature["classes"])
        return {
            "classes": classes,
            "probabilities": values.tolist(),
            "labels": [classes[i] for i in values.argmax(axis=1)],
        }
    return {"predictions": values.reshape(len(values), -1)[:, 0].tolist()}
