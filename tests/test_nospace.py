"""No space left while registering, exporting or publishing: a real full file system (a small tmpfs mounted under
the state directory), the real model store, the served repository's publish and the `inprocess` server flavor.

Each write fails with ENOSPC for real; what is checked: a DiskFull (one paragraph naming the folder and "no space
left"), no half-written version, export or published folder, and the previous champion still served.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from _inprocess_server import inprocess_stack

from mlops import steps
from mlops._atomic import DiskFull
from mlops._layout import Layout
from mlops.artifacts import RegisteredVersion
from mlops.errors import MlopsError
from mlops.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
KB = 1024


@contextmanager
def small_disk(where: Path, size_kb: int = 256) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` mounted at ``where`` (root only; the test is skipped where mount is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path) -> Path:
    """Take every free block of ``disk``; returns the filler, whose removal frees them again."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: the write that fails is ours, not close()'s
        try:
            while True:
                fh.write(b"\0" * 4 * KB)
        except OSError:
            pass
    return filler


_stack = inprocess_stack  # the churn recipe on the in-process server, state under tmp_path


def _register(stack: Stack, key: str, size: int = 1 * KB):
    ckpt = stack.state_dir.parent / f"{key}.ckpt"
    ckpt.write_bytes(os.urandom(size))
    return stack.model_store.register(stack.cfg.name, {"model.ckpt": ckpt}, {"key": key, "metrics": {"test_acc": 0.8}})


def _assert_one_paragraph(exc: MlopsError, folder: Path) -> None:
    msg = str(exc)
    assert "no space left on the device while writing" in msg and str(folder) in msg and "\n" not in msg
    assert "the served model keeps serving" in msg and "`df -h" in msg
    assert exc.exit_code == 1 and isinstance(exc.__cause__, OSError)


def test_register_on_a_full_disk_leaves_no_version_and_the_champion_serving(tmp_path, inprocess_server):
    stack = _stack(tmp_path)
    name, store = stack.cfg.name, stack.model_store
    with small_disk(Layout(stack.state_dir).registry) as disk:
        steps.promote(stack, _register(stack, "k1").version, by="test")
        filler = fill(disk)
        with pytest.raises(DiskFull) as info:
            _register(stack, "k2", size=64 * KB)
        versions = disk / name / "versions"
        _assert_one_paragraph(info.value, versions)
        assert "churn version 2" in str(info.value)
        assert sorted(p.name for p in versions.iterdir()) == ["1"]  # no 2, no .incoming-*
        assert [v.version for v in store.versions(name)] == [1] and store.aliases(name) == {"champion": 1}
        assert stack.server.answering_version() == 1
        # Space again: the same registration succeeds, with the number the failed one did not take.
        filler.unlink()
        assert _register(stack, "k2", size=64 * KB).version == 2


def test_export_on_a_full_disk_leaves_no_export_and_the_champion_serving(tmp_path, inprocess_server):
    stack = _stack(tmp_path)
    name = stack.cfg.name
    v1, v2 = _register(stack, "k1"), _register(stack, "k2", size=64 * KB)
    # The in-process flavor exports under <state>/inprocess/exports/<model>: that folder is the small disk.
    exports = stack.state_dir / "inprocess" / "exports" / name
    with small_disk(exports) as disk:
        steps.promote(stack, v1.version, by="test")
        fill(disk)
        with pytest.raises(DiskFull) as info:
            steps.export(stack, RegisteredVersion(model=name, version=v2.version, path=str(v2.path)))
        assert "the export of churn version 2" in str(info.value) and "no space left" in str(info.value)
        assert sorted(p.name for p in disk.iterdir() if p.name != "filler") == ["1"]
        assert stack.server.answering_version() == 1 and stack.model_store.aliases(name)["champion"] == 1


def test_publishing_into_a_full_served_repository_leaves_the_served_versions_as_they_were(tmp_path):
    from mlops.serving import _repository

    repo = tmp_path / "models"
    signature = {"inputs": [{"name": "x", "dtype": "FP32", "shape": [-1, 3]}], "outputs": []}
    small, big = tmp_path / "small.onnx", tmp_path / "big.onnx"
    small.write_bytes(os.urandom(2 * KB))
    big.write_bytes(os.urandom(96 * KB))
    with small_disk(repo / "m") as disk:
        _repository.publish(repo, "m", 1, small, signature)
        fill(disk)
        with pytest.raises(DiskFull) as info:
            _repository.publish(repo, "m", 2, big, signature)
        _assert_one_paragraph(info.value, disk)
        assert "m version 2 for serving" in str(info.value)
        assert _repository.published_versions(repo, "m") == [1]
        assert not [p for p in disk.iterdir() if p.name.startswith(".publishing-")]
        _repository.verify(disk / "1")  # the served version is intact
