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
    with disk_full_is_an_error(path): a full disk (ENOSPC, EDQUOT) while writing under ``path`` becomes an
        MlopsError that names the path, instead of a bare OSError and its traceback

Temporary files are named ``.<name>.<random>.tmp``: hidden, and never matching a pattern such as
``*.npz`` that a reader globs for. This module is near the bottom layer: it imports only the standard
library and mlops.errors, so any part of mlops (the serving process included) can use it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlops.errors import MlopsError

__all__ = ["DiskFull", "atomic_path", "disk_full_is_an_error", "fsync_path", "fsync_tree", "sha256_file",
           "write_atomic"]

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(MlopsError, OSError):
    """No space left (or the quota is used up) where mlops was writing; what was being written was not kept.

    An OSError too (with the errno), so a caller that handled the bare OSError before still does."""

    title = "no space left"


@contextmanager
def disk_full_is_an_error(path: str | os.PathLike[str], what: str = "") -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised in the block into :class:`DiskFull` naming ``path`` (other errors pass through).

    The writers that use it (``atomic_path``, the registry, exports, the served repository) remove their
    temporary files on the way out, so the message can promise that nothing half-written was left.
    """
    try:
        yield
    except DiskFull:
        raise
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        where = exc.filename2 or exc.filename or path  # a copy names its source first, its target second
        full = DiskFull(
            f"no space left on the device while writing {what + ' to ' if what else ''}{where} "
            f"({os.strerror(exc.errno)}). Nothing half-written was kept and what was there before is unchanged "
            f"(the served model keeps serving). Free space on the file system of {path} (`df -h {path}`), "
            "or move the project's state elsewhere with `target.state_dir=...`, then run the command again."
        )
        full.errno = exc.errno
        raise full from exc


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
    with disk_full_is_an_error(path):
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


def copy_of_template(path: str | os.PathLike[str], template: Path, build: Callable[[Path], None]) -> bool:
    """Create ``path``, when it does not exist, as a copy of ``template``; True when it was created.

    For files that are costly to make and the same each time, such as a tool's empty database migrated to its
    version's head: ``build(tmp)`` makes the template once (into a temporary file that then atomically becomes
    ``template``, so two first users at once both end with a whole file), and every later ``path`` is a copy.
    """
    path = Path(path)
    if path.exists():
        return False
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False  # no machine cache here (a read-only home): the tool makes its own file, as without one
    if not template.is_file():
        with disk_full_is_an_error(template, "a template"), atomic_path(template) as tmp:
            build(tmp)
    with disk_full_is_an_error(path), atomic_path(path) as tmp:
        shutil.copyfile(template, tmp)
    return True


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
