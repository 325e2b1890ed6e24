"""Cache and lineage keys derived from the validated config (the flow and `mlops plan` use them)."""

from __future__ import annotations

import hashlib
import json

from mlops.recipe.schema import Config


def training_key(cfg: Config, fingerprint: str, warm_from: int | None = None) -> str:
    """What determines the trained weights: data + model + compute + seed, and the version a warm start
    (`model.init_from: champion`) begins with. Serving/target don't."""
    relevant = cfg.model_dump(mode="json", include={"data", "model", "compute", "seed"})
    relevant["data"].pop("checks", None)
    what: dict = {"cfg": relevant, "data": fingerprint}
    if warm_from is not None:
        what["warm_from"] = warm_from
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def config_hash(cfg: Config) -> str:
    return "sha256:" + hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()
