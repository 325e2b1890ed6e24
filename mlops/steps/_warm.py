"""What the steps import inside their functions (training, ONNX export, validation and profiling, the model
server's client): loaded ahead of the steps where a process can afford it (`warm_imports`).

Two users: `mlops up` imports them in a thread while the Prefect server and the model server start, and the
level-1+ runner's forkserver (mlops.flows._serve) preloads them, so that no flow run pays for them. Not Prefect:
it reads its settings when imported, and the callers set them first. A name not installed is skipped.
"""

from __future__ import annotations

import importlib

WARM_LIBRARIES = ("mlops.steps", "pandas", "torch", "lightning.pytorch", "torchmetrics", "torch.onnx", "onnx",
                  "onnxruntime", "whylogs", "tritonclient.http", "sklearn.model_selection", "mlops.training",
                  "mlops.data", "mlops.monitoring._profiler")


def warm_imports(modules: tuple[str, ...] | list[str] = ()) -> None:
    """Import WARM_LIBRARIES, then `modules` (the stack's flavor implementations and what they import on first
    use: Stack.implementation_modules). A module that fails here fails again, with its error, where a step
    imports it."""
    for name in (*WARM_LIBRARIES, *modules):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - see the docstring
            continue
