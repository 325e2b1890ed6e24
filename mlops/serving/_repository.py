"""Triton model repositories: the one the local server reads, and a stock one.

Local layout (python backend holding an onnxruntime session, because the
Triton bundled with nvidia-pytriton has no onnxruntime backend)::

    <repo>/<model>/config.pbtxt          backend "python", names the versions to load (verified ones only)
    <repo>/<model>/<version>/model.onnx
    <repo>/<model>/<version>/model.py     copied from _backend_model.py
    <repo>/<model>/<version>/__pycache__/ its bytecode, written at publish (see _compile)
    <repo>/<model>/<version>/signature.json
    <repo>/<model>/<version>/MANIFEST.json   sha256 of the three files above (written after them)
    <repo>/<model>/<version>/COMMITTED       sha256 of MANIFEST.json (written last)

Stock layout (what a stock Triton container loads with its onnxruntime backend)::

    <dest>/<model>/config.pbtxt          platform "onnxruntime_onnx"
    <dest>/<model>/<version>/model.onnx
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import py_compile
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mlops._atomic import disk_full_is_an_error, fsync_path, fsync_tree, sha256_file, write_atomic
from mlops.errors import RegistryError
from mlops.recipe.schema import ServingConfig

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

BACKEND_MODEL = Path(__file__).with_name("_backend_model.py")
# Signature dtypes as model_config_pb2.DataType names (the enum is imported lazily, see _model_config_pb2).
_TRITON_TYPE = {"FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "FP64": "TYPE_FP64", "UINT8": "TYPE_UINT8",
                "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
                "BOOL": "TYPE_BOOL", "BYTES": "TYPE_STRING"}


MANIFEST = "MANIFEST.json"
COMMITTED = "COMMITTED"
_LOCK = ".publish.lock"


def publish(repo: Path, model_name: str, version: int, onnx_path: Path, signature: dict) -> Path:
    """Publish ``version`` of ``model_name`` into the repository; returns the verified version folder.

    In order: the files, then ``MANIFEST.json`` (the sha256 of each file, computed
    from the *source*, so a corrupted copy cannot vouch for itself), then the
    ``COMMITTED`` marker (the sha256 of the manifest). The three are written in a
    ``.publishing-*`` folder renamed into place, and read back through
    :func:`verify` before this returns. Nothing here asks Triton to load.

    Idempotent: the same model.onnx and signature again is a no-op, so a retried
    publish yields exactly one version. A folder left by an interrupted upload
    (no marker, a missing or corrupted file) was never loadable and is replaced.
    A committed version with different content raises: versions are immutable.
    """
    _check_version(version)
    model_dir = Path(repo) / model_name
    version_dir = model_dir / str(version)
    onnx_path = Path(onnx_path)
    wanted = {"model.onnx": sha256_file(onnx_path), "signature.json": _sha256_text(_canonical(signature))}
    with _locked(model_dir):
        _sweep(model_dir)
        if version_dir.exists():
            try:
                manifest = verify(version_dir)
            except RegistryError:
                manifest = _committed_manifest(version_dir)
                if manifest is not None and _differs(manifest, wanted):
                    _raise_immutable(version_dir, model_name, version, _differs(manifest, wanted))
                # Interrupted or damaged, and never loadable: clear it, then publish afresh.
                _discard(version_dir)
            else:
                if differs := _differs(manifest, wanted):
                    _raise_immutable(version_dir, model_name, version, differs)
                return version_dir

        # A full disk is a DiskFull naming the folder; the .publishing-* folder is removed either way.
        with disk_full_is_an_error(model_dir, f"{model_name} version {version} for serving"):
            tmp = Path(tempfile.mkdtemp(prefix=f".publishing-{version}-", dir=model_dir))
            try:
                tmp.chmod(0o755)  # mkdtemp's 0700 would hide the version from a server run as another user
                _copy(onnx_path, tmp / "model.onnx")
                _copy(BACKEND_MODEL, tmp / "model.py")
                (tmp / "signature.json").write_text(_canonical(signature), encoding="utf-8")
                manifest_text = json.dumps({**wanted, "model.py": sha256_file(BACKEND_MODEL)}, indent=2, sort_keys=True)
                (tmp / MANIFEST).write_text(manifest_text + "\n", encoding="utf-8")
                (tmp / COMMITTED).write_text(_sha256_text(manifest_text + "\n") + "\n", encoding="utf-8")
                verify(tmp)  # a copy corrupted on the way is caught here, before it has a version number
                _compile(tmp / "model.py")  # only a verified model.py is compiled
                fsync_tree(tmp)  # on disk before the rename gives the version its number
                os.rename(tmp, version_dir)
                fsync_path(model_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    verify(version_dir)
    return version_dir


def _compile(source: Path) -> None:
    """Write model.py's bytecode now, so the python backend never writes ``__pycache__`` into a served folder.

    Triton re-initializes a loaded version on the next load when its folder changed since it was loaded
    (measured: the stub's first import wrote ``__pycache__``, so every deploy also reloaded the version
    kept for rollback). A hash-checked .pyc stays valid whatever the file times; the stub runs the same
    Python as mlops (``_server._prepare_runtime`` picks it), so the cache name matches.
    """
    py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source), optimization=""),
                       doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)


def verify(version_dir: Path) -> dict[str, str]:
    """Check a published version against its manifest and commit marker; returns the manifest.

    Raises :class:`RegistryError` naming what is wrong: no commit marker (an
    interrupted upload), a manifest that does not match its marker, a missing file
    or a file whose sha256 differs from the manifest. Only a version that passes
    is ever named in config.pbtxt, so only such a version is ever loaded.
    """
    version_dir = Path(version_dir)
    where = f"model version folder {version_dir}"
    marker, manifest_path = version_dir / COMMITTED, version_dir / MANIFEST
    if not marker.is_file() or not manifest_path.is_file():
        missing = COMMITTED if manifest_path.is_file() else f"{MANIFEST} and {COMMITTED}"
        raise RegistryError(f"{where} has no {missing}: its upload never completed, so it is not loaded.")
    manifest_text = manifest_path.read_text(encoding="utf-8")
    if marker.read_text(encoding="utf-8").strip() != _sha256_text(manifest_text):
        raise RegistryError(f"{where}: {MANIFEST} does not match its {COMMITTED} marker, so it is not loaded.")
    manifest = json.loads(manifest_text)
    for name in sorted(manifest):
        path = version_dir / name
        if not path.is_file():
            raise RegistryError(f"{where}: {name} is missing, so it is not loaded.")
        if sha256_file(path) != manifest[name]:
            raise RegistryError(f"{where}: {name} does not match its sha256 in {MANIFEST}, so it is not loaded.")
    return manifest


def published_versions(repo: Path, model_name: str) -> list[int]:
    """Version numbers with a folder in the repository, verified or not (see :func:`verify`)."""
    model_dir = Path(repo) / model_name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def configure(repo: Path, model_name: str, versions: Sequence[int], signature: dict, serving: ServingConfig,
              monitoring: dict[str, str] | None = None) -> str:
    """Point config.pbtxt at ``versions`` (each verified first); returns the previous text ("" if none).

    The file is replaced with ``os.replace``, never edited in place. ``monitoring`` becomes ``mlops.*``
    parameters that turn on traffic capture in model.py (see mlops/monitoring/_capture.py).
    """
    model_dir = Path(repo) / model_name
    for v in versions:
        _check_version(v)
        verify(model_dir / str(v))
    path = model_dir / "config.pbtxt"
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    _replace_text(path, local_config(model_name, versions, signature, serving, monitoring))
    return before


def write_version(
    repo: Path, model_name: str, version: int, onnx_path: Path, signature: dict, serving: ServingConfig
) -> Path:
    """:func:`publish` ``version``, then point config.pbtxt at it alone; returns the version folder.

    Publishing an older version again re-points the config at it. Serving code
    goes through ``mlops.serving.serve_version``, which also keeps the previous
    champion loaded; this is the one-version form for scripts and tests.
    """
    version_dir = publish(repo, model_name, version, onnx_path, signature)
    with _locked(Path(repo) / model_name):
        configure(repo, model_name, [version], signature, serving)
    return version_dir


def local_config(model_name: str, versions: int | Sequence[int], signature: dict, serving: ServingConfig,
                 monitoring: dict[str, str] | None = None) -> str:
    """config.pbtxt for the bundled Triton: the python backend serving exactly ``versions``.

    Triton answers a request that names no version with the highest loaded one,
    so the first of ``versions`` (the champion) must be the highest.
    """
    pb2 = _model_config_pb2()
    versions = [versions] if isinstance(versions, int) else list(versions)
    config = _model_config(model_name, signature, serving)
    config.backend = "python"
    config.version_policy.specific.versions.extend(versions)
    config.instance_group.add(count=serving.instance_count, kind=pb2.ModelInstanceGroup.KIND_CPU)
    config.parameters["intra_op_threads"].string_value = str(serving.intra_op_threads)
    for key, value in (monitoring or {}).items():
        config.parameters[f"mlops.{key}"].string_value = str(value)
    return render_config(config)


def stock_config(model_name: str, signature: dict, serving: ServingConfig) -> str:
    """config.pbtxt for a stock Triton container: its onnxruntime backend reads model.onnx directly."""
    config = _model_config(model_name, signature, serving)
    config.platform = "onnxruntime_onnx"
    config.default_model_filename = "model.onnx"
    # No `kind`: KIND_AUTO puts the instances on a GPU when the
    # container has one, which is why one would run a stock Triton.
    config.instance_group.add(count=serving.instance_count)
    config.parameters["intra_op_thread_count"].string_value = str(serving.intra_op_threads)
    config.parameters["inter_op_thread_count"].string_value = "1"
    return render_config(config)


def render_config(config: ModelConfig) -> str:
    """A ``ModelConfig`` message as config.pbtxt text (protobuf text format, as Triton parses it)."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str) -> ModelConfig:
    """config.pbtxt text as a ``tritonclient.grpc.model_config_pb2.ModelConfig`` message."""
    from google.protobuf import text_format

    return text_format.Parse(text, _model_config_pb2().ModelConfig())


