"""Images: the three image sources, the per-file validation gate (quarantine with the files named), the image
classifier's export (onnxruntime on raw uint8 pixels equals torch's eval), a folder recipe of generated shapes
through the steps, and the digits recipe end to end through `mlops up` and `mlops predict` on real Prefect,
Lightning and Triton."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlops._process import port_free
from mlops.data import fingerprint, make_source, read_batch, validate_frame
from mlops.data._images import check_images
from mlops.errors import DataError, PredictError
from mlops.features import decode_all, read_images
from mlops.recipe import load, schema

ROOT = Path(__file__).resolve().parents[1]
PORTS = (4610, 8610, 8611, 8612)
PORT_OVERRIDES = (f"target.prefect.port={PORTS[0]}", f"serving.http_port={PORTS[1]}", f"serving.grpc_port={PORTS[2]}",
                  f"serving.metrics_port={PORTS[3]}")
SHAPES_RECIPE = """# @package _global_
defaults:
  - override /model: image_classifier
name: shapes
data:
  source: image_folder
  path: data/shapes
  image: {channels: 3, min_size: 8, max_size: 64}
model:
  image_size: 12
  channels: 8
  depth: 2
  augment: {flip: true, shift: 1}
  batch_size: 16
  max_epochs: 12
  early_stopping: {patience: 12}
maturity:
  gate:
    floors: {test_acc: 0.8}
