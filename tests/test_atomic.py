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


def test_a_template_is_built_once_and_each_new_file_is_a_copy_of_it(tmp_path):
    built = []

    def build(tmp):
        built.append(tmp)
        tmp.write_bytes(b"migrated")

    template = tmp_path / "cache" / "tool-1.0.db"
    assert _atomic.copy_of_template(tmp_path / "a" / "tool.db", template, build)
    assert _atomic.copy_of_template(tmp_path / "b" / "tool.db", template, build)
    assert len(built) == 1 and template.read_bytes() == b"migrated"
    assert (tmp_path / "a" / "tool.db").read_bytes() == (tmp_path / "b" / "tool.db").read_bytes() == b"migrated"
    (tmp_path / "a" / "tool.db").write_bytes(b"a project's own rows")
    assert not _atomic.copy_of_template(tmp_path / "a" / "tool.db", template, build)  # an existing file is kept
    assert (tmp_path / "a" / "tool.db").read_bytes() == b"a project's own rows"


def test_a_failed_template_build_leaves_no_template_and_no_file(tmp_path):
    def build(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("migration failed")

    with pytest.raises(RuntimeError):
        _atomic.copy_of_template(tmp_path / "p" / "tool.db", tmp_path / "cache" / "t.db", build)
    assert not (tmp_path / "p" / "tool.db").exists()
    assert os.listdir(tmp_path / "cache") == []


def test_the_prefect_and_mlflow_templates_are_at_their_heads(tmp_path):
    # Made in the tool's own way (Alembic through every revision); a copy is a database the tool opens as is.
    # The machine's own cache: built by the first test or `up` that needs it, as for a user.
    import sqlite3

    from mlops._layout import Layout
    from mlops.recipe.schema import MlflowTracking
    from mlops.targets._prefect import database_template, seed_database
    from mlops.tracking._mlflow import MlflowTracker

    assert seed_database(tmp_path / "p") and not seed_database(tmp_path / "p")
    assert database_template().is_file()
    with sqlite3.connect(Layout(tmp_path / "p").prefect_db) as con:
        (head,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
        assert con.execute("SELECT count(*) FROM flow_run").fetchone() == (0,)
    from alembic.script import ScriptDirectory
    from prefect.server.database import provide_database_interface

    versions = provide_database_interface().orm.versions_dir  # the SQLite branch of Prefect's migrations
    assert [head] == ScriptDirectory(str(versions.parent), version_locations=[str(versions)]).get_heads()

    tracker = MlflowTracker(MlflowTracking(flavor="mlflow", experiment="e"), tmp_path / "q")
    run = tracker.start_run("r", {})
    assert tracker.client.get_run(run).info.experiment_id == tracker._experiment_id()
    assert len(list(database_template().parent.glob("mlflow-*.db"))) == 1


def test_without_a_writable_cache_the_tool_makes_its_own_file(tmp_path):
    (tmp_path / "ro").write_text("a file where the cache folder would be")
    assert not _atomic.copy_of_template(tmp_path / "p" / "tool.db", tmp_path / "ro" / "cache" / "t.db",
                                        lambda tmp: pytest.fail("no template is built without a cache"))
    assert not (tmp_path / "p" / "tool.db").exists()
