"""The export and deploy steps, and the serving side of `mlops status` and `mlops predict`."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from mlops.errors import PredictError, ServiceError
from mlops.recipe.schema import Config
from mlops.serving import _repository, _server


def _repo(state_dir: Path) -> Path:
    return state_dir / "triton" / "models"


def _url(cfg: Config) -> str:
    return f"http://{cfg.serving.host}:{cfg.serving.http_port}"


def export_version(cfg: Config, version: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """Write `exports/<model>/<N>/`: model.onnx, signature.json and a stock-Triton repository. Once per version.

    The folder appears by one rename, so a crash never leaves half an export; a second call reuses it.
    """
    out = state_dir / "exports" / cfg.name / str(version["version"])
    if not out.is_dir():
        from mlops.registry import Registry
        from mlops.serving._export import export_onnx
        from mlops.training import load_module

        mv = Registry(state_dir / "registry").get(cfg.name, version["version"])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".incoming-"))
        try:
            signature = export_onnx(load_module(mv.file("model.ckpt")), tmp / "model.onnx").to_dict()
            (tmp / "signature.json").write_text(json.dumps(signature, indent=2))
            # The same model.onnx, laid out for a stock Triton container's onnxruntime backend.
            _repository.write_stock_repository(tmp / "triton-onnxruntime", cfg.serving.model_name, mv.version,
                                               tmp / "model.onnx", signature, cfg.serving)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {"model": cfg.name, "version": version["version"], "dir": str(out), "onnx": str(out / "model.onnx"),
            "signature": json.loads((out / "signature.json").read_text()),
            "stock_repository": str(out / "triton-onnxruntime")}


def deploy_version(cfg: Config, exported: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """Publish the version into the served repository and load it; nothing to do if it is already READY."""
    from mlops.registry import Registry

    name, version, url = cfg.serving.model_name, int(exported["version"]), _url(cfg)
    ready = {str(m["version"]) for m in served_models(url) if m["name"] == name and m["state"] == "READY"}
    if str(version) not in ready:
        _repository.write_version(_repo(state_dir), name, version, Path(exported["onnx"]), exported["signature"],
                                  cfg.serving)
        _server.load(name, url, timeout=cfg.serving.ready_timeout_s)
    Registry(state_dir / "registry").set_alias(cfg.name, "champion", version)
    return {"endpoint": f"{url}/v2/models/{name}/versions/{version}/infer", "triton_url": url}


def ensure_triton(cfg: Config, state_dir: Path) -> None:
    repo = _repo(state_dir)
    repo.mkdir(parents=True, exist_ok=True)
    _server.TritonServer(state_dir).start(repo, cfg.serving)


def stop_triton(state_dir: Path) -> bool:
    return _server.TritonServer(state_dir).stop()


def triton_live(url: str) -> bool:
    return _server._http_ok(url.rstrip("/") + "/v2/health/live")


def served_models(url: str) -> list[dict[str, Any]]:
    return [m for m in _server.served_models(url) if m.get("version")]


def read_rows(path: Path) -> pd.DataFrame:
    """Rows to score from a CSV file, or a JSON list of objects (or {"rows": [...]})."""
    if not path.is_file():
        raise PredictError(f"--input {path}: no such file. Give a .csv with a header row, or a .json list of objects.")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            rows = data.get("rows") if isinstance(data, dict) else data
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError('expected a list of objects, e.g. [{"col": 1.0, ...}], or {"rows": [...]}')
            return pd.DataFrame(rows)
        return pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise PredictError(f"--input {path}: cannot be read: {exc}.") from None


def predict_rows(cfg: Config, project: Path, frame: pd.DataFrame) -> dict[str, Any]:
    """Score raw rows on the served version, after checking them against its signature."""
    from mlops.serving import _client

    state_dir = (project / cfg.target.state_dir).resolve()
    name, url = cfg.serving.model_name, _url(cfg)
    if not triton_live(url):
        raise ServiceError(f"Triton is not running at {url}; start it with `mlops up recipe={cfg.name}`.")
    current = next((m for m in served_models(url) if m["name"] == name and m["state"] == "READY"), None)
    if current is None:
        raise ServiceError(f"model {name!r} is not loaded on Triton at {url}; run `mlops up recipe={cfg.name}`.")
    signature = json.loads((_repo(state_dir) / name / str(current["version"]) / "signature.json").read_text())
    result = _client.predict(url, name, signature, frame)
    return {"model": name, "version": int(current["version"]), **result}
