"""mlops._atomic: the one owner of atomic file writes."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from mlops import _atomic
from mlops._atomic import atomic_path, fsync_tree, sha256_file, write_atomic


def test_written_bytes_and_text_are_exact(tmp_path):
    raw = bytes(range(256)) * 1000 + b"\r\n\x00"
    write_atomic(tmp_path / "a.bin", raw)
    assert (tmp_path / "a.bin").read_bytes() == raw
    write_atomic(tmp_path / "nested" / "b.txt", "grüße\n")  # parents are created; text is UTF-8
    assert (tmp_path / "nested" / "b.txt").read_bytes() == "grüße\n".encode()
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "nested"]  # no temporary file left behind


def test_the_file_gets_the_mode_a_plain_open_gives(tmp_path):
    # Not mkstemp's 0600: Triton may run as another user and must read config.pbtxt.
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "config.pbtxt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "config.pbtxt").stat().st_mode & 0o777 == 0o644


def test_atomic_path_hands_writers_a_file_name(tmp_path):
    target = tmp_path / "frame.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".frame.parquet.") and tmp.suffix == ".tmp"
        assert not target.exists()  # nothing is visible until the block ends
        tmp.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert os.listdir(tmp_path) == ["frame.parquet"]


def test_an_error_inside_leaves_neither_target_nor_temporary_file(tmp_path):
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []


def test_an_existing_target_is_unchanged_when_the_write_fails(tmp_path):
    target = tmp_path / "aliases.json"
    write_atomic(target, b'{"champion": 1}')
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b'{"champion": 2')
            raise RuntimeError("cut short")
    assert target.read_bytes() == b'{"champion": 1}'
    assert os.listdir(tmp_path) == ["aliases.json"]


def test_an_existing_target_is_unchanged_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "aliases.json"
    write_atomic(target, b"old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["aliases.json"]


def test_a_concurrent_reader_never_sees_a_partial_file(tmp_path):
    target = tmp_path / "big.bin"
    # Large enough that a plain rewrite is visibly partial to a reader (several MiB, many write calls).
    versions = [bytes([i]) * (4 << 20) for i in range(4)]
    write_atomic(target, versions[0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def rewrite():
        try:
            i = 0
            while not stop.is_set():
                i += 1
                write_atomic(target, versions[i % len(versions)])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    writer = threading.Thread(target=rewrite)
    writer.start()
    seen = set()
    try:
        for _ in range(200):
            data = target.read_bytes()
            assert data in versions, f"a reader saw {len(data)} bytes that are no complete version"
            seen.add(data[:1])
    finally:
        stop.set()
        writer.join()
    assert not errors
    assert len(seen) > 1  # the reader did run while the content changed
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


def test_sha256_file_matches_hashlib(tmp_path):
    raw = os.urandom(3 << 20)
    (tmp_path / "m.onnx").write_bytes(raw)
    assert sha256_file(tmp_path / "m.onnx") == hashlib.sha256(raw).hexdigest()


def test_fsync_tree_walks_files_and_folders_but_not_symlinks(tmp_path, monkeypatch):
    (tmp_path / "v" / "sub").mkdir(parents=True)
    (tmp_path / "v" / "a").write_text("a")
    (tmp_path / "v" / "sub" / "b").write_text("b")
    (tmp_path / "v" / "link").symlink_to("/")  # fsync would follow it out of the folder
    synced = []
    monkeypatch.setattr(_atomic, "fsync_path", lambda p: synced.append(os.path.relpath(p, tmp_path)))
    fsync_tree(tmp_path / "v")
    assert sorted(synced[:-1]) == ["v/a", "v/sub", "v/sub/b"]
    assert synced[-1] == "v"  # the folder itself last, after what it holds
    assert synced.index("v/sub/b") < synced.index("v/sub")


def test_the_registry_re_exports_the_one_owner():
    import mlops.registry

    assert mlops.registry.write_atomic is write_atomic
    assert mlops.registry.sha256_file is sha256_file
