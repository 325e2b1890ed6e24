"""`inprocess`: a test-only model-server flavor that serves the checkpoint in the caller's process.

It is the second flavor of the `server` kind (mlops/serving/_server_api.py): registered like an installed
plugin (the `inprocess_server` fixture in tests/conftest.py), selected like any flavor (`serving=inprocess`),
so the steps' gate, promote and rollback logic runs as unit tests with real objects and no Triton.

Its state lives in the state directory, so two Stacks over one state directory agree::

    <state>/inprocess/serving/<model_name>.json   {"running", "champion", "previous", "loaded"}
    <state>/inprocess/exports/<model>/<N>/        model.ckpt (a copy of the version's) + export.json

Exporting copies the checkpoint (no torch); only `predict` loads it (torch, Lightning) and scores the rows
with the training module itself, after checking them against the same signature an ONNX export would carry.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlops._atomic import fsync_path, fsync_tree, sha256_file, write_atomic
from mlops.artifacts import ExportedModel, RegisteredVersion, ServedModel
from mlops.errors import RegistryError, ServiceError
from mlops.flavors import Flavor
from mlops.recipe.schema import ServerConfig
from mlops.registry import Registry
from mlops.serving._server_api import ModelServer

if TYPE_CHECKING:
    import pandas as pd


class InProcessServing(ServerConfig):
    """The in-process test server: nothing to configure beyond the model's name."""

    flavor: Literal["inprocess"] = "inprocess"


# Loaded modules by checkpoint path: a version's export never changes once written, so one load per process.
_MODULES: dict[str, Any] = {}


class InProcessServer(ModelServer):
    @property
    def url(self) -> str:
        return f"inprocess://{self.state_dir}"

    def _state_path(self) -> Path:
        return self.state_dir / "inprocess" / "serving" / f"{self.cfg.serving.model_name}.json"

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_path().read_text())
        except FileNotFoundError:
            return {"running": False, "champion": None, "previous": None, "loaded": []}

    def _write(self, state: dict[str, Any]) -> None:
        write_atomic(self._state_path(), json.dumps(state, indent=2, sort_keys=True) + "\n")

    def _export_dir(self, version: int) -> Path:
        return self.state_dir / "inprocess" / "exports" / self.cfg.name / str(version)

    def start(self) -> None:
        self._write({**self._state(), "running": True, "hung": False})

    def stop(self) -> bool:
        state = self._state()
        if not state["running"]:
            return False
        self._write({**state, "running": False, "hung": False})
        return True

    def live(self) -> bool:
        state = self._state()
        return bool(state["running"]) and not state.get("hung")

    def running(self) -> bool:
        return bool(self._state()["running"])

    def hang(self) -> None:
        """Keep running but stop answering, as a deadlocked server does (the watchdog's tests)."""
        self._write({**self._state(), "hung": True})

    def export(self, version: RegisteredVersion) -> ExportedModel:
        out = self._export_dir(version.version)
        if not out.is_dir():
            mv = Registry(self.state_dir / "registry").get(self.cfg.name, version.version)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".incoming-"))
            try:
                shutil.copyfile(mv.file("model.ckpt"), tmp / "model.ckpt")
                (tmp / "export.json").write_text(json.dumps({"model": mv.model, "version": mv.version,
                                                             "model.ckpt": sha256_file(tmp / "model.ckpt")}))
                fsync_tree(tmp)
                tmp.rename(out)  # one rename: a crash never leaves half an export
                fsync_path(out.parent)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return ExportedModel(model=self.cfg.name, version=version.version, dir=str(out))

    def _verified(self, version: int) -> Path:
        """The version's exported checkpoint, checked against the digest written at export."""
        out = self._export_dir(version)
        try:
            digest = json.loads((out / "export.json").read_text())["model.ckpt"]
        except (FileNotFoundError, ValueError, KeyError):
            raise RegistryError(f"{self.cfg.name}@{version} has no in-process export in {out}; export it "
                                "first.") from None
        if sha256_file(out / "model.ckpt") != digest:
            raise RegistryError(f"{out / 'model.ckpt'} does not match its checksum; the export is corrupt.")
        return out / "model.ckpt"

    def deploy(self, exported: ExportedModel) -> ServedModel:
        state = self._state()
        if not state["running"]:
            raise ServiceError(f"the in-process server at {self.url} is not running; start it first.")
        self._verified(exported.version)  # an unverified version is never served; the old champion stays
        champion, previous = state["champion"], state["previous"]
        if exported.version != champion:
            champion, previous = exported.version, champion
        # The previous champion stays loaded (rollback is instant); the champion is named explicitly on every
        # request, so no version-number rule decides which one answers.
        loaded = [champion] + ([previous] if previous is not None else [])
        self._write({"running": True, "champion": champion, "previous": previous, "loaded": loaded})
        return ServedModel(model=self.cfg.serving.model_name, champion=champion, previous=previous, loaded=loaded,
                           endpoint=self.endpoint(champion), url=self.url)

    def served(self) -> list[dict[str, Any]]:
        state = self._state()
        if not state["running"]:
            return []
        return [{"name": self.cfg.serving.model_name, "version": v, "state": "READY"} for v in state["loaded"]]

    def endpoint(self, version: int) -> str:
        return f"{self.url}/{self.cfg.serving.model_name}/{version}"

    def answering_version(self) -> int | None:
        state = self._state()
        return state["champion"] if state["running"] else None

    def predict(self, rows: pd.DataFrame) -> dict[str, Any]:
        # torch and Lightning only here: the gate, promote and rollback tests never predict.
        from mlops.serving._client import validate
        from mlops.serving._export import signature_of
        from mlops.training import load_module, predict_frame

        version = self.answering_version()
        if version is None:
            raise ServiceError(f"model {self.cfg.serving.model_name!r} is not served at {self.url}; start the "
                               "server and deploy a version.")
        checkpoint = str(self._verified(version))
        module = _MODULES.get(checkpoint)
        if module is None:
            module = _MODULES[checkpoint] = load_module(Path(checkpoint))
        signature = signature_of(module).to_dict()
        validate(signature, rows)  # the rows a Triton client would refuse are refused here too
        values = predict_frame(module, rows)
        head = {"model": self.cfg.serving.model_name, "version": version}
        if signature["task"] == "classification":
            classes = list(signature["classes"])
            return {**head, "classes": classes, "probabilities": values.tolist(),
                    "labels": [classes[i] for i in values.argmax(axis=1)]}
        return {**head, "predictions": values.tolist()}


FLAVOR = Flavor("server", "inprocess", InProcessServing, "tests._inprocess_server:InProcessServer",
                conf="tests._inprocess_server:_inprocess_conf/serving/inprocess.yaml",
                description="Test-only: serves the checkpoint in the caller's process.",
                distribution="the tests (tests/_inprocess_server.py)")


def inprocess_stack(tmp_path: Path, *overrides: str) -> Any:
    """The churn recipe on this flavor, its state under `tmp_path` (the `inprocess_server` fixture registers it)."""
    from mlops.recipe import load
    from mlops.stack import Stack

    root = Path(__file__).resolve().parents[1]
    cfg = load(["recipe=churn", "serving=inprocess", f"target.state_dir={tmp_path / 'state'}", *overrides], root,
               check_data=False)
    return Stack(cfg, root)
