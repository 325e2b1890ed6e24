"""ONNX export: onnxruntime on raw rows matches the torch module, and the signature describes the graph."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from _training_cfg import fitted

from mlops.errors import PredictError
from mlops.serving._export import SIGNATURE_KEY, Signature, export_onnx, signature_to_frame_inputs
from mlops.training import TabularMLP, load_module, predict_frame


def _run(path, signature: Signature, frame: pd.DataFrame) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, signature_to_frame_inputs(signature, frame))[0]


def test_breast_cancer_parity(tmp_path):
    _, split, result = fitted("breast_cancer")
    signature = export_onnx(result.module, tmp_path / "model.onnx")
    got = _run(tmp_path / "model.onnx", signature, split.test)
    assert got.shape == (len(split.test), 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, predict_frame(result.module, split.test), atol=1e-5, rtol=0)
    assert signature.to_dict() == {
        "task": "classification",
        "target": "target",
        "inputs": [{"name": "numeric", "datatype": "FP32", "columns": list(split.test.columns[:-1])}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "dims": [2]}],
        "classes": [0, 1],
    }


def test_mixed_parity_with_an_unseen_category_and_missing_values(tmp_path):
    _, split, result = fitted("synthetic")
    signature = export_onnx(result.module, tmp_path / "model.onnx")
    frame = split.test.copy()
    frame.iloc[0, frame.columns.get_loc("colour")] = "violet"
    frame.iloc[1, frame.columns.get_loc("colour")] = None
    frame.iloc[2, frame.columns.get_loc("a")] = np.nan
    frame.iloc[3, frame.columns.get_loc("b")] = np.nan
    got = _run(tmp_path / "model.onnx", signature, frame)
    want = predict_frame(result.module, frame)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # The unseen and the missing colour are both "unknown", so the rows differ from the seen-colour rows.
    assert not np.allclose(want[0], predict_frame(result.module, split.test.iloc[:1])[0])
    assert [i.name for i in signature.inputs] == ["numeric", "categorical"]
    assert signature.inputs[1].model_dump() == {"name": "categorical", "datatype": "BYTES", "columns": ["colour"]}
    assert signature.classes == ["no", "yes"]


def test_regression_parity_on_diabetes(tmp_path):
    _, split, result = fitted("diabetes")
    signature = export_onnx(result.module, tmp_path / "model.onnx")
    got = _run(tmp_path / "model.onnx", signature, split.test)
    assert got.shape == (len(split.test), 1)
    np.testing.assert_allclose(got[:, 0], predict_frame(result.module, split.test), atol=1e-5, rtol=1e-6)
    assert signature.outputs[0].model_dump() == {"name": "prediction", "datatype": "FP32", "dims": [1]}
    assert "classes" not in signature.to_dict()


def test_graph_shape_opsets_and_embedded_signature(tmp_path):
    _, _, result = fitted("synthetic")
    signature = export_onnx(result.module, tmp_path / "model.onnx")
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert {o.domain: o.version for o in model.opset_import} == {"": 17, "ai.onnx.ml": 3}

    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    inputs = {i.name: (i.type.tensor_type.elem_type, shape(i)) for i in model.graph.input}
    assert inputs == {
        "categorical": (onnx.TensorProto.STRING, ["batch", 1]),
        "numeric": (onnx.TensorProto.FLOAT, ["batch", 2]),
    }
    assert [(o.name, shape(o)) for o in model.graph.output] == [("probabilities", ["batch", 2])]
    props = {p.key: p.value for p in model.metadata_props}
    assert Signature.model_validate_json(props[SIGNATURE_KEY]) == signature
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_batch_dimension_is_dynamic(tmp_path):
    _, split, result = fitted("synthetic")
    signature = export_onnx(result.module, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 7, len(split.test)):
        out = session.run(None, signature_to_frame_inputs(signature, split.test.iloc[:n]))[0]
        assert out.shape == (n, 2)


def test_export_from_a_reloaded_checkpoint_matches(tmp_path):
    _, split, result = fitted("diabetes")
    signature = export_onnx(load_module(result.checkpoint), tmp_path / "model.onnx")
    got = _run(tmp_path / "model.onnx", signature, split.test)[:, 0]
    np.testing.assert_allclose(got, predict_frame(result.module, split.test), atol=1e-5, rtol=1e-6)


def test_categorical_only_model_has_no_numeric_input(tmp_path):
    cfg, split, _ = fitted("synthetic")
    data = cfg.data.model_copy(update={"numeric": []})
    module = TabularMLP.from_train(cfg.model, data, split.train).eval()
    signature = export_onnx(module, tmp_path / "model.onnx")
    assert [i.name for i in signature.inputs] == ["categorical"]
    frame = split.test.drop(columns=["a", "b"])
    np.testing.assert_allclose(_run(tmp_path / "model.onnx", signature, frame), predict_frame(module, frame), atol=1e-5)


def test_signature_round_trips_through_json(tmp_path):
    _, _, result = fitted("synthetic")
    signature = export_onnx(result.module, tmp_path / "model.onnx")
    assert Signature.model_validate(json.loads(signature.to_json())) == signature
    with pytest.raises(ValueError):
        Signature.model_validate({**signature.to_dict(), "extra": 1})


def test_frame_inputs_types_and_missing_values(tmp_path):
    _, _, result = fitted("synthetic")
    signature = export_onnx(result.module, tmp_path / "model.onnx")
    frame = pd.DataFrame({"a": [1, None], "b": [2.5, 3], "colour": ["red", None], "extra": [0, 0]})
    arrays = signature_to_frame_inputs(signature, frame)
    assert arrays["numeric"].dtype == np.float32 and arrays["numeric"].shape == (2, 2)
    assert np.isnan(arrays["numeric"][1, 0])
    assert arrays["categorical"].dtype == object and arrays["categorical"].tolist() == [["red"], [""]]


def test_frame_inputs_name_missing_columns_and_bad_numbers(tmp_path):
    _, _, result = fitted("synthetic")
    signature = export_onnx(result.module, tmp_path / "model.onnx")
    with pytest.raises(PredictError, match=re.escape("the rows lack the column(s) ['b', 'colour']")):
        signature_to_frame_inputs(signature, pd.DataFrame({"a": [1.0]}))
    not_numbers = "the numeric columns ['a', 'b'] hold values that are not numbers"
    with pytest.raises(PredictError, match=re.escape(not_numbers)):
        signature_to_frame_inputs(signature, pd.DataFrame({"a": ["x"], "b": [1.0], "colour": ["red"]}))


def test_integer_categories_survive_a_nan_in_the_column(tmp_path):
    # A NaN turns an int column into floats; 1.0 must still be the category "1" the model saw in training.
    _, _, result = fitted("diabetes")
    signature = export_onnx(result.module, tmp_path / "model.onnx")
    ints = pd.DataFrame({"sex": [1, 2]})
    floats = pd.DataFrame({"sex": [1.0, np.nan]})
    categorical_only = signature.model_copy(update={"inputs": signature.inputs[1:]})
    assert signature_to_frame_inputs(categorical_only, ints)["categorical"].tolist() == [["1"], ["2"]]
    assert signature_to_frame_inputs(categorical_only, floats)["categorical"].tolist() == [["1"], [""]]
    assert result.module.hparams.categories == [["1", "2"]]


def test_the_export_module_imports_no_torch():
    code = "import sys, mlops.serving._export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