"""


def shape(kind: str, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    """A `size`-pixel RGB image of one simple shape in a random bright colour on a dark background, jittered."""
    img = np.zeros((size, size, 3), dtype=np.uint8) + rng.integers(0, 40, 3, dtype=np.uint8)
    colour = rng.integers(140, 256, 3, dtype=np.uint8)
    c = size // 2 + rng.integers(-1, 2, 2)
    yy, xx = np.mgrid[:size, :size]
    d2 = (yy - c[0]) ** 2 + (xx - c[1]) ** 2
    mask = {"square": (abs(yy - c[0]) <= 3) & (abs(xx - c[1]) <= 3), "disk": d2 <= 12, "ring": (d2 <= 12) & (d2 >= 5),
            "bar": abs(yy - c[0]) <= 1}[kind]
    img[mask] = colour
    return img


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_shapes(folder: Path, per_class: int = 30, seed: int = 0, kinds=("square", "disk", "bar")) -> None:
    rng = np.random.default_rng(seed)
    for kind in kinds:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / kind / f"{i:03d}.png").write_bytes(png(shape(kind, rng)))


def shapes_project(tmp_path: Path) -> Path:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "shapes.yaml").write_text(SHAPES_RECIPE)
    write_shapes(tmp_path / "data" / "shapes")
    return tmp_path


def folder_data(path: str, **keys) -> schema.ImageFolderData:
    return schema.ImageFolderData(source="image_folder", path=path, **keys)


# ---------------------------------------------------------------- sources
def test_digits_are_8x8_grey_pngs_scaled_from_0_16_to_uint8():
    from sklearn.datasets import load_digits

    frame = make_source(schema.SklearnImagesData(source="sklearn_images")).read(ROOT)
    assert list(frame.columns) == ["file", "image", "label"] and len(frame) == 1797
    assert frame["file"].iloc[3] == "digits/0003.png" and frame["image"].iloc[0].startswith(b"\x89PNG")
    images = np.stack(decode_all(frame, 1))
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    raw = load_digits()
    np.testing.assert_array_equal(images[..., 0], np.rint(raw.images * 255 / 16).astype(np.uint8))
    assert frame["label"].tolist() == raw.target.tolist() and images.max() == 255


def test_image_folder_reads_one_class_per_subfolder_locally_and_at_an_fsspec_url(tmp_path):
    import fsspec

    write_shapes(tmp_path / "shapes", per_class=3)
    (tmp_path / "shapes" / "disk" / "notes.txt").write_text("not an image")  # only PNG/JPEG files are rows
    (tmp_path / "shapes" / "README.png").write_bytes(b"")  # not in a class folder: not a row
    frame = make_source(folder_data("shapes")).read(tmp_path)
    assert frame["file"].tolist()[:4] == ["bar/000.png", "bar/001.png", "bar/002.png", "disk/000.png"]
    assert frame["label"].tolist() == ["bar"] * 3 + ["disk"] * 3 + ["square"] * 3
    assert frame["image"].iloc[0] == (tmp_path / "shapes" / "bar" / "000.png").read_bytes()
    assert len(make_source(folder_data("shapes")).read(tmp_path, nrows=4)) == 4

    memory = fsspec.filesystem("memory")
    for f in (tmp_path / "shapes").rglob("*.png"):
        memory.pipe(f"/mem-shapes/{f.relative_to(tmp_path / 'shapes')}", f.read_bytes())
    remote = make_source(folder_data("memory://mem-shapes")).read(tmp_path)
    pd.testing.assert_frame_equal(remote, frame)
    assert fingerprint(remote) == fingerprint(frame)


def test_a_changed_image_changes_the_snapshot_fingerprint(tmp_path):
    write_shapes(tmp_path / "shapes", per_class=2)
    source = make_source(folder_data("shapes"))
    before = fingerprint(source.read(tmp_path))
    assert fingerprint(source.read(tmp_path)) == before
    target = tmp_path / "shapes" / "disk" / "001.png"
    target.write_bytes(png(np.asarray(Image.open(target)) // 2))
    assert fingerprint(source.read(tmp_path)) != before


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_image_table_reads_paths_relative_to_the_table(tmp_path, fmt):
    write_shapes(tmp_path / "data" / "img", per_class=2)
    table = pd.DataFrame({"img": ["img/disk/000.png", "img/bar/001.png", "img/nope.png"],
                          "kind": ["disk", "bar", "bar"]})
    path = tmp_path / "data" / f"labels.{fmt}"
    table.to_csv(path, index=False) if fmt == "csv" else table.to_parquet(path)
    data = schema.ImageTableData(source="image_table", path=f"data/labels.{fmt}", path_column="img",
                                 label_column="kind", image={"min_size": 4})
    frame = make_source(data).read(tmp_path)
    assert frame["label"].tolist() == ["disk", "bar", "bar"]
    assert frame["image"].iloc[0] == (tmp_path / "data" / "img" / "disk" / "000.png").read_bytes()
    # A path the table names that is not there is read as nothing, and the gate names it.
    assert frame["image"].iloc[2] is None
    assert check_images(frame, data.image) == (["1 image file(s) are missing (named in the table, not found): "
                                                "img/nope.png"], {"img/nope.png": "file not found"})
    bad = schema.ImageTableData(source="image_table", path=f"data/labels.{fmt}")
    assert make_source(bad).check(tmp_path) == [
        ("data.path", "cannot be read: KeyError: \"the table has no column(s) ['path', 'label']; it has ['img', "
         "'kind'] (set data.path_column and data.label_column)\"",
         "give a CSV or Parquet table with data.path_column and data.label_column")]


def test_image_settings_are_checked():
    with pytest.raises(ValueError, match="min_size=64 exceeds max_size=8"):
        schema.ImageSpec(min_size=64, max_size=8)
    with pytest.raises(ValueError, match="yields images, not columns"):
        folder_data("x", numeric=["width"])
    assert folder_data("x").columns == ["file", "image", "label"] and folder_data("x").features == ["image"]


# ---------------------------------------------------------------- the gate, per file
def test_every_bad_file_is_named_with_what_is_wrong(tmp_path):
    rng = np.random.default_rng(1)
    good = png(shape("disk", rng))
    rgba = io.BytesIO()
    Image.fromarray(np.zeros((12, 12, 4), np.uint8)).save(rgba, format="PNG")
    jpeg = io.BytesIO()
    Image.fromarray(shape("bar", rng)).save(jpeg, format="JPEG")
    rows = {"ok.png": good, "ok.jpg": jpeg.getvalue(), "cut.png": good[: len(good) // 2], "text.png": b"hello",
            "alpha.png": rgba.getvalue(), "grey.png": png(np.zeros((12, 12), np.uint8)),
            "tiny.png": png(np.zeros((4, 6, 3), np.uint8)), "huge.png": png(np.zeros((10, 80, 3), np.uint8))}
    frame = pd.DataFrame({"file": list(rows), "image": list(rows.values()), "label": ["a", "b"] * 4})
    problems, files = check_images(frame, schema.ImageSpec(channels=3, min_size=8, max_size=64))
    assert problems[0].startswith("1 image file(s) are truncated or corrupt: cut.png (")
    assert problems[1:] == [
        "1 image file(s) cannot be decoded as PNG or JPEG: text.png",
        "2 image file(s) do not have data.image.channels=3 channel(s): alpha.png (4 channel(s), mode RGBA), "
        "grey.png (1 channel(s), mode L)",
        "1 image file(s) are smaller than data.image.min_size=8 pixels: tiny.png (4x6)",
        "1 image file(s) are larger than data.image.max_size=64 pixels: huge.png (10x80)"]
    assert files["alpha.png"] == "has 4 channel(s) (mode RGBA), not data.image.channels=3"
    assert files["huge.png"] == "is 10x80, outside data.image.max_size=64" and len(files) == 6
    # The data gate of an image recipe runs them (with its row and target checks).
    data = folder_data("x", image={"channels": 3, "min_size": 8, "max_size": 64}, checks={"min_rows": 2})
    report = validate_frame(frame, data, "classification")
    assert report.problems == problems and report.bad_files == files
    many = pd.DataFrame({"file": [f"{i}.png" for i in range(13)], "image": [b"x"] * 13, "label": ["a", "b"] * 6 + ["a"]})
    assert check_images(many, data.image)[0] == ["13 image file(s) cannot be decoded as PNG or JPEG: 0.png, 1.png, "
                                              "2.png, 3.png, 4.png, 5.png, 6.png, 7.png, 8.png, 9.png and 3 more "
                                              "(report.json lists them all)"]


def test_predict_reads_a_file_or_a_folder_of_images(tmp_path):
    write_shapes(tmp_path / "in", per_class=1)
    names, arrays = read_images(tmp_path / "in", 3)
    assert names == ["bar/000.png", "disk/000.png", "square/000.png"] and arrays[0].shape == (12, 12, 3)
    names, arrays = read_images(tmp_path / "in" / "bar" / "000.png", 3)
    assert names == ["000.png"] and len(arrays) == 1
    from mlops.serving._images import predict_images

    with pytest.raises(PredictError, match=r"--input .*in: bar/000.png has 3 channel\(s\) \(mode RGB\), not "
                       r"data.image.channels=1.*Give PNG or JPEG files with data.image.channels=1"):
        predict_images(None, tmp_path / "in", 1)
    with pytest.raises(PredictError, match="this recipe's model takes rows, not images"):
        predict_images(None, tmp_path / "in", None)
    with pytest.raises(PredictError, match=r"--input .*nowhere.png: no such file or folder\. Give an image file"):
        predict_images(None, tmp_path / "nowhere.png", 3)


# ---------------------------------------------------------------- the model and its export
def test_the_onnx_graph_on_raw_uint8_pixels_equals_torch_eval_at_any_size(tmp_path):
    import onnxruntime as ort
    import torch

    from mlops.serving._export import export_onnx
    from mlops.training._images import ImageClassifier, predict_images

    frame = make_source(schema.SklearnImagesData(source="sklearn_images")).read(ROOT, nrows=200)
    model = schema.ImageClassifierConfig(image_size=8, channels=4, depth=2)
    module = ImageClassifier.from_train(model, schema.SklearnImagesData(source="sklearn_images", image={"channels": 1}),
                                        frame)
    with torch.no_grad():
        for p in module.parameters():  # weights off their init, so the check is not of a near-constant output
            p.add_(0.1 * torch.randn_like(p))
    signature = export_onnx(module, tmp_path / "model.onnx")
    assert signature.to_dict() == {
        "task": "classification", "target": "label", "classes": list(range(10)),
        "inputs": [{"name": "image", "datatype": "UINT8", "dims": [-1, -1, 1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "dims": [10]}]}
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    images = np.stack(decode_all(frame, 1))
    rng = np.random.default_rng(0)
    for batch in (images[:17], np.repeat(np.repeat(images[:3], 3, axis=1), 2, axis=2),  # 24x16: resized inside
                  rng.integers(0, 256, (2, 5, 11, 1), dtype=np.uint8)):
        served = session.run(["probabilities"], {"image": batch})[0]
        np.testing.assert_allclose(served, predict_images(module, batch), atol=1e-5)
        assert np.allclose(served.sum(axis=1), 1, atol=1e-5)
    # The mean and std are the train split's, inside the module: the served model takes pixels, not z-scores.
    assert module.mean.shape == (1, 1, 1, 1) and 0.2 < float(module.mean) < 0.4


# ---------------------------------------------------------------- a folder recipe through the steps
def test_a_folder_of_generated_shapes_trains_and_an_unseen_class_is_quarantined(tmp_path):
    import onnxruntime as ort

    from mlops import steps
    from mlops.serving._export import export_onnx
    from mlops.stack import Stack
    from mlops.training import load_module, split_frame
    from mlops.training._images import predict_images

    project = shapes_project(tmp_path)
    # neptune in debug mode: no tracking database to create (mlflow spends ~10 s migrating a fresh sqlite one)
    cfg = load(["recipe=shapes", "tracking=neptune", "tracking.mode=debug", "tracking.project=acme/shapes"], project)
    stack = Stack(cfg, project)
    snapshot = steps.ingest(stack)
    assert steps.ingest(stack).fingerprint == snapshot.fingerprint  # the same files: the same snapshot
    steps.validate(stack, snapshot)
    trained = steps.train(stack, snapshot)
    metrics = steps.evaluate(stack, snapshot, trained)
    assert metrics.values["test_acc"] >= 0.8, metrics
    version = steps.register(stack, snapshot, trained, metrics)
    stack.model_store.promote(cfg.name, version.version, by="test")
    assert stack.model_store.get(cfg.name, version.version).lineage["data_fingerprint"] == snapshot.fingerprint

    # Served = evaluated: the exported graph's labels on the test split's raw pixels are torch's.
    module = load_module(Path(trained.checkpoint), "image_classifier")
    test = split_frame(pd.read_parquet(snapshot.path), cfg.data, cfg.model.task).test
    pixels = np.stack(decode_all(test, 3))
    export_onnx(module, tmp_path / "model.onnx")
    served = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"image": pixels})[0]
    np.testing.assert_allclose(served, predict_images(module, pixels), atol=1e-5)
    labels = [module.hparams.classes[i] for i in served.argmax(1)]
    assert np.mean(np.array(labels) == test["label"].to_numpy()) == pytest.approx(metrics.values["test_acc"])

    # The next batch has a class folder the champion never saw, and a truncated file: quarantined, files named.
    write_shapes(project / "data" / "shapes", per_class=2, kinds=("ring",))
    cut = project / "data" / "shapes" / "disk" / "004.png"
    cut.write_bytes(cut.read_bytes()[:60])
    bad = steps.ingest(stack)
    with pytest.raises(DataError) as info:
        steps.validate(stack, bad)
    assert info.value.exit_code == 3
    message = str(info.value)
    where = project / cfg.target.state_dir / "quarantine" / "shapes"
    assert message.startswith("the data of recipe 'shapes' failed validation and was quarantined in ")
    assert "1 image file(s) are truncated or corrupt: disk/004.png (" in message
    assert ("class 'ring' is not one the champion was trained on (bar, disk, square); its 2 image(s): "
            "ring/000.png, ring/001.png") in message
    report = json.loads(next(where.rglob("report.json")).read_text())
    # `mlops validate --input` reads an image recipe's batch as a folder of class folders, through the same gate.
    batch = read_batch(project / "data" / "shapes", cfg.data, project)
    assert any(p.startswith("1 image file(s) are truncated") for p in steps.check_frame(stack, batch, "x")[2])
    with pytest.raises(DataError, match="an image recipe's batch is a folder"):
        read_batch(cut, cfg.data, project)
    assert any("ring/000.png" in p for p in report["problems"]) and not Path(bad.path).exists()
    assert report["bad_files"] == {"disk/004.png": report["bad_files"]["disk/004.png"]}
    assert report["bad_files"]["disk/004.png"].startswith("is truncated or corrupt (")


# ---------------------------------------------------------------- end to end
def mlops(project: Path, pythonpath: str, *args: str, ports: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args, *(PORT_OVERRIDES if ports else ())],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_up_digits_serves_pngs_as_evaluation_scored_them(tmp_path, sources_path):
    """`mlops up recipe=digits` to READY; `mlops predict` on the test split written as PNG files answers what
    the evaluation computed: the same probabilities as the checkpoint in torch, the same test accuracy."""
    from mlops.stack import Stack
    from mlops.training import load_module, split_frame
    from mlops.training._images import predict_images

    busy = [p for p in PORTS if not port_free("127.0.0.1", p)]
    assert not busy, f"ports {busy} are in use"
    (tmp_path / "recipes").mkdir()
    shutil.copy(ROOT / "recipes" / "digits.yaml", tmp_path / "recipes" / "digits.yaml")
    try:
        start = time.monotonic()
        proc = mlops(tmp_path, sources_path, "up", "recipe=digits")
        assert proc.returncode == 0, proc.stderr
        assert "digits version 1 is READY" in proc.stderr
        print(f"mlops up recipe=digits: READY in {time.monotonic() - start:.1f} s")

        cfg = load(["recipe=digits", *PORT_OVERRIDES], tmp_path, check_data=False)
        version = Stack(cfg, tmp_path).model_store.get("digits", 1)
        lineage = version.lineage
        assert lineage["metrics"]["test_acc"] >= 0.95
        snapshot = pd.read_parquet(lineage["data_snapshot"])
        test = snapshot.loc[split_frame(snapshot, cfg.data, cfg.model.task).test.index]  # with the file names
        test = test.sort_values("file")  # predict reads a folder in name order
        folder = tmp_path / "digits-in"
        folder.mkdir()
        for name, data in zip(test["file"], test["image"], strict=True):
            (folder / Path(name).name).write_bytes(data)

        proc = mlops(tmp_path, sources_path, "predict", "recipe=digits", "--input", str(folder), "--json")
        assert proc.returncode == 0, proc.stderr
        served = json.loads(proc.stdout)
        assert served["files"] == [Path(n).name for n in test["file"]] and served["classes"] == list(range(10))
        module = load_module(version.file("model.ckpt"), "image_classifier")
        np.testing.assert_allclose(served["probabilities"], predict_images(module, np.stack(decode_all(test, 1))),
                                   atol=1e-5)
        accuracy = np.mean(np.array(served["labels"]) == test["label"].to_numpy())
        assert accuracy == pytest.approx(lineage["metrics"]["test_acc"], abs=1e-6)

        one = folder / Path(test["file"].iloc[0]).name
        proc = mlops(tmp_path, sources_path, "predict", "recipe=digits", "--input", str(one))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0].startswith("file  label  p(0)  p(1)")
        assert proc.stdout.splitlines()[1].startswith(f"{one.name}  {served['labels'][0]}  ")
        helped = mlops(tmp_path, sources_path, "predict", "--help", ports=False).stdout
        assert ".npy" in helped and "images" in helped and "recipe=digits" in helped
    finally:
        down = mlops(tmp_path, sources_path, "down", "recipe=digits")
    assert down.returncode == 0, down.stderr
    assert all(port_free("127.0.0.1", p) for p in PORTS)
