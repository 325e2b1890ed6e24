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
    "triton_live",
])
