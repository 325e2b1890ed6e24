"""Atomic file writes, the one owner of "a reader sees the old file or the new one, never a mix".

A write goes to a temporary file beside the target (same folder, so same file system and
``os.replace`` is one atomic rename), which is flushed and fsynced, renamed over the target, and
then the folder is fsynced so that the rename itself survives a crash. On any error the temporary
file is removed and the target is left as it was.

    write_atomic(path, data)          bytes or text (UTF-8) the caller already holds
    with atomic_path(path) as tmp:    for writers that want a file name (whylogs, numpy, pandas)
        frame.to_parquet(tmp)
    sha256_file(path)                 a file's sha256, read in chunks
    fsync_path(path)                  fsync one file or folder
    fsync_tree(folder)                fsync a folder and all it holds, before renaming it into place

Temporary files are named ``.<name>.<random>.tmp``: hidden, and never matching a pattern such as
``*.npz`` that a reader globs for. This module is the bottom layer: it imports only the standard
library, so any part of mlops (the serving process included) can use it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "fsync_path", "fsync_tree", "sha256_file", "write_atomic"]


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) so that readers see the old content or the new."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(raw)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it atomically replaces ``path``.

    The temporary file already exists (empty), created with the mode a plain ``open`` would give, so a
    file served to another user (Triton's config.pbtxt) is not left at ``mkstemp``'s 0600. If the block
    raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike[str]) -> None:
    """fsync every file and folder under ``folder``, then ``folder`` itself.

    For folder-level publishes (write a temporary folder, then one rename): the rename is atomic, but
    only this makes sure the files it publishes are on disk, not only in the page cache, when it happens.
    Symlinks are skipped, since fsync would follow them out of the folder.
    """
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                fsync_path(p)
    fsync_path(folder)


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _reserve(path: Path) -> Path:
    # O_EXCL on a random name: two writers of the same target never share a temporary file.
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        except FileExistsError:
            continue
        return tmp
