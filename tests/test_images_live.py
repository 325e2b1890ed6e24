"""Level 4 live for an image model: darkened digits served by Triton drift, a retrain runs and the gate decides.

The digits CNN (recipes/digits.yaml's model) reads a folder of PNGs here (image_folder), so new images can
arrive the way new files do. Nobody calls mlops after `up`: the served traffic is profiled (per-image
brightness, contrast, size, channel means, and the predicted class and its confidence), the monitor judges
each window against the version's reference, emits mlops.drift.detected, and the automation retrains on the
data location (which now holds darkened digits too) and gates the candidate. Real Prefect, Triton, whylogs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _live import prefect_events, wait_for

from mlops._process import port_free

ROOT = Path(__file__).resolve().parents[1]
PREFECT_PORT, HTTP, GRPC, METRICS = 8623, 8624, 8625, 8626
API = f"http://127.0.0.1:{PREFECT_PORT}/api"
COMMON = ["recipe=digits_folder", f"target.prefect.port={PREFECT_PORT}", f"serving.http_port={HTTP}",
          f"serving.grpc_port={GRPC}", f"serving.metrics_port={METRICS}", "model.max_epochs=3",
          "maturity.data_interval_s=3600",  # new images arrive only via drift
          # Short windows, every served image profiled, judged as they close; the event fires once.
          "monitoring.window_s=4", "monitoring.sample_rate=1.0", "monitoring.drift.min_window_rows=100",
          "monitoring.drift.repeat_after_windows=200"]
RECIPE = """# @package _global_
# recipes/digits.yaml's model over a folder of PNGs (one subfolder per digit), so new images can arrive.
defaults:
  - override /model: image_classifier
name: digits
data:
  source: image_folder
  path: data/digits
  image: {channels: 1, min_size: 8, max_size: 64}
model:
  image_size: 8
  channels: 16
  depth: 2
  batch_size: 32
maturity:
  gate:
    floors: {test_acc: 0.5}  # 3 epochs on 1,200 images; the gate then compares each candidate with the champion
"""
pytestmark = pytest.mark.e2e


def mlops(project: Path, pythonpath: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = pythonpath  # this tree, and the image flavors' entry points (conftest's sources_path)
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", *args, *COMMON], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and args[0] != "down":
        pytest.fail(f"mlops {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.images))
    return (data.images[order] * 255 / 16).round().astype(np.uint8)[..., None], data.target[order]


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        tmp = folder / str(label) / f".{prefix}-{i}.png.tmp"
        Image.fromarray(image[..., 0]).save(tmp, format="PNG")
        tmp.replace(folder / str(label) / f"{prefix}-{i}.png")  # whole files only, as an upload would land


def runs(project: Path, pythonpath: str) -> list[dict]:
    return json.loads(mlops(project, pythonpath, "runs", "--json").stdout)


def test_level_4_darkened_digits_drift_and_the_retrain_is_gated(tmp_path, sources_path):
    from mlops.serving._client import predict

    busy = [p for p in (PREFECT_PORT, HTTP, GRPC, METRICS) if not port_free("127.0.0.1", p)]
    assert not busy, f"ports {busy} are in use"
    project = tmp_path / "project"
    shutil.copytree(ROOT / "recipes", project / "recipes")
    (project / "recipes" / "digits_folder.yaml").write_text(RECIPE)
    images, labels = digits()
    write_pngs(project / "data" / "digits", images[:800], labels[:800], "a")
    try:
        mlops(project, sources_path, "up", "maturity=4")
        signature = json.loads((project / ".mlops/exports/digits/1/signature.json").read_text())
        assert [i["name"] for i in signature["inputs"]] == ["image"]
        # New images land in the data location (darker ones among them), then darkened digits are served.
        dark = (images[800:] * 0.3).astype(np.uint8)
        write_pngs(project / "data" / "digits", dark, labels[800:], "b")
        for start in range(0, len(dark), 50):
            answer = predict(f"127.0.0.1:{HTTP}", "digits", signature, {"image": dark[start : start + 50]})
            assert len(answer["labels"]) == len(dark[start : start + 50])
        detected = wait_for("drift detected", lambda: [r for r in runs(project, sources_path)
                                                       if r["flow"] == "mlops-monitor"
                                                       and r.get("outcome") == "drift detected"], timeout=120, poll_s=2)
        assert detected[0]["version"] == 1
        assert {"input.image.brightness", "input.image.contrast"} <= set(detected[0]["drifted"])
        assert isinstance(detected[0]["output_drifted"], list)  # the answers' drift, reported beside the inputs'

        retrain = wait_for("the retrain's verdict", lambda: [
            r for r in runs(project, sources_path) if r["flow"] == "mlops-train"
            and r["trigger"] == "event:mlops.drift.detected" and r.get("outcome") in ("deployed", "rejected")],
            timeout=400, poll_s=2)
        assert retrain[0]["drift_window"] == detected[0]["window"] and retrain[0]["version"] == 2
        assert retrain[0]["gate"]["champion_version"] == 1  # the gate compared it with the champion
        (event,) = prefect_events(API, "mlops.drift.detected")
        assert event["payload"]["scores"]["input.image.brightness"] >= 0.4
    finally:
        mlops(project, sources_path, "down")
