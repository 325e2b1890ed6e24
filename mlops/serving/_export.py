"""ONNX export of a trained module, and the signature every server and client agrees on.

The graph takes raw feature rows: ``numeric`` float32 ``[batch, n_num]`` (NaN
allowed) and ``categorical`` string ``[batch, n_cat]`` ("" = missing). A
hand-built ``ai.onnx.ml`` LabelEncoder maps strings to the train vocabulary's
codes, because strings cannot pass through torch; it is merged in front of the
torch-exported network. torch is imported only inside :func:`export_onnx`, so
clients that only build inputs stay light.

A team's own LightningModule (``model.flavor: lightning``) is exported the same way, through Lightning's
``to_onnx``: with the framework's preprocessing in front when the framework fed it (the same raw-row inputs),
or as its ``example_input_array`` takes tensors when its own datamodule did. Either way the signature is read
off the graph (:func:`graph_signature`), so Triton's config and the client's checks fit any exported model.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, model_serializer

from mlops._atomic import write_atomic
from mlops.errors import PredictError
from mlops.features import categorical_strings, numeric_array

if TYPE_CHECKING:
    from mlops.training import TabularMLP

# Opset 17 / ai.onnx.ml 3 at IR version 8 load in onnxruntime >= 1.13, which covers every Triton 24.x image.
OPSET = 17
ML_OPSET = 3
IR_VERSION = 8
SIGNATURE_KEY = "mlops.signature"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ONNX TensorProto element types and the Triton datatypes they serve as.
ONNX_DATATYPE = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 8: "BYTES", 9: "BOOL",
                 10: "FP16", 11: "FP64"}
Datatype = Literal["FP32", "FP16", "FP64", "UINT8", "INT8", "INT16", "INT32", "INT64", "BOOL", "BYTES"]


class InputSpec(_Frozen):
    """One input tensor. A tabular input names the raw `columns` it carries (its width); any other input gives
    its `dims` past the batch axis (-1: any size)."""

    name: str
    datatype: Datatype
    columns: list[str] | None = None
    dims: list[int] | None = None

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler):  # noqa: ANN001, ANN202
        # A tabular input has no dims and a tensor input no columns: the unset one is absent, not null.
        return {k: v for k, v in handler(self).items() if v is not None}

    @property
    def shape(self) -> list[int]:
        return [len(self.columns)] if self.columns is not None else list(self.dims or [])


class OutputSpec(_Frozen):
    name: str
    datatype: Datatype
    dims: list[int]


class Signature(_Frozen):
    """What the served model takes and returns; an input's width is ``len(columns)``, and no dims count the batch.

    ``to_dict()`` is the plain form that serving writes as signature.json; read either form back with
    ``Signature.model_validate(d)`` or ``Signature.model_validate_json(text)``.
    """

    task: Literal["classification", "regression"]
    target: str
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    classes: list[int | float | str] | None = None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


def signature_to_frame_inputs(signature: Signature, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The model's input arrays for raw rows: float32 for ``numeric``, an object array of str for ``categorical``."""
    if any(spec.columns is None for spec in signature.inputs):
        raise PredictError("this model takes tensors, not rows: give it arrays (.npy or JSON lists) per input: "
                           + "; ".join(f"{s.name}: {s.datatype} [batch, {', '.join(map(str, s.shape))}]"
                                       for s in signature.inputs) + ".")
    missing = [c for spec in signature.inputs for c in spec.columns if c not in frame.columns]
    if missing:
        raise PredictError(
            f"the rows lack the column(s) {missing} that model input needs; it takes "
            + "; ".join(f"{s.name}: {s.columns}" for s in signature.inputs)
            + "."
        )
    convert = {"numeric": numeric_array, "categorical": categorical_strings}
    return {spec.name: convert[spec.name](frame, spec.columns) for spec in signature.inputs}


