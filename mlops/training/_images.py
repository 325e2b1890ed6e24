"""`model.flavor: image_classifier`: a small CNN whose preprocessing is part of the network.

``forward(image)`` takes raw uint8 images NHWC of any height and width and does everything a served request
needs: cast to float and scale to [0, 1], resize (bilinear) to ``image_size``, normalise with the train split's
per-channel mean and std, the CNN, softmax. The export traces exactly this, so the served graph takes pixels.
Training feeds the same preparation, done once per image (images of a set may differ in size), then random
flips and shifts (``model.augment``) in plain torch.

YAML::

    defaults:
      - override /model: image_classifier
    model:
      image_size: 8
      channels: 32          # of the first conv block; doubled per block
      depth: 2
      augment: {shift: 1}
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (torch's own spelling)
from torch.utils.data import TensorDataset

from mlops.features import decode_all
from mlops.errors import DataError
from mlops.recipe.schema import DataConfig, ModelConfig
from mlops.training._module import SplitDataModule, classification_metrics, log_classification
from mlops.training._split import Split


def resize_scale(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1], resized to size x size: the served graph's first steps."""
    x = image.to(torch.float32).permute(0, 3, 1, 2) / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def prepare(images: list[np.ndarray], size: int) -> torch.Tensor:
    """Decoded images (uint8 HWC, sizes may differ) as one float32 NCHW batch, each by :func:`resize_scale`;
    images of one shape go through together."""
    out = torch.empty(len(images), images[0].shape[2] if images else 1, size, size)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(images):
        by_shape.setdefault(a.shape, []).append(i)
    for idx in by_shape.values():
        out[idx] = resize_scale(torch.from_numpy(np.stack([images[i] for i in idx])), size)
    return out


class ImageClassifier(pl.LightningModule):
    """The CNN; build one from data with :meth:`from_train`."""

    serves_images = True  # the export takes the `image` path (mlops/serving/_export.py)

    def __init__(self, *, target: str, classes: list[Any], in_channels: int, image_size: int, mean: list[float],
                 std: list[float], channels: int, depth: int, dropout: float, lr: float, weight_decay: float,
                 flip: bool, shift: int):
        super().__init__()
        self.save_hyperparameters()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, in_channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, in_channels, 1, 1))
        layers: list[nn.Module] = []
        width, side = in_channels, image_size
        for block in range(depth):
            out = channels * 2**block
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if side >= 4:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width * side * side, len(classes)))
        classification_metrics(self, len(classes))

    @classmethod
    def from_train(cls, model: ModelConfig, data: DataConfig, train: pd.DataFrame) -> ImageClassifier:
        """Classes and the per-channel mean and std of the train split's prepared images (nowhere else)."""
        channels = data.image.channels  # type: ignore[attr-defined]
        x = prepare(decode_all(train, channels), model.image_size)  # type: ignore[attr-defined]
        classes = sorted(pd.unique(train[data.target]).tolist())
        if len(classes) < 2:
            raise DataError(f"the training split has a single class {classes} in `data.target={data.target}`; "
                            "a classifier needs at least two. Add images of another class.")
        mean = x.mean(dim=(0, 2, 3)).double()
        std = x.std(dim=(0, 2, 3)).double()
        std[std == 0] = 1.0
        m: Any = model
        return cls(target=data.target, classes=[c.item() if hasattr(c, "item") else c for c in classes],
                   in_channels=channels, image_size=m.image_size, mean=mean.tolist(), std=std.tolist(),
                   channels=m.channels, depth=m.depth, dropout=m.dropout, lr=m.lr, weight_decay=m.weight_decay,
                   flip=m.augment.flip, shift=m.augment.shift)

    @staticmethod
    def datamodule(module: ImageClassifier, split: Split, batch_size: int, num_workers: int = 0) -> ImageDataModule:
        return ImageDataModule(module, split, batch_size, num_workers)

    # ------------------------------------------------------------ the network
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared images (float NCHW in [0, 1], image_size) -> class logits."""
        return self.head(self.features((x - self.mean) / self.std))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw uint8 images NHWC (any height and width) -> class probabilities [N, C]: what is served."""
        return torch.softmax(self.logits(resize_scale(image, self.hparams.image_size)), dim=1)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random left-right flips and shifts (zero padding) per image, drawn from torch's seeded RNG."""
        if self.hparams.flip:
            flip = torch.rand(len(x), device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        s = self.hparams.shift
        if s:
            h, w = x.shape[-2:]
            padded = F.pad(x, (s, s, s, s))
            dy, dx = torch.randint(0, 2 * s + 1, (2, len(x))).tolist()
            x = torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(zip(dy, dx, strict=True))])
        return x

    # ------------------------------------------------------------ Lightning
    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        raw = self.logits(self.augment(x) if stage == "train" else x)
        loss = F.cross_entropy(raw, y)
        log_classification(self, torch.softmax(raw, dim=1), y, stage)
        # sync_dist: every DDP rank stops and checkpoints on the same number (a no-op in one process)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def targets(self, frame: pd.DataFrame) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.hparams.classes)}
        labels = frame[self.hparams.target].tolist()
        unseen = sorted({v for v in labels if v not in index}, key=str)
        if unseen:
            raise DataError(f"labels {unseen} of `data.target={self.hparams.target}` are absent from the training "
                            f"split, which has {self.hparams.classes}. Add images of them or keep "
                            "`data.split.stratify=true`.")
        return torch.tensor([index[v] for v in labels], dtype=torch.long)


class ImageDataModule(SplitDataModule):
    """The three splits' images, decoded and prepared once each, with their class indices."""

    def __init__(self, module: ImageClassifier, split: Split, batch_size: int, num_workers: int = 0):
        super().__init__(split, batch_size, num_workers)
        self.module = module
        self._cache: dict[int, TensorDataset] = {}

    def _dataset(self, frame: pd.DataFrame) -> TensorDataset:
        if id(frame) not in self._cache:
            hp = self.module.hparams
            x = prepare(decode_all(frame, hp.in_channels), hp.image_size)
            self._cache[id(frame)] = TensorDataset(x, self.module.targets(frame))
        return self._cache[id(frame)]


@torch.no_grad()
def predict_images(module: ImageClassifier, images: np.ndarray) -> np.ndarray:
    """Probabilities [N, C] of uint8 NHWC `images`, in torch (what the served graph must equal)."""
    was_training = module.training
    module.eval()
    try:
        return module(torch.from_numpy(np.ascontiguousarray(images))).float().cpu().numpy()
    finally:
        module.train(was_training)
