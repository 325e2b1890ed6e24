"""Scoring image files on a served image model (`mlops predict --input FILE_OR_FOLDER`).

The served graph resizes, so images go as they are: uint8 ``[batch, height, width, channels]``, one request per
distinct size (a tensor holds one size), answers put back in file order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlops.errors import PredictError
from mlops.features import IMAGE_SUFFIXES, ImageError, read_images


def is_image_input(path: Path) -> bool:
    """A folder, or a PNG/JPEG file: images to score, not rows."""
    return Path(path).is_dir() or Path(path).suffix.lower() in IMAGE_SUFFIXES


def predict_images(server: Any, path: Path, channels: int | None) -> dict[str, Any]:
    """``{"model", "version", "classes", "files", "labels", "probabilities"}`` for the images at `path` (a file
    or a folder), scored by `server` (a ModelServer); `channels` is the recipe's `data.image.channels`, None
    when the recipe takes rows."""
    if channels is None:
        raise PredictError(f"--input {path}: this recipe's model takes rows, not images; give a .csv, or a .json "
                           "list of objects.")
    if not Path(path).exists():
        raise PredictError(f"--input {path}: no such file or folder. Give an image file (PNG or JPEG) or a folder "
                           "of them, e.g. `--input data/new_images/`.")
    try:
        names, arrays = read_images(Path(path), channels)
    except ImageError as exc:
        raise PredictError(f"--input {path}: {exc}. Give PNG or JPEG files with data.image.channels={channels} "
                           "channel(s).") from None
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        by_shape.setdefault(a.shape, []).append(i)
    probabilities: list[Any] = [None] * len(arrays)
    result: dict[str, Any] = {}
    for idx in by_shape.values():
        result = server.predict(np.stack([arrays[i] for i in idx]))
        for i, p in zip(idx, result["probabilities"], strict=True):
            probabilities[i] = p
    classes = result["classes"]
    labels = [classes[int(np.argmax(p))] for p in probabilities]
    return {"model": result.get("model"), "version": result.get("version"), "classes": classes, "files": names,
            "labels": labels, "probabilities": probabilities}
