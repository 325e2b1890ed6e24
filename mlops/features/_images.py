"""Images: encoded files (PNG, JPEG) -> uint8 HWC arrays, the one decoding validation, training and
`mlops predict` share. Pillow and numpy only."""

from __future__ import annotations

import io
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# PIL modes and the channels their pixels have; a palette image is decoded to RGB.
_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "P": 3, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                  "LA": 2, "PA": 2, "RGBA": 4, "RGBa": 4, "CMYK": 4}


class ImageError(ValueError):
    """A file that is not a usable image: the message says why, `kind` sorts it and `detail` is its own part."""

    def __init__(self, message: str, kind: str = "", detail: str = ""):
        super().__init__(message)
        self.kind, self.detail = kind or message, detail


def decode(data: bytes | None, channels: int) -> np.ndarray:
    """The encoded image `data` as a uint8 ``[H, W, channels]`` array; ImageError says what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    if data is None:
        raise ImageError("file not found", "missing")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a truncated file fails here, not at open
            got = _MODE_CHANNELS.get(img.mode, len(img.getbands()))
            if got != channels:
                raise ImageError(f"has {got} channel(s) (mode {img.mode}), not data.image.channels={channels}",
                                 "channels", f"{got} channel(s), mode {img.mode}")
            return np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8).reshape(
                img.height, img.width, channels)
    except UnidentifiedImageError:
        raise ImageError("is not a PNG or JPEG image (cannot be decoded)", "undecodable") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"is truncated or corrupt ({exc})", "corrupt", str(exc)) from None


def decode_all(frame: pd.DataFrame, channels: int) -> list[np.ndarray]:
    """Every row's image, decoded; the first bad file raises ImageError naming it (validation ran before)."""
    out = []
    for name, data in zip(frame["file"] if "file" in frame else range(len(frame)), frame["image"], strict=True):
        try:
            out.append(decode(data, channels))
        except ImageError as exc:
            raise ImageError(f"{name} {exc}") from None
    return out


def read_images(path: Path, channels: int) -> tuple[list[str], list[np.ndarray]]:
    """Image files to score (`mlops predict --input`): one file, or a folder's images (sorted, recursively),
    decoded to uint8 HWC arrays. Raises ImageError naming every file that cannot be used."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                 and p.suffix.lower() in IMAGE_SUFFIXES
                                                 and not p.name.startswith("."))
    if not files:
        raise ImageError(f"{path} holds no {', '.join(IMAGE_SUFFIXES)} file")
    names, arrays, bad = [], [], []
    for f in files:
        name = str(f.relative_to(path)) if path.is_dir() else f.name
        try:
            arrays.append(decode(f.read_bytes(), channels))
            names.append(name)
        except ImageError as exc:
            bad.append(f"{name} {exc}")
    if bad:
        raise ImageError("; ".join(bad))
    return names, arrays
