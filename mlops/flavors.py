"""The flavor registry: every component kind has flavors, and every flavor is registered the same way.

A flavor is a name, a frozen pydantic config class and an implementation that is imported on first use
(ZenML's flavor pattern). Built-ins and third-party flavors alike are found through the entry-point group
``mlops.flavors``; an entry point names a :class:`Flavor` object::

    # the team's package, acme_mlops/jsonl_tracker.py
    class JsonlTrackerConfig(TrackerConfig):          # from mlops.recipe.schema: the kind's base config
        flavor: Literal["jsonl"] = "jsonl"
        path: str = "runs.jsonl"

    FLAVOR = Flavor(kind="tracker", name="jsonl", config=JsonlTrackerConfig,
                    implementation="acme_mlops.jsonl_tracker:JsonlTracker",
                    conf="acme_mlops:conf/tracking/jsonl.yaml")

    # its pyproject.toml
    [project.entry-points."mlops.flavors"]
    jsonl-tracker = "acme_mlops.jsonl_tracker:FLAVOR"

and a recipe selects it like a built-in (``tracking=jsonl``, or ``defaults: [{override /tracking: jsonl}]``).
The schema builds each section's discriminated union from the registered flavors, so the plugin's config is
validated, reported with file:line and shown by ``mlops schema`` exactly like a built-in's.

Each kind has its recipe section, the Hydra group of its YAML defaults, the key that names the flavor in YAML,
and an interface its implementation provides (documented in the module named in ``interface``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from mlops.errors import ConfigError, Problem

ENTRY_POINTS = "mlops.flavors"


@dataclass(frozen=True)
class Kind:
    section: str  # the recipe's top-level key, e.g. `tracking`
    group: str  # the Hydra config group holding each flavor's defaults, conf/<group>/<flavor>.yaml
    key: str  # the YAML key naming the flavor in the section
    interface: str  # where the implementation's contract is written down


KINDS: dict[str, Kind] = {
    "data_source": Kind("data", "data", "source", "mlops.data._source:DataSource"),
    "model": Kind("model", "model", "flavor", "mlops.training._family:ModelFamily"),
    "server": Kind("serving", "serving", "flavor", "mlops.serving._server_api:ModelServer"),
    "tracker": Kind("tracking", "tracking", "flavor", "mlops.tracking._base:Tracker"),
    "monitor": Kind("monitoring", "monitoring", "flavor", "mlops.monitoring._profiler:Profiler"),
    "model_store": Kind("registry", "registry", "flavor", "mlops.registry._store:ModelStore"),
    "target": Kind("target", "target", "kind", "mlops.targets._base:Target"),
}


@dataclass(frozen=True)
class Flavor:
    """One flavor of one kind: its name, its config class and where its implementation lives.

    `implementation` is ``"module:attribute"``, imported only when a stack first asks for it, so importing
    the registry (every command does) never imports torch, Triton's client or a tracking backend.
    `conf` is an optional ``"package:relative/path.yaml"`` of the flavor's Hydra defaults, offered as
    ``<group>/<name>.yaml`` to recipes. `warm` names modules the implementation imports on first use (a
    tracking backend's store): a process about to run the stack's steps may import them ahead, with the
    implementation's own module (mlops.steps._warm).
    """

    kind: str
    name: str
    config: type
    implementation: str
    conf: str | None = None
    description: str = ""
    distribution: str = field(default="", compare=False)
    warm: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"flavor {self.name!r}: unknown kind {self.kind!r}; kinds: {', '.join(KINDS)}")

    def load(self) -> Any:
        """The implementation (a class or a factory), imported now."""
        module, _, attr = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attr)

    def conf_path(self) -> Path | None:
        if not self.conf:
            return None
        package, _, rel = self.conf.partition(":")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            base = Path(spec.origin).parent if spec is not None and spec.origin else None
        else:
            base = Path(next(iter(spec.submodule_search_locations)))
        return base / rel if base is not None else None


class FlavorError(ConfigError):
    """A registry problem: two flavors with one name, or an entry point that does not load."""


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


@cache
def registered() -> dict[str, dict[str, Flavor]]:
    """Every registered flavor, by kind then name. Raises FlavorError naming both distributions of a clash."""
    out: dict[str, dict[str, Flavor]] = {k: {} for k in KINDS}
    problems: list[Problem] = []
    # The framework's own first, so a clash names the built-in as the one that was there.
    eps = sorted(metadata.entry_points(group=ENTRY_POINTS),
                 key=lambda e: (getattr(getattr(e, "dist", None), "name", "") != "mlops", e.value, e.name))
    for ep in eps:
        where = f"entry point {ep.name!r} = {ep.value!r} of {_distribution(ep)}"
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take every command down with a traceback
            problems.append(Problem("", f"cannot load {where}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                                    "", "reinstall that package, or uninstall it"))
            continue
        if not isinstance(obj, Flavor):
            problems.append(Problem("", f"{where} is a {type(obj).__name__}, not an mlops.flavors.Flavor", "",
                                    "point the entry point at the module's Flavor object"))
            continue
        obj = replace(obj, distribution=_distribution(ep))  # every other field as the package declared it
        key = KINDS[obj.kind].key
        annotation = getattr(obj.config, "model_fields", {}).get(key)
        if annotation is None or getattr(annotation.annotation, "__args__", None) != (obj.name,):
            problems.append(Problem("", f"{where}: its config class {obj.config.__name__} needs the field "
                                    f"`{key}: Literal[{obj.name!r}]`", "", "the field names the flavor in YAML"))
            continue
        if (other := out[obj.kind].get(obj.name)) is not None:
            problems.append(Problem("", f"two {obj.kind} flavors are named {obj.name!r}: one from "
                                    f"{other.distribution} ({other.implementation}), one from {obj.distribution} "
                                    f"({obj.implementation})", "", "uninstall one of the two packages, or rename "
                                    "one flavor"))
            continue
        out[obj.kind][obj.name] = obj
    if problems:
        raise FlavorError(problems)
    return out


def flavors(kind: str) -> dict[str, Flavor]:
    return registered()[kind]


def get(kind: str, name: str) -> Flavor:
    found = flavors(kind).get(name)
    if found is None:
        known = ", ".join(sorted(flavors(kind))) or "(none)"
        raise ConfigError([Problem(KINDS[kind].section + "." + KINDS[kind].key, f"no {kind} flavor named {name!r} "
                                   f"is installed; installed: {known}", "",
                                   "install the package that provides it (it registers an `mlops.flavors` entry point)")])
    return found


def conf_files() -> dict[str, dict[str, Path]]:
    """Hydra group -> option -> YAML file, for flavors that ship their defaults as `conf`."""
    out: dict[str, dict[str, Path]] = {}
    problems = []
    for kind, by_name in registered().items():
        group = KINDS[kind].group
        for name, fl in by_name.items():
            path = fl.conf_path()
            if path is None:
                continue
            if not path.is_file() or path.parent.name != group or path.stem != name:
                problems.append(Problem("", f"the {kind} flavor {name!r} of {fl.distribution} names its defaults "
                                        f"{fl.conf!r}, which is not a file <folder>/{group}/{name}.yaml", "",
                                        "ship the YAML as package data at that path"))
                continue
            out.setdefault(group, {})[name] = path
    if problems:
        raise FlavorError(problems)
    return out


__all__ = sorted(["ENTRY_POINTS", "KINDS", "Flavor", "FlavorError", "Kind", "conf_files", "flavors", "get",
                  "registered"])
