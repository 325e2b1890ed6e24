"""Served traffic → TrafficProfiler, from inside Triton's python backend (``model.py``).

The backend passes what it already has (the input arrays of a dynamic batch and the outputs); this module
samples rows first and only then builds a DataFrame, so an unsampled batch costs one RNG draw. Settings come
from the model's config.pbtxt parameters, written by mlops.serving when monitoring is on:

    parameters { key: "mlops.monitoring_dir" value { string_value: "<state>/monitoring/<model>" } }
    parameters { key: "mlops.sample_rate" value { string_value: "0.1" } }
    parameters { key: "mlops.window_s" value { string_value: "60" } }

Windows land in ``<monitoring_dir>/<version>/windows/<start>.bin``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.monitoring._profiler import make_profiler
from mlops.monitoring._traffic import TrafficProfiler


class Capture:
    def __init__(self, signature: dict[str, Any], windows_dir: Path, sample_rate: float, window_s: float):
        self.signature = signature
        self.sample_rate = sample_rate
        self._rng = np.random.default_rng()
        # The traffic profiler samples again; give it everything we picked.
        self.traffic = TrafficProfiler(make_profiler("whylogs"), windows_dir, sample_rate=1.0, window_s=window_s)

    def observe(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        n = len(next(iter(inputs.values())))
        picked = np.flatnonzero(self._rng.random(n) < self.sample_rate)
        if picked.size == 0:
            return
        cols: dict[str, Any] = {}
        for spec in self.signature["inputs"]:
            block = inputs[spec["name"]][picked]
            for j, column in enumerate(spec["columns"]):
                values = block[:, j]
                if spec["datatype"] == "BYTES":  # Triton hands BYTES as bytes objects
                    values = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
                cols[column] = values
        for spec in self.signature["outputs"]:
            block = outputs[spec["name"]][picked]
            if spec["name"] == "probabilities":
                for j, cls_ in enumerate(self.signature.get("classes", [])):
                    cols[f"output:p({cls_})"] = block[:, j]
            else:
                cols["output:prediction"] = block[:, 0]
        self.traffic.submit(pd.DataFrame(cols))

    def close(self) -> None:
        self.traffic.close()
