"""A fit killed mid-way (SIGKILL) resumes from its last finished epoch and ends where an uninterrupted fit ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlops.training._fit import LAST, fit
from tests._training_cfg import breast_cancer

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 14


def _cfg():
    frame, cfg = breast_cancer()
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"max_epochs": EPOCHS})})
    from mlops.training import split_frame

    return cfg, split_frame(frame, cfg.data, cfg.model.task)


def last_epoch(path: Path) -> int | None:
    """The epoch last.ckpt was saved after (0-based), or None while there is none."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def kill_when(proc: subprocess.Popen, ckpt: Path, epoch: int, timeout: float = 300) -> int:
    """SIGKILL ``proc``'s process group once ``ckpt`` is at ``epoch`` or later; returns the epoch the killed process
    left it at. That is read after the kill: an epoch takes tens of milliseconds, so the fit may save one or two
    more between the read that saw ``epoch`` and the kill (CI saw 2, then 4)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {ckpt} reached epoch {epoch}")
        if (seen := last_epoch(ckpt)) is not None and seen >= epoch:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            at = last_epoch(ckpt)
            assert at is not None and at >= seen, f"{ckpt} went from epoch {seen} to {at} at the kill"
            return at
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"{ckpt} did not reach epoch {epoch} within {timeout} s")


def test_a_killed_fit_resumes_from_its_last_epoch_and_matches_an_uninterrupted_one(tmp_path):
    cfg, split = _cfg()
    clean = fit(cfg, split, tmp_path / "clean")
    assert not (tmp_path / "clean" / LAST).exists()  # a finished fit leaves no resume point

    out = tmp_path / "killed"
    code = ("import sys; from pathlib import Path; from tests.test_resume import _cfg; from mlops.training import fit\n"
            "cfg, split = _cfg(); fit(cfg, split, Path(sys.argv[1]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    at = kill_when(proc, out / LAST, 2)
    assert at < EPOCHS - 2, "the fit was nearly done before the kill; it proves little"

    resumed = fit(cfg, split, out)
    assert resumed.resumed_after == at + 1
    # The history covers every epoch, the ones before the kill included, and the result is the uninterrupted one's.
    assert [r["epoch"] for r in resumed.history] == [r["epoch"] for r in clean.history]
    assert resumed.epochs == clean.epochs
    for k, v in clean.val_metrics.items():
        assert resumed.val_metrics[k] == pytest.approx(v, abs=1e-4), k
    assert json.loads((out / "history.json").read_text())[0]["epoch"] == 0
    assert not (out / LAST).exists() and not (out / ".fit-checkpoints").exists()
