"""Triton model repositories: the one the local server reads, and a stock one.

Local layout (python backend holding an onnxruntime session, because the
Triton bundled with nvidia-pytriton has no onnxruntime backend)::

    <repo>/<model>/config.pbtxt          backend "python", points at one version
    <repo>/<model>/<version>/model.onnx
    <repo>/<model>/<version>/model.py     copied from _backend_model.py
    <repo>/<model>/<version>/signature.json

Stock layout (what a stock Triton container loads with its onnxruntime backend)::

    <dest>/<model>/config.pbtxt          platform "onnxruntime_onnx"
    <dest>/<model>/<version>/model.onnx
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from mlops.errors import RegistryError
from mlops.registry import sha256_file
from mlops.recipe.schema import ServingConfig

BACKEND_MODEL = Path(__file__).with_name("_backend_model.py")
_TRITON_TYPE = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


def write_version(
    repo: Path, model_name: str, version: int, onnx_path: Path, signature: dict, serving: ServingConfig
) -> Path:
    """Publish ``version`` of ``model_name`` into the local repository and point the config at it.

    The version folder appears whole or not at all (built in a temporary folder
    beside it, then renamed), so a server that loads meanwhile never sees half
    a version. Publishing a version again with the same model.onnx and
    signature only re-points config.pbtxt at it, which is how a rollback looks;
    different content under an existing version number raises, because versions
    are immutable. Returns the version folder.
    """
    _check_version(version)
    model_dir = Path(repo) / model_name
    version_dir = model_dir / str(version)
    model_dir.mkdir(parents=True, exist_ok=True)

    if version_dir.exists():
        _same_or_raise(version_dir, model_name, version, Path(onnx_path), signature)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".publishing-{version}-", dir=model_dir))
        try:
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the version from a server run as another user
            shutil.copyfile(onnx_path, tmp / "model.onnx")
            shutil.copyfile(BACKEND_MODEL, tmp / "model.py")
            (tmp / "signature.json").write_text(_canonical(signature), encoding="utf-8")
            try:
                os.rename(tmp, version_dir)
            except OSError:
                # Another publisher won the race; its content decides.
                if not version_dir.exists():
                    raise
                _same_or_raise(version_dir, model_name, version, Path(onnx_path), signature)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    _replace_text(model_dir / "config.pbtxt", local_config(model_name, version, signature, serving))
    return version_dir


def local_config(model_name: str, version: int, signature: dict, serving: ServingConfig) -> str:
    """config.pbtxt for the bundled Triton: the python backend serving ``version`` only."""
    return "\n".join(
        [
            f'name: "{model_name}"',
            'backend: "python"',
            f"max_batch_size: {serving.max_batch_size}",
            f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}",
            *_tensors(signature),
            _dynamic_batching(serving),
            f"instance_group [ {{ count: {serving.instance_count} kind: KIND_CPU }} ]",
            f'parameters: {{ key: "intra_op_threads" value: {{ string_value: "{serving.intra_op_threads}" }} }}',
            "",
        ]
    )


def stock_config(model_name: str, signature: dict, serving: ServingConfig) -> str:
    """config.pbtxt for a stock Triton container: its onnxruntime backend reads model.onnx directly."""
    return "\n".join(
        [
            f'name: "{model_name}"',
            'platform: "onnxruntime_onnx"',
            'default_model_filename: "model.onnx"',
            f"max_batch_size: {serving.max_batch_size}",
            *_tensors(signature),
            _dynamic_batching(serving),
            # No `kind`: KIND_AUTO puts the instances on a GPU when the
            # container has one, which is why one would run a stock Triton.
            f"instance_group [ {{ count: {serving.instance_count} }} ]",
            f'parameters: {{ key: "intra_op_thread_count" value: {{ string_value: "{serving.intra_op_threads}" }} }}',
            'parameters: { key: "inter_op_thread_count" value: { string_value: "1" } }',
            "",
        ]
    )


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


def _tensors(signature: dict) -> list[str]:
    # The batch dimension is implied by max_batch_size > 0, so dims list the
    # columns only: a request of shape [n, len(columns)] is accepted.
    inputs = [
        f'  {{ name: "{i["name"]}" data_type: {_TRITON_TYPE[i["datatype"]]} dims: [ {len(i["columns"])} ] }}'
        for i in signature["inputs"]
    ]
    outputs = [
        f'  {{ name: "{o["name"]}" data_type: {_TRITON_TYPE[o["datatype"]]} dims: [ {_dims(o)} ] }}'
        for o in signature["outputs"]
    ]
    return ["input [", ",\n".join(inputs), "]", "output [", ",\n".join(outputs), "]"]


def _dims(output: dict) -> str:
    return ", ".join(map(str, output["dims"]))


def _dynamic_batching(serving: ServingConfig) -> str:
    preferred = ", ".join(map(str, serving.preferred_batch_sizes))
    return (
        f"dynamic_batching {{ preferred_batch_size: [ {preferred} ] "
        f"max_queue_delay_microseconds: {serving.max_queue_delay_us} }}"
    )


def _check_version(version: int) -> None:
    # Triton treats only positive integer folder names as versions.
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"model version must be a positive integer, got {version!r}.")


def _canonical(signature: dict) -> str:
    return json.dumps(signature, indent=2, sort_keys=True) + "\n"


def _same_or_raise(version_dir: Path, model_name: str, version: int, onnx_path: Path, signature: dict) -> None:
    # model.py is framework code, not part of a version's identity, so an
    # upgraded mlops can still re-point at versions it published before.
    differs = []
    published_onnx = version_dir / "model.onnx"
    if not published_onnx.exists() or sha256_file(published_onnx) != sha256_file(onnx_path):
        differs.append("model.onnx")
    published_sig = version_dir / "signature.json"
    if not published_sig.exists() or published_sig.read_text(encoding="utf-8") != _canonical(signature):
        differs.append("signature.json")
    if differs:
        raise RegistryError(
            f"version {version} of model {model_name!r} is already published at {version_dir} with a different "
            f"{' and '.join(differs)}; published versions are immutable. Publish the new model as a new version."
        )


def _replace_text(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
