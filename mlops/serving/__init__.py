"""Serving on Triton: export, model repository, the local server and the client; see README.md here."""

from mlops.serving._deploy import (
    deploy_version,
    ensure_triton,
    export_version,
    predict_rows,
    read_rows,
    served_models,
    stop_triton,
    triton_live,
)

__all__ = sorted([
    "deploy_version",
    "ensure_triton",
    "export_version",
    "predict_rows",
    "read_rows",
    "served_models",
    "stop_triton",
    "triton_live",
])