def write_stock_repository(
    dest: Path, model_name: str, version: int, onnx_path: Path, signature: dict, serving: ServingConfig
) -> Path:
    """Write a repository a stock Triton loads as is; returns ``dest/<model_name>``."""
    _check_version(version)
    model_dir = Path(dest) / model_name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, model_dir / str(version) / "model.onnx")
    _replace_text(model_dir / "config.pbtxt", stock_config(model_name, signature, serving))
    return model_dir


def _model_config(model_name: str, signature: dict, serving: ServingConfig) -> ModelConfig:
    """What the local and the stock config share (name, tensors, batching): one builder, so the two agree."""
    pb2 = _model_config_pb2()
    config = pb2.ModelConfig(name=model_name, max_batch_size=serving.max_batch_size)
    # The batch dimension is implied by max_batch_size > 0, so dims list the rest: the columns of a tabular
    # input (a request of shape [n, len(columns)] is accepted), else the dims the ONNX graph declares.
    for i in signature["inputs"]:
        dims = [len(i["columns"])] if "columns" in i else list(i["dims"])
        config.input.add(name=i["name"], data_type=_TRITON_TYPE[i["datatype"]], dims=dims)
    for o in signature["outputs"]:
        config.output.add(name=o["name"], data_type=_TRITON_TYPE[o["datatype"]], dims=list(o["dims"]))
    config.dynamic_batching.SetInParent()  # present even when empty: its presence turns dynamic batching on
    config.dynamic_batching.preferred_batch_size.extend(serving.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = serving.max_queue_delay_us
    return config


def _model_config_pb2():
    # Imported when a config is built, not with the module: tritonclient.grpc brings grpc (~0.13 s).
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _check_version(version: int) -> None:
    # Triton treats only positive integer folder names as versions.
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"model version must be a positive integer, got {version!r}.")


