"""The image data sources (`image_folder`, `image_table`, `sklearn_images`) and the per-file image checks.

An image source yields one row per image: ``file`` (its name, relative to the source), ``image`` (the file's
encoded bytes, PNG or JPEG, exactly as read) and the label. The snapshot keeps the bytes, so its content hash
covers every file and a snapshot is immutable whatever happens to the folder later; decoding (to uint8 HWC
arrays, stacked NHWC by the model) happens in validation and training, never in the source.

YAML::

    data:
      source: image_folder        # or image_table (path + path_column + label_column), or sklearn_images
      path: data/shapes           # data/shapes/<class>/<name>.png
      image: {channels: 3, min_size: 8, max_size: 512}
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.data._source import DataSource, resolve
from mlops.features._images import IMAGE_SUFFIXES, ImageError, decode

if TYPE_CHECKING:
    import pandas as pd

    from mlops.recipe.schema import ImageSpec

SHOWN = 10  # file names a problem line names; the quarantine report.json has every one


def check_images(frame: pd.DataFrame, spec: ImageSpec) -> tuple[list[str], dict[str, str]]:
    """Each image of `frame` decoded and held to `spec` (data.image): (one problem line per kind of fault, naming
    the first files; every bad file with what is wrong with it). Faults: missing, not an image, truncated, wrong
    channel count, too small or too large."""
    bad: dict[str, list[str]] = defaultdict(list)
    every: dict[str, str] = {}
    names = frame["file"].astype(str).tolist() if "file" in frame else [f"row {i}" for i in range(len(frame))]
    for name, data in zip(names, frame["image"], strict=True):
        try:
            array = decode(data, spec.channels)
        except ImageError as exc:
            bad[exc.kind].append(f"{name} ({exc.detail})" if exc.detail else name)
            every[name] = str(exc)
            continue
        h, w = array.shape[:2]
        for kind, out, bound in (("small", min(h, w) < spec.min_size, "min_size"),
                                 ("large", max(h, w) > spec.max_size, "max_size")):
            if out:
                bad[kind].append(f"{name} ({h}x{w})")
                every[name] = f"is {h}x{w}, outside data.image.{bound}={getattr(spec, bound)}"
    say = {"missing": "are missing (named in the table, not found)",
           "undecodable": "cannot be decoded as PNG or JPEG",
           "corrupt": "are truncated or corrupt",
           "channels": f"do not have data.image.channels={spec.channels} channel(s)",
           "small": f"are smaller than data.image.min_size={spec.min_size} pixels",
           "large": f"are larger than data.image.max_size={spec.max_size} pixels"}
    return [f"{len(files)} image file(s) {say[kind]}: {_names(files)}" for kind, files in bad.items()], every


def unseen_labels(frame: pd.DataFrame, target: str, classes: list[Any]) -> list[str]:
    """A problem for each label of `frame` the champion was not trained on (its classes), naming its files."""
    known = {str(c) for c in classes}
    files = frame["file"].astype(str) if "file" in frame else frame.index.astype(str)
    new = sorted({str(v) for v in frame[target].dropna()} - known)
    return [f"class {label!r} is not one the champion was trained on ({', '.join(map(str, classes))}); its "
            f"{int((frame[target].astype(str) == label).sum())} image(s): "
            f"{_names(files[frame[target].astype(str) == label].tolist())}" for label in new]


def _names(files: list[str]) -> str:
    more = f" and {len(files) - SHOWN} more (report.json lists them all)" if len(files) > SHOWN else ""
    return ", ".join(files[:SHOWN]) + more


class ImageSource(DataSource):
    """What the image sources share: the frame's shape, and a check that reads a few rows."""

    def _frame(self, files: list[str], images: list[bytes | None], labels: list[Any]) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"file": files, "image": images, self.config.target: labels})

    def check(self, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
        try:
            self.read(project, nrows=5, cache_dir=cache_dir)
        except FileNotFoundError as exc:
            return [("data.path", f"not found: {exc.args[0] if exc.args else exc}",
                     "paths are relative to the project folder; check the name, or use an fsspec URL")]
        except (ImportError, ValueError, KeyError, OSError) as exc:
            return [("data.path", f"cannot be read: {type(exc).__name__}: {exc}", _HINTS[self.config.source])]
        return []


_HINTS = {"image_folder": "give a folder with one subfolder of PNG/JPEG images per class",
          "image_table": "give a CSV or Parquet table with data.path_column and data.label_column",
          "sklearn_images": "use dataset: digits"}


class ImageFolderSource(ImageSource):
    """`source: image_folder`: `path/<class>/<image>`; the subfolder's name is the label."""

    def read(self, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
             write_cache: bool = False) -> pd.DataFrame:
        import fsspec

        url = resolve(self.config.path, project)
        fs, root = fsspec.core.url_to_fs(url)
        if not fs.isdir(root):
            raise FileNotFoundError(url)
        root = root.rstrip("/")
        found = [(p, info) for p, info in fs.find(root, detail=True).items() if info.get("type") == "file"]
        rows = sorted((p[len(root) + 1:], p) for p, _ in found)
        rows = [(rel, p) for rel, p in rows if rel.count("/") == 1 and rel.lower().endswith(IMAGE_SUFFIXES)
                and not rel.split("/")[1].startswith(".")]
        if not rows:
            raise ValueError(f"{url} has no <class>/<image>{'|'.join(IMAGE_SUFFIXES)} files")
        rows = rows[:nrows] if nrows is not None else rows
        got = fs.cat([p for _, p in rows])  # one call for many files (concurrent on remote stores): {path: bytes}
        images = [got[p] for _, p in rows]
        return self._frame([rel for rel, _ in rows], images, [rel.split("/")[0] for rel, _ in rows])


class ImageTableSource(ImageSource):
    """`source: image_table`: a CSV or Parquet table of image paths (relative to the table) and labels."""

    def read(self, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
             write_cache: bool = False) -> pd.DataFrame:
        import fsspec
        import pandas as pd

        cfg = self.config
        url = resolve(cfg.path, project)
        fs, table = fsspec.core.url_to_fs(url)
        if not fs.isfile(table):
            raise FileNotFoundError(url)
        with fs.open(table, "rb") as fh:
            rows = pd.read_parquet(fh) if table.lower().endswith((".parquet", ".pq")) else pd.read_csv(fh)
        missing = [c for c in (cfg.path_column, cfg.label_column) if c not in rows.columns]
        if missing:
            raise KeyError(f"the table has no column(s) {missing}; it has {list(rows.columns)} (set "
                           "data.path_column and data.label_column)")
        rows = rows if nrows is None else rows.head(nrows)
        base = table.rsplit("/", 1)[0] if "/" in table else ""
        files = rows[cfg.path_column].astype(str).tolist()
        images: list[bytes | None] = []
        for f in files:
            full = f if "://" in f or f.startswith("/") else f"{base}/{f}" if base else f
            try:
                images.append(fs.cat(full))
            except FileNotFoundError:
                images.append(None)  # the validate step names it: the table is read, not judged, here
        return self._frame(files, images, rows[cfg.label_column].tolist())


class SklearnImagesSource(ImageSource):
    """`source: sklearn_images`: scikit-learn's bundled `digits`, 8x8 grey levels 0-16 scaled to uint8 0-255
    and encoded as PNG, so they travel like any image file."""

    def read(self, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
             write_cache: bool = False) -> pd.DataFrame:
        import numpy as np
        from PIL import Image

        from mlops.data._source import _sklearn_frame

        frame = _sklearn_frame(self.config.dataset, cache_dir, write_cache)
        frame = frame if nrows is None else frame.head(nrows)
        pixels = frame.drop(columns="target").to_numpy(dtype=np.float64)
        side = int(round(pixels.shape[1] ** 0.5))
        grey = np.clip(np.rint(pixels * 255.0 / 16.0), 0, 255).astype(np.uint8).reshape(-1, side, side)
        images = []
        for g in grey:
            buf = io.BytesIO()
            Image.fromarray(g).save(buf, format="PNG")
            images.append(buf.getvalue())
        files = [f"{self.config.dataset}/{i:04d}.png" for i in range(len(grey))]
        return self._frame(files, images, frame["target"].astype(int).tolist())