def signature_of(module: TabularMLP) -> Signature:
    hp = module.hparams
    inputs = [
        InputSpec(name=name, datatype=datatype, columns=list(columns))
        for name, datatype, columns in (("numeric", "FP32", hp.numeric), ("categorical", "BYTES", hp.categorical))
        if columns
    ]
    if hp.task == "classification":
        return Signature(
            task="classification",
            target=hp.target,
            inputs=inputs,
            outputs=[OutputSpec(name="probabilities", datatype="FP32", dims=[len(hp.classes)])],
            classes=list(hp.classes),
        )
    return Signature(
        task="regression",
        target=hp.target,
        inputs=inputs,
        outputs=[OutputSpec(name="prediction", datatype="FP32", dims=[1])],
    )


def graph_signature(model, *, task: str, target: str, classes: list | None = None,  # noqa: ANN001 (onnx.ModelProto)
                    columns: dict[str, list[str]] | None = None) -> Signature:
    """The signature of an ONNX graph: its inputs' and outputs' names, dtypes and shapes (past the batch axis)
    as the graph declares them, so any exportable model serves. `columns` names the raw columns of tabular
    inputs; `classes` the classification output's labels."""
    columns = columns or {}

    def parts(value) -> tuple[str, list[int]]:  # noqa: ANN001 (onnx.ValueInfoProto)
        tensor = value.type.tensor_type
        if tensor.elem_type not in ONNX_DATATYPE:
            raise PredictError(f"the exported graph's {value.name!r} has ONNX element type {tensor.elem_type}, "
                               "which Triton cannot serve; use float, integer, bool or string tensors.")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
        return ONNX_DATATYPE[tensor.elem_type], dims

    inputs = []
    for value in model.graph.input:
        datatype, dims = parts(value)
        cols = columns.get(value.name)
        inputs.append(InputSpec(name=value.name, datatype=datatype, columns=list(cols)) if cols is not None
                      else InputSpec(name=value.name, datatype=datatype, dims=dims))
    # Tabular inputs in the order `columns` names them (numeric, then categorical), whatever order merging put
    # the graph's inputs in; the rest after them, as the graph has them.
    order = list(columns)
    inputs.sort(key=lambda spec: order.index(spec.name) if spec.name in order else len(order))
    outputs = [OutputSpec(name=v.name, datatype=parts(v)[0], dims=parts(v)[1]) for v in model.graph.output]
    return Signature(task=task, target=target, inputs=inputs, outputs=outputs,  # type: ignore[arg-type]
                     classes=list(classes) if task == "classification" and classes is not None else None)


def _eval_copy(module):  # noqa: ANN001, ANN202
    """A float32, eval-mode copy: the served graph is FP32 whatever precision trained it, and the caller's module
    keeps its mode and dtype."""
    clone = type(module)(**module.hparams)
    clone.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()})
    return clone.eval()


def _torch_graph(module: TabularMLP, output: str):  # noqa: ANN202 (onnx.ModelProto; onnx is imported lazily)
    import onnx
    import torch

    hp = module.hparams
    clone = _eval_copy(module)
    names = [n for n, cols in (("numeric", hp.numeric), ("codes", hp.categorical)) if cols]
    examples = {
        "numeric": torch.zeros(2, len(hp.numeric), dtype=torch.float32),
        "codes": torch.zeros(2, len(hp.categorical), dtype=torch.int64),
    }

    class Core(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = clone

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            given = dict(zip(names, tensors, strict=True))
            return self.module(given.get("numeric"), given.get("codes"))

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose: it is fast and writes IR 8, which older Triton images load.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            Core(),
            tuple(examples[n] for n in names),
            buffer,
            input_names=names,
            output_names=[output],
            dynamic_axes={n: {0: "batch"} for n in [*names, output]},
            opset_version=OPSET,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _label_encoder_graph(categories: list[list[str]]):  # noqa: ANN202
    from onnx import TensorProto, helper

    n = len(categories)
    nodes, initializers, columns = [], [], []
    for j, vocab in enumerate(categories):
        index, strings, codes = f"categorical_index_{j}", f"categorical_column_{j}", f"codes_column_{j}"
        initializers.append(helper.make_tensor(index, TensorProto.INT64, [1], [j]))
        nodes.append(helper.make_node("Gather", ["categorical", index], [strings], axis=1, name=f"gather_{j}"))
        # An empty key list is invalid, and "" (missing) maps to 0 anyway, so it stands in for an empty vocabulary.
        keys, values = (list(vocab), list(range(1, len(vocab) + 1))) if vocab else ([""], [0])
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [strings],
                [codes],
                domain="ai.onnx.ml",
                keys_strings=keys,
                values_int64s=values,
                default_int64=0,
                name=f"label_encoder_{j}",
            )
        )
        columns.append(codes)
    nodes.append(helper.make_node("Concat", columns, ["codes"], axis=1, name="concat_codes"))
    graph = helper.make_graph(
        nodes,
        "categorical_lookup",
        [helper.make_tensor_value_info("categorical", TensorProto.STRING, ["batch", n])],
        [helper.make_tensor_value_info("codes", TensorProto.INT64, ["batch", n])],
        initializer=initializers,
    )
    return helper.make_model(
        graph,
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
    )


