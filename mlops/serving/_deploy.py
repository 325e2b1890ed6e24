"""The export and deploy steps, and the serving side of `mlops status` and `mlops predict`."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from mlops._atomic import disk_full_is_an_error, fsync_path, fsync_tree, write_atomic
from mlops._layout import Layout
from mlops.errors import PredictError, RegistryError, ServiceError
from mlops.recipe.schema import Config
from mlops.registry import Registry
from mlops.serving import _client, _repository, _server
from mlops.serving._export import export_onnx


def _repo(state_dir: Path) -> Path:
    return Layout(state_dir).triton_repository


def _url(cfg: Config) -> str:
    return _server.base_url(cfg.serving)


def export_version(cfg: Config, version: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """Write `exports/<model>/<N>/`: model.onnx, signature.json and a stock-Triton repository. Once per version.

    The folder appears by one rename, so a crash never leaves half an export; a second call reuses it.
    """
    layout = Layout(state_dir)
    out = layout.export(cfg.name, version["version"])
    if not out.is_dir():
        # heavy: torch and Lightning, imported on first use (status and predict don't need them).
        from mlops.training import load_module

        mv = Registry(layout.registry).get(cfg.name, version["version"])
        out.parent.mkdir(parents=True, exist_ok=True)
        with disk_full_is_an_error(out.parent, f"the export of {cfg.name} version {version['version']}"):
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".incoming-"))
            try:
                module = load_module(mv.file("model.ckpt"), cfg.model.flavor)
                signature = export_onnx(module, tmp / "model.onnx").to_dict()
                (tmp / "signature.json").write_text(json.dumps(signature, indent=2))
                # The same model.onnx, laid out for a stock Triton container's onnxruntime backend.
                _repository.write_stock_repository(tmp / "triton-onnxruntime", cfg.serving.model_name, mv.version,
                                                   tmp / "model.onnx", signature, cfg.serving)
                fsync_tree(tmp)
                tmp.rename(out)
                fsync_path(out.parent)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return {"model": cfg.name, "version": version["version"], "dir": str(out), "onnx": str(out / "model.onnx"),
            "signature": json.loads((out / "signature.json").read_text()),
            "stock_repository": str(out / "triton-onnxruntime")}


def publish(cfg: Config, state_dir: Path, version: int, onnx_path: Path, signature: dict) -> Path:
    """Publish an exported version into the served repository (files → manifest → commit marker); no load.

    Idempotent; see ``_repository.publish``. Returns the verified version folder.
    """
    return _repository.publish(_repo(state_dir), cfg.serving.model_name, int(version), Path(onnx_path), signature)


def _capture_params(cfg: Config, state_dir: Path) -> dict[str, str] | None:
    """Served traffic is sampled into whylogs windows under monitoring/<model>/<version>/windows."""
    if cfg.monitoring.flavor == "none":
        return None
    return {"monitoring_dir": str(Layout(state_dir).model_monitoring(cfg.name)),
            "sample_rate": str(cfg.monitoring.sample_rate),
            "window_s": str(cfg.monitoring.window_s), "python": sys.executable,
            "profiler": cfg.monitoring.flavor,
            # Where this mlops is imported from: Triton's stub embeds Python and ignores PYTHONPATH, so a
            # checkout run with PYTHONPATH would otherwise capture with another (the installed) mlops.
            "path": str(Path(__file__).resolve().parents[2])}


def serve_version(cfg: Config, state_dir: Path, version: int) -> dict[str, Any]:
    """Make the published ``version`` the one Triton answers with, with no failed request on the way.

    The champion becomes ``version``; the champion it replaces stays loaded
    beside it when its number is lower and its signature the same (Triton sends
    a request that names no version to the highest loaded one), so rolling back
    to it is an unload, not a load. Every version named in config.pbtxt is
    verified against its manifest first; an unverified one is never loaded. If
    Triton cannot load the new version, the old config.pbtxt is put back and the
    old champion keeps answering. Serving the current champion again only makes
    sure it is loaded. Returns, as Triton's load does, once the new version is
    ready: a version it drops unloads in the background (~1.3 s: the python
    backend waits 1 s on the stub's health), and with strict readiness the
    server reports not ready until then, while every request is answered.

    Returns ``{"model", "champion", "previous", "loaded", "endpoint", "triton_url"}``.
    """
    name, url, repo = cfg.serving.model_name, _url(cfg), _repo(state_dir)
    version = int(version)
    model_dir = repo / name
    with _repository._locked(model_dir):
        _repository.verify(model_dir / str(version))
        state = _read_state(state_dir, name)
        champion, previous = state.get("champion"), state.get("previous")
        if version != champion:
            champion, previous = version, champion
        signature = _signature(model_dir, champion)
        loaded = [champion]
        if previous is not None and previous < champion and _keeps(model_dir, previous, signature):
            loaded.append(previous)
        before = _repository.configure(repo, name, loaded, signature, cfg.serving, _capture_params(cfg, state_dir))
        after = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
        ready = {str(m["version"]) for m in served_models(url) if m["name"] == name and m["state"] == "READY"}
        if before != after or not {str(v) for v in loaded} <= ready:
            try:
                # Triton loads the new versions beside the old, then switches and unloads: no gap.
                _server.load(name, url, timeout=cfg.serving.ready_timeout_s, version=champion)
            except ServiceError:
                if before:
                    _repository._replace_text(model_dir / "config.pbtxt", before)
                raise
        _write_state(state_dir, name, {"champion": champion, "previous": previous})
    return {"model": name, "champion": champion, "previous": previous, "loaded": loaded,
            "endpoint": f"{url}/v2/models/{name}/versions/{champion}/infer", "triton_url": url}


def rollback(cfg: Config, state_dir: Path) -> dict[str, Any]:
    """Serve the previous champion again (an unload when it is still loaded, which it is unless its
    signature differed). The rolled-back version becomes the previous one, so a second rollback undoes
    the first. Same result as :func:`serve_version`; raises :class:`RegistryError` if there is no previous.
    """
    state = _read_state(state_dir, cfg.serving.model_name)
    if state.get("previous") is None:
        raise RegistryError(
            f"model {cfg.serving.model_name!r} has no previous served version to roll back to "
            f"(champion: {state.get('champion')})."
        )
    return serve_version(cfg, state_dir, state["previous"])


def serving_state(cfg: Config, state_dir: Path) -> dict[str, Any]:
    """What serving intends: ``{"model", "champion", "previous", "published"}`` (versions in the repository)."""
    name = cfg.serving.model_name
    state = _read_state(state_dir, name)
    return {"model": name, "champion": state.get("champion"), "previous": state.get("previous"),
            "published": _repository.published_versions(_repo(state_dir), name)}


def deploy_version(cfg: Config, exported: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """Publish the exported version and serve it as the champion (zero downtime).

    The registry's champion alias and history are the caller's to move (`Registry.promote`, or
    `Registry.rollback`), after Triton serves the version.
    """
    version = int(exported["version"])
    publish(cfg, state_dir, version, Path(exported["onnx"]), exported["signature"])
    served = serve_version(cfg, state_dir, version)
    return {"endpoint": served["endpoint"], "triton_url": served["triton_url"]}


def ensure_triton(cfg: Config, state_dir: Path) -> None:
    """Start Triton if it is not running. A start (the first, or after Triton died) loads every model that was
    served, at the versions its config.pbtxt names (champion and previous), so serving is back without a deploy."""
    repo = _repo(state_dir)
    repo.mkdir(parents=True, exist_ok=True)
    server = _server.TritonServer(state_dir)
    served = [] if server.pid() is not None else sorted(
        p.stem for p in Layout(state_dir).serving_states.glob("*.json") if (repo / p.stem / "config.pbtxt").is_file())
    server.start(repo, cfg.serving, models=served)


def stop_triton(state_dir: Path, drain_s: float = _server.DRAIN_TIMEOUT_S) -> bool:
    """Drain (readiness false, wait until requests stop, at most ``drain_s`` s), then stop; see `drain_triton`."""
    return _server.TritonServer(state_dir).stop(drain_s=drain_s)


def drain_triton(state_dir: Path, timeout: float = _server.DRAIN_TIMEOUT_S) -> dict[str, Any] | None:
    """Turn the running server's readiness false and wait until its traffic stops; None if it is not running.

    The models keep answering; only a stop (or a restart) makes the server ready again.
    Returns ``{"ready": False, "requests": <answered meanwhile>, "waited_s"}``.
    """
    return _server.TritonServer(state_dir).drain(timeout=timeout)


def model_statistics(url: str, name: str = "") -> list[dict[str, Any]]:
    """Triton's statistics per loaded model version (all models if ``name`` is ""), averaged per request.

    Each: ``{"name", "version", "requests", "failures", "rows", "executions", "rows_per_execution",
    "queue_ms", "compute_ms", "request_ms"}``; times are means per successful request, ``compute_ms``
    is input + inference + output in the model. Counts are since the version was loaded.
    """
    out = []
    for s in _server.statistics(url, name).get("model_stats", []):
        if s["name"] == _server.DRAIN_MODEL:
            continue
        inf = s["inference_stats"]
        ok = int(inf["success"]["count"])
        per = (lambda ns: round(int(ns) / ok / 1e6, 3)) if ok else (lambda ns: 0.0)
        rows, executions = int(s.get("inference_count", 0)), int(s.get("execution_count", 0))
        out.append({
            "name": s["name"], "version": s["version"], "requests": ok, "failures": int(inf["fail"]["count"]),
            "rows": rows, "executions": executions,
            "rows_per_execution": round(rows / executions, 2) if executions else 0.0,
            "queue_ms": per(inf["queue"]["ns"]),
            "compute_ms": per(int(inf["compute_input"]["ns"]) + int(inf["compute_infer"]["ns"])
                              + int(inf["compute_output"]["ns"])),
            "request_ms": per(inf["success"]["ns"]),
        })
    return sorted(out, key=lambda m: (m["name"], int(m["version"] or 0)))


def _state_path(state_dir: Path, name: str) -> Path:
    return Layout(state_dir).serving_state(name)


def _read_state(state_dir: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads(_state_path(state_dir, name).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _write_state(state_dir: Path, name: str, state: dict[str, Any]) -> None:
    write_atomic(_state_path(state_dir, name), json.dumps(state, indent=2, sort_keys=True) + "\n")


def _signature(model_dir: Path, version: int) -> dict:
    return json.loads((model_dir / str(version) / "signature.json").read_text(encoding="utf-8"))


def _keeps(model_dir: Path, version: int, signature: dict) -> bool:
    """Whether ``version`` can stay loaded beside a champion of ``signature``: verified, same tensors."""
    try:
        _repository.verify(model_dir / str(version))
        return _signature(model_dir, version) == signature
    except (RegistryError, OSError, ValueError):
        return False


def triton_live(url: str) -> bool:
    return _server._http_ok(url.rstrip("/") + "/v2/health/live")


def served_models(url: str) -> list[dict[str, Any]]:
    return [m for m in _server.served_models(url) if m.get("version")]


def read_rows(path: Path) -> pd.DataFrame | Any:
    """Rows to score from a CSV file, or a JSON list of objects (or {"rows": [...]}); for a model that takes
    tensors, an array from a .npy file or a JSON list of lists, or a JSON object of them by input name."""
    import numpy as np

    if not path.is_file():
        raise PredictError(f"--input {path}: no such file. Give a .csv with a header row, or a .json list of objects.")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, list) and data and all(isinstance(r, list) for r in data):
                return np.asarray(data)
            if isinstance(data, dict) and "rows" not in data and all(isinstance(v, list) for v in data.values()):
                return {k: np.asarray(v) for k, v in data.items()}
            rows = data.get("rows") if isinstance(data, dict) else data
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError('expected a list of objects, e.g. [{"col": 1.0, ...}], or {"rows": [...]}')
            return pd.DataFrame(rows)
        return pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise PredictError(f"--input {path}: cannot be read: {exc}.") from None


def predict_rows(cfg: Config, project: Path, frame: pd.DataFrame, state_dir: Path | None = None) -> dict[str, Any]:
    """Score raw rows on the served version, after checking them against its signature."""
    state_dir = state_dir or (project / cfg.target.state_dir).resolve()
    name, url = cfg.serving.model_name, _url(cfg)
    if not triton_live(url):
        raise ServiceError(f"Triton is not running at {url}; start it with `mlops up recipe={cfg.name}`.")
    # A request naming no version goes to the highest loaded one: that is the champion.
    ready = [int(m["version"]) for m in served_models(url) if m["name"] == name and m["state"] == "READY"]
    current = {"version": max(ready)} if ready else None
    if current is None:
        raise ServiceError(f"model {name!r} is not loaded on Triton at {url}; run `mlops up recipe={cfg.name}`.")
    signature = json.loads((_repo(state_dir) / name / str(current["version"]) / "signature.json").read_text())
    result = _client.predict(url, name, signature, frame, version=current["version"])
    return {"model": name, "version": int(current["version"]), **result}
