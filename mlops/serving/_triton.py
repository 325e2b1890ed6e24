"""The `triton` server flavor: NVIDIA Triton with the python backend + onnxruntime here, and a stock
`onnxruntime_onnx` repository written beside each export for real Triton containers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.artifacts import ExportedModel, RegisteredVersion, ServedModel
from mlops.errors import ServiceError
from mlops.serving import _deploy, _server
from mlops.serving._server_api import ModelServer

if TYPE_CHECKING:
    import pandas as pd


class TritonServer(ModelServer):
    @property
    def url(self) -> str:
        return _deploy._url(self.cfg)

    def start(self) -> None:
        _deploy.ensure_triton(self.cfg, self.state_dir)

    def stop(self) -> bool:
        return _deploy.stop_triton(self.state_dir)

    def live(self) -> bool:
        return _deploy.triton_live(self.url)

    def running(self) -> bool:
        return _server.TritonServer(self.state_dir).pid() is not None

    def export(self, version: RegisteredVersion) -> ExportedModel:
        out = _deploy.export_version(self.cfg, {"version": version.version}, self.state_dir)
        return ExportedModel(**out)

    def deploy(self, exported: ExportedModel) -> ServedModel:
        if exported.onnx is None or exported.signature is None:
            # An export of another flavor (a checkpoint, not model.onnx): Triton cannot load it.
            raise ServiceError(f"{exported.model}@{exported.version} was exported without model.onnx (in "
                               f"{exported.dir}); the triton flavor serves only its own exports: run its export.")
        _deploy.publish(self.cfg, self.state_dir, exported.version, Path(exported.onnx), exported.signature)
        served = _deploy.serve_version(self.cfg, self.state_dir, exported.version)
        return ServedModel(model=served["model"], champion=served["champion"], previous=served["previous"],
                           loaded=served["loaded"], endpoint=served["endpoint"], url=served["triton_url"])

    def served(self) -> list[dict[str, Any]]:
        return _deploy.served_models(self.url) if self.live() else []

    def predict(self, rows: pd.DataFrame) -> dict[str, Any]:
        return _deploy.predict_rows(self.cfg, self.state_dir, rows, state_dir=self.state_dir)

    def urls(self) -> dict[str, str]:
        s = self.cfg.serving
        return {"url": self.url, "grpc_url": _server.grpc_url(s), "metrics_url": _server.metrics_url(s)}

    def ports(self) -> list[tuple[str, int]]:
        s = self.cfg.serving
        return [(s.host, s.http_port), (s.host, s.grpc_port), (s.host, s.metrics_port)]

    def statistics(self) -> list[dict[str, Any]]:
        return _deploy.model_statistics(self.url) if self.live() else []
