"""Serving on Triton: export, model repository, the local server and the client; see README.md here."""

from mlops.serving._deploy import (
    deploy_version,
    drain_triton,
    ensure_triton,
    export_version,
    model_statistics,
    predict_rows,
    publish,
    read_rows,
    rollback,
    serve_version,
    served_models,
    serving_state,
    stop_triton,
    triton_live,
)
from mlops.serving._server import base_url as triton_url
from mlops.serving._server import grpc_url as triton_grpc_url
from mlops.serving._server import metrics_url as triton_metrics_url

__all__ = sorted([
    "deploy_version",
    "drain_triton",
    "ensure_triton",
    "export_version",
    "model_statistics",
    "predict_rows",
    "publish",
    "read_rows",
    "rollback",
    "serve_version",
    "served_models",
    "serving_state",
    "stop_triton",
    "triton_grpc_url",
    "triton_live",
    "triton_metrics_url",
    "triton_url",
])