def _lightning_graph(module):  # noqa: ANN001, ANN202 (a team's LightningModule -> onnx.ModelProto, its columns)
    """A team's module (model.flavor=lightning) through Lightning's ``to_onnx``: wrapped with the framework's
    preprocessing when the framework fed it, its ``example_input_array`` traced, the batch axis dynamic."""
    import onnx

    from mlops.training._lightning import ServedModule

    served = ServedModule(module)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        served.to_onnx(buffer, input_names=served.input_names, output_names=[served.output_name],
                       dynamic_axes={n: {0: "batch"} for n in [*served.input_names, served.output_name]},
                       opset_version=OPSET, dynamo=False)
    return onnx.load_from_string(buffer.getvalue()), served.columns()


def _image_graph(module):  # noqa: ANN001, ANN202 (an ImageClassifier -> onnx.ModelProto)
    """The image classifier's forward as served: input ``image`` uint8 ``[batch, height, width, channels]`` with
    height and width free (the graph resizes), output ``probabilities``."""
    import onnx
    import torch

    hp = module.hparams
    clone = _eval_copy(module)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(clone, (torch.zeros(2, hp.image_size, hp.image_size, hp.in_channels, dtype=torch.uint8),),
                          buffer, input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch", 1: "height", 2: "width"}, "probabilities": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(module: TabularMLP, path: Path) -> Signature:
    """Write the module as an ONNX file at ``path`` (atomically) and return its signature, read off the graph.

    The signature is also stored in the file's metadata under ``mlops.signature``. `module` is the tabular MLP
    or a team's own LightningModule as the `lightning` flavor loads it.
    """
    import onnx
    from onnx import compose

    path = Path(path)
    meta = getattr(module, "_mlops", None)
    if getattr(module, "serves_images", False):  # model.flavor=image_classifier: raw uint8 NHWC pixels in
        model, columns = _image_graph(module), {}
        task, target, classes, categories = "classification", module.hparams.target, list(module.hparams.classes), []
    elif isinstance(meta, dict):  # model.flavor=lightning (mlops.training._lightning)
        model, columns = _lightning_graph(module)
        categories = (meta.get("preprocessing") or {}).get("categories", [])
        task, target, classes = meta["task"], meta["target"], meta.get("classes")
        if classes is None and task == "classification":
            classes = list(range(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value))
    else:
        hp = module.hparams
        model = _torch_graph(module, signature_of(module).outputs[0].name)
        columns = {"numeric": list(hp.numeric), "codes": list(hp.categorical)}
        categories, task, target, classes = hp.categories, hp.task, hp.target, list(hp.classes)
    if columns.get("codes"):
        model.ir_version = IR_VERSION
        model = compose.merge_models(
            _label_encoder_graph(categories),
            model,
            io_map=[("codes", "codes")],
            producer_name="mlops",
        )
    columns = {"numeric": columns.get("numeric", []), "categorical": columns.get("codes", [])} if columns else {}
    signature = graph_signature(model, task=task, target=target, classes=classes, columns=columns)
    model.ir_version = IR_VERSION
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {SIGNATURE_KEY: signature.to_json()})
    onnx.checker.check_model(model)

    write_atomic(path, model.SerializeToString())
    return signature
