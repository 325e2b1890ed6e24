"""ChurnNet: a small LightningModule over the features mlops feeds it (see mlops/training/_family.py).

mlops passes `in_features` (the width of the preprocessed feature matrix) and `num_classes`; batches are
`(x float32 [B, in_features], y int64 [B])`. It logs val_loss (early stopping) and test_acc (the gate).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn


class ChurnNet(pl.LightningModule):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 32, dropout: float = 0.1, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))
        # mlops checks the module on it when the recipe loads, and traces the ONNX export with it.
        self.example_input_array = torch.zeros(2, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # logits; the served graph turns them into probabilities

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        if stage != "train":
            acc = (logits.argmax(dim=1) == y).float().mean()
            self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
