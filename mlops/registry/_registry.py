"""A file-system model registry: immutable, numbered versions and movable aliases.

Layout under ``<state>/registry/<model>/``::

    versions/<N>/            one folder per version, read-only once it exists
        lineage.json         metrics, config hash, data fingerprint, run ids, key
        MANIFEST.json        sha256 of every file (written last, before the rename)
        ...                  the files handed to register() (checkpoint, history, profile)
    aliases.json             {"champion": N, ...}
    champions.json           the champion stack: promote pushes, rollback pops (with who and when)
    status.json              {"N": {"status": candidate|registered|rejected, "reasons": [...]}}

A version appears by one ``os.rename`` of a fully written temporary folder,
so a reader never sees half a version; numbers are allocated under a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops._atomic import disk_full_is_an_error, fsync_path, fsync_tree, sha256_file, write_atomic
from mlops.errors import RegistryError


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    path: Path
    lineage: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.version}"

    def file(self, name: str) -> Path:
        return self.path / name


class Registry:
    def __init__(self, root: Path):
        self.root = root

    def _model_dir(self, model: str) -> Path:
        return self.root / model

    @contextmanager
    def _lock(self, model: str) -> Iterator[None]:
        d = self._model_dir(model)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def versions(self, model: str) -> list[ModelVersion]:
        vdir = self._model_dir(model) / "versions"
        if not vdir.is_dir():
            return []
        out = []
        for p in vdir.iterdir():
            if p.name.isdigit() and (p / "lineage.json").is_file():
                out.append(ModelVersion(model, int(p.name), p, json.loads((p / "lineage.json").read_text())))
        return sorted(out, key=lambda v: v.version)

    def models(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def find(self, model: str, key: str) -> ModelVersion | None:
        """The version registered from exactly this training key, if any."""
        return next((v for v in self.versions(model) if v.lineage.get("key") == key), None)

    def get(self, model: str, ref: int | str) -> ModelVersion:
        """`ref` is a version number or an alias (e.g. "champion", "latest")."""
        versions = self.versions(model)
        if not versions:
            raise RegistryError(f"model {model!r} has no registered versions under {self.root}; run `mlops up` first.")
        if isinstance(ref, str) and not ref.isdigit():
            if ref == "latest":
                return versions[-1]
            aliases = self.aliases(model)
            if ref not in aliases:
                raise RegistryError(f"model {model!r} has no alias {ref!r}; aliases: {sorted(aliases) or 'none'}.")
            ref = aliases[ref]
        for v in versions:
            if v.version == int(ref):
                return v
        raise RegistryError(f"model {model!r} has no version {ref}; versions: {[v.version for v in versions]}.")

    def register(self, model: str, files: dict[str, Path], lineage: dict[str, Any]) -> ModelVersion:
        """Create the next version from `files` (name in the version -> source path).

        Idempotent on ``lineage["key"]``: registering the same key again returns the existing version.
        """
        with self._lock(model):
            key = lineage.get("key")
            if key and (existing := self.find(model, key)) is not None:
                return existing
            vdir = self._model_dir(model) / "versions"
            vdir.mkdir(parents=True, exist_ok=True)
            number = max((v.version for v in self.versions(model)), default=0) + 1
            # A full disk is a DiskFull naming the folder; the half-written version is removed either way.
            with disk_full_is_an_error(vdir, f"{model} version {number}"):
                tmp = Path(tempfile.mkdtemp(dir=vdir, prefix=".incoming-"))
                try:
                    for name, src in files.items():
                        shutil.copy2(src, tmp / name)
                    full = {**lineage, "model": model, "version": number, "registered_at": time.time()}
                    (tmp / "lineage.json").write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
                    manifest = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
                    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
                    for p in tmp.iterdir():
                        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                    fsync_tree(tmp)  # the files are on disk before the rename publishes them
                    os.rename(tmp, vdir / str(number))
                    fsync_path(vdir)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            return ModelVersion(model, number, vdir / str(number), full)

    def verify(self, mv: ModelVersion) -> None:
        manifest = json.loads(mv.file("MANIFEST.json").read_text())
        for name, digest in manifest.items():
            if sha256_file(mv.file(name)) != digest:
                raise RegistryError(f"{mv.ref}: {name} does not match its checksum; the version is corrupt.")

    def aliases(self, model: str) -> dict[str, int]:
        p = self._model_dir(model) / "aliases.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def set_alias(self, model: str, alias: str, version: int) -> None:
        with self._lock(model):
            self.get(model, version)
            aliases = self.aliases(model)
            aliases[alias] = version
            write_atomic(self._model_dir(model) / "aliases.json", json.dumps(aliases, indent=2, sort_keys=True))

    # ------------------------------------------------------------ status and champion history
    STATUSES = ("candidate", "registered", "rejected")

    def statuses(self, model: str) -> dict[int, dict[str, Any]]:
        """Each version's status; a version without an entry is `registered`."""
        p = self._model_dir(model) / "status.json"
        raw = json.loads(p.read_text()) if p.is_file() else {}
        return {v.version: raw.get(str(v.version), {"status": "registered", "reasons": []})
                for v in self.versions(model)}

    def set_status(self, model: str, version: int, status: str, reasons: list[str] | tuple[str, ...] = ()) -> None:
        if status not in self.STATUSES:
            raise ValueError(f"status must be one of {self.STATUSES}, got {status!r}")
        with self._lock(model):
            self.get(model, version)
            p = self._model_dir(model) / "status.json"
            raw = json.loads(p.read_text()) if p.is_file() else {}
            raw[str(version)] = {"status": status, "reasons": list(reasons), "at": time.time()}
            write_atomic(p, json.dumps(raw, indent=2, sort_keys=True))

    def champions(self, model: str) -> list[dict[str, Any]]:
        """The champion stack, oldest first; the last entry is the champion."""
        p = self._model_dir(model) / "champions.json"
        stack = json.loads(p.read_text()) if p.is_file() else []
        champion = self.aliases(model).get("champion")
        if champion is not None and (not stack or stack[-1]["version"] != champion):
            # The alias was moved without the history (Registry.set_alias): record it.
            stack.append({"version": champion, "at": None, "by": "alias"})
        return stack

    def promote(self, model: str, version: int, by: str) -> bool:
        """Make `version` the champion (alias + history). Returns False if it already was."""
        stack = self.champions(model)
        if stack and stack[-1]["version"] == version:
            self.set_alias(model, "champion", version)
            self._write_champions(model, stack)
            return False
        self.set_alias(model, "champion", version)
        self._write_champions(model, [*stack, {"version": version, "at": time.time(), "by": by}])
        return True

    def rollback(self, model: str) -> tuple[int, int]:
        """Pop the champion; the previous one is champion again. Returns (from, to)."""
        stack = self.champions(model)
        if len(stack) < 2:
            raise RegistryError(f"model {model!r} has no previous champion to roll back to "
                                f"(champion history: {[e['version'] for e in stack] or 'empty'}).")
        current, previous = stack[-1]["version"], stack[-2]["version"]
        self.set_alias(model, "champion", previous)
        self._write_champions(model, stack[:-1])
        return current, previous

    def _write_champions(self, model: str, stack: list[dict[str, Any]]) -> None:
        with self._lock(model):
            write_atomic(self._model_dir(model) / "champions.json", json.dumps(stack, indent=2))


class RunLog:
    """Append-only history of pipeline runs: `<state>/runs/<model>.jsonl`, one JSON object a line."""

    def __init__(self, root: Path):
        self.root = root

    def record(self, model: str, entry: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"model": model, "at": time.time(), **entry}, sort_keys=True, default=str) + "\n"
        with open(self.root / f"{model}.jsonl", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(line)
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)

    def runs(self, model: str | None = None) -> list[dict[str, Any]]:
        files = [self.root / f"{model}.jsonl"] if model else sorted(self.root.glob("*.jsonl"))
        out = [json.loads(line) for f in files if f.is_file() for line in f.read_text().splitlines() if line]
        return sorted(out, key=lambda r: r["at"])