def _canonical(signature: dict) -> str:
    return json.dumps(signature, indent=2, sort_keys=True) + "\n"


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _differs(manifest: dict[str, str], wanted: dict[str, str]) -> list[str]:
    # model.py is framework code, not part of a version's identity, so an
    # upgraded mlops can still serve versions it published before.
    return [name for name in sorted(wanted) if manifest.get(name) != wanted[name]]


def _raise_immutable(version_dir: Path, model_name: str, version: int, differs: list[str]) -> None:
    raise RegistryError(
        f"version {version} of model {model_name!r} is already published at {version_dir} with a different "
        f"{' and '.join(differs)}; published versions are immutable. Publish the new model as a new version."
    )


def _committed_manifest(version_dir: Path) -> dict[str, str] | None:
    """The manifest of a version that was committed (its marker matches), even if a file was damaged since."""
    try:
        text = (version_dir / MANIFEST).read_text(encoding="utf-8")
        if (version_dir / COMMITTED).read_text(encoding="utf-8").strip() == _sha256_text(text):
            return json.loads(text)
    except (OSError, ValueError):
        pass
    return None


def _discard(path: Path) -> None:
    # Renamed out of the way first, so the version number is free at once even if the delete is slow.
    aside = path.with_name(f".discarded-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _sweep(model_dir: Path) -> None:
    """Remove what interrupted publishes left behind; only called under the publish lock."""
    for p in model_dir.iterdir():
        if p.is_dir() and p.name.startswith((".publishing-", ".discarded-")):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    """One publisher (or server re-pointing) per model at a time, across processes."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / _LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy(src: Path, dst: Path) -> None:
    # One function for publish's copies (fsynced with the folder by fsync_tree), so tests can break a copy.
    shutil.copyfile(src, dst)


def _replace_text(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    write_atomic(path, text)
