"""The training path against a plain PyTorch loop, side by side (the baseline of bench/scale.py).

    python bench/_scale_fit.py PROJECT [hydra overrides ...]

    python bench/_scale_fit.py PROJECT REPS TEXTBOOK(0|1) [hydra overrides ...]

Both get the same split (mlops.training.split_frame of the same Parquet file), the same DataLoader (the
framework's `batch_loader` over the module's encoded features: batch_size, shuffle), the same network and
optimizer (a fresh TabularMLP built by the same `from_train`, AdamW with the recipe's lr and weight decay), the
same intra-op threads (what `fit` chooses) and the same number of epochs, each followed by a validation pass
(which the framework needs to pick the best epoch). The plain loop has no Lightning; `fit` is the framework's
`mlops.training.fit` (Lightning Trainer, callbacks, checkpoints, history). Order alternates with REPS; the
fastest of each is kept. TEXTBOOK=1 also times the loop as a tutorial writes it (the stock
`DataLoader(TensorDataset, batch_size, shuffle=True)`, torch's default threads).
Prints one JSON line: CPU seconds per epoch of each, measured in this process. SCALE_FIT_GROUPED=1 also times,
in the same alternation, `plain(grouped=True)` (a diagnostic: the plain loop over a loader that gathers several
steps' rows at once, as the framework's does).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlops.data import read_frame
from mlops.recipe import load
from mlops.training import fit, split_frame
from mlops.training._fit import intra_op_threads
from mlops.training._module import BATCH_ROWS, TabularMLP, batch_loader

_DEFAULT_THREADS = torch.get_num_threads()


def _clock() -> float:
    # CPU seconds of this process, not wall time: the machine is shared (other jobs take the cores in turns), and
    # both sides run on the same threads, so CPU time compares them where wall time mostly measures the neighbours.
    return time.process_time()


def plain(cfg, split, textbook: bool = False, grouped: bool = False) -> tuple[float, float]:
    """(seconds for the epochs, seconds to build the module and the loaders): a plain PyTorch loop. `grouped` (a
    diagnostic, not the baseline): the same steps from a loader that gathers the rows of several steps at once,
    as the framework's TabularDataModule does (BATCH_ROWS). Against the plain loop it shows what that gathering
    saves; against `fit`, what Lightning's bookkeeping costs."""
    torch.manual_seed(cfg.seed)
    t0 = _clock()
    module = TabularMLP.from_train(cfg.model, cfg.data, split.train)
    loader = (lambda ds, shuffle: DataLoader(ds, batch_size=cfg.model.batch_size, shuffle=shuffle)) if textbook \
        else (lambda ds, shuffle: batch_loader(ds, cfg.model.batch_size, shuffle))
    if grouped:
        rows = cfg.model.batch_size * max(1, BATCH_ROWS // cfg.model.batch_size)
        loader = lambda ds, shuffle: _Steps(batch_loader(ds, rows, shuffle), cfg.model.batch_size)  # noqa: E731
    train = loader(TensorDataset(*module.encode(split.train), module.targets(split.train)), True)
    val = loader(TensorDataset(*module.encode(split.val), module.targets(split.val)), False)
    threads = torch.get_num_threads()
    torch.set_num_threads(_DEFAULT_THREADS if textbook else intra_op_threads(module, cfg.model.batch_size))
    t1 = _clock()
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.model.lr, weight_decay=cfg.model.weight_decay)
    for _ in range(cfg.model.max_epochs):
        module.train()
        for numeric, codes, y in train:
            loss = nn.functional.cross_entropy(module._raw(numeric, codes), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        module.eval()
        with torch.no_grad():
            for numeric, codes, y in val:
                nn.functional.cross_entropy(module._raw(numeric, codes), y)
    torch.set_num_threads(threads)
    return _clock() - t1, t1 - t0


class _Steps:
    """A loader that gathers several steps' rows at once (`loader`'s batches), yielding them `size` rows at a time."""

    def __init__(self, loader: DataLoader, size: int):
        self.loader, self.size = loader, size

    def __iter__(self):
        for batch in self.loader:
            yield from zip(*(t.split(self.size) for t in batch))


def framework(cfg, split) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out:
        t0 = _clock()
        result = fit(cfg, split, Path(out))
        return _clock() - t0, result.epochs


def main(argv: list[str]) -> dict[str, float]:
    project, reps, textbook, overrides = Path(argv[0]), int(argv[1]), argv[2] == "1", argv[3:]
    cfg = load(overrides, project, check_data=False)
    frame = read_frame(cfg.data, project)
    split = split_frame(frame, cfg.data, cfg.model.task)
    del frame
    grouped = os.environ.get("SCALE_FIT_GROUPED") == "1"
    plain_s, fit_s, setup, grouped_s = [], [], [], []
    for i in range(reps):
        order = ("plain", "fit", "grouped") if grouped else ("plain", "fit")
        for which in (order if i % 2 == 0 else order[::-1]):
            if which == "grouped":
                s, prep = plain(cfg, split, grouped=True)
                grouped_s.append(s + prep)
            elif which == "plain":
                s, prep = plain(cfg, split)
                plain_s.append(s + prep)
                setup.append(prep)
            else:
                s, epochs = framework(cfg, split)
                assert epochs == cfg.model.max_epochs, f"fit stopped after {epochs} epochs"
                fit_s.append(s)
    e = cfg.model.max_epochs
    extra = {}
    if textbook:
        s, _prep = plain(cfg, split, textbook=True)
        extra = {"textbook_s_per_epoch": (s + _prep) / e}
    if grouped:
        extra |= {"plain_grouped_s_per_epoch": min(grouped_s) / e, "fit_to_grouped": min(fit_s) / min(grouped_s)}
    # Both totals include building the module and encoding the splits (fit does it inside).
    return {"plain_s_per_epoch": min(plain_s) / e, "fit_s_per_epoch": min(fit_s) / e,
            "plain_setup_s": min(setup), "ratio": min(fit_s) / min(plain_s),
            "threads": intra_op_threads(TabularMLP.from_train(cfg.model, cfg.data, split.train.head(1000)),
                                        cfg.model.batch_size), **extra}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])), flush=True)
