"""Where configs come from: the framework's conf/, stack folders and the project's recipes/.

Hydra finds a group ``g`` as a folder ``g/`` under some search-path root. The
project layout asked for ``stacks/`` and ``recipes/`` to be the ``stack=`` and
``recipe=`` groups, so :class:`GroupDirSource` is a Hydra ConfigSource that
exposes one folder as one named group. It is registered with Hydra's plugin
registry and added to the search path like any other root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

SCHEME = "mlops-group"
STACK_ENTRY_POINTS = "mlops.stacks"


class GroupDirSource(ConfigSource):
    """Exposes the YAML files of one folder as the Hydra group named in the path.

    Search-path entry: ``mlops-group://<group>@<absolute folder>``.
    """

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        self.group, _, folder = self.path.partition("@")
        self.folder = Path(folder)

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def _local(self, config_path: str) -> Path | None:
        config_path = config_path.strip("/")
        if config_path == self.group:
            return self.folder
        if config_path.startswith(self.group + "/"):
            return self.folder / config_path[len(self.group) + 1 :]
        return None

    def load_config(self, config_path: str) -> ConfigResult:
        local = self._local(self._normalize_file_name(config_path))
        if local is None or not local.is_file():
            raise ConfigLoadError(f"Config not found: {config_path}")
        text = local.read_text(encoding="utf-8")
        return ConfigResult(
            config=OmegaConf.create(text) if text.strip() else OmegaConf.create({}),
            path=f"{SCHEME}://{self.path}",
            provider=self.provider,
            header=ConfigSource._get_header_dict(text[:512]),
        )

    def available(self) -> bool:
        return self.folder.is_dir()

    def is_group(self, config_path: str) -> bool:
        if config_path.strip("/") == "":
            return True
        local = self._local(config_path)
        return local is not None and local.is_dir()

    def is_config(self, config_path: str) -> bool:
        local = self._local(self._normalize_file_name(config_path))
        return local is not None and local.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path.strip("/") == "":
            return [self.group] if results_filter in (None, ObjectType.GROUP) else []
        local = self._local(config_path)
        if local is None or not local.is_dir():
            return []
        files: list[str] = []
        for name in os.listdir(local):
            self._list_add_result(
                files=files, file_path=f"{config_path}/{name}", file_name=name, results_filter=results_filter
            )
        return sorted(set(files))


Plugins.instance().register(GroupDirSource)


def _bundled(name: str) -> Path:
    """conf/ and stacks/ in a source checkout, else the copies packaged in the wheel."""
    here = Path(__file__).resolve().parents[2] / name
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "_bundled" / name


@dataclass(frozen=True)
class Sources:
    """The folders one composition reads, in search-path order."""

    project: Path
    conf: Path
    recipe_dirs: tuple[Path, ...]
    stack_dirs: tuple[Path, ...]
    # Installed flavors' own defaults, each `<root>/<group>/<flavor>.yaml` (mlops.flavors, `conf=`).
    flavor_roots: tuple[Path, ...] = ()

    @classmethod
    def discover(cls, project: Path) -> Sources:
        project = project.resolve()
        stack_dirs = [_bundled("stacks")]
        # Platform teams ship stacks as packages: an entry point names a folder of stack YAML.
        for ep in metadata.entry_points(group=STACK_ENTRY_POINTS):
            target = ep.load()
            stack_dirs.append(Path(target() if callable(target) else target))
        if (project / "stacks").is_dir():
            stack_dirs.append(project / "stacks")
        recipe_dirs = [project / "recipes"] if any((project / "recipes").glob("*.yaml")) else []
        if not recipe_dirs:  # a project with no recipe yet: status, down, runs and stack list still work
            recipe_dirs = [Path(__file__).resolve().parent / "_stub"]
        from mlops.flavors import conf_files

        roots = [path.parent.parent for by_name in conf_files().values() for path in by_name.values()]
        return cls(
            project=project,
            conf=_bundled("conf"),
            recipe_dirs=tuple(recipe_dirs),
            stack_dirs=tuple(dict.fromkeys(p.resolve() for p in stack_dirs)),
            flavor_roots=tuple(dict.fromkeys(p.resolve() for p in roots)),
        )

    def search_path(self) -> list[str]:
        # Later entries are searched first only for ties; group configs are found in any root.
        entries = [f"{SCHEME}://stack@{d}" for d in reversed(self.stack_dirs)]
        entries += [f"{SCHEME}://recipe@{d}" for d in self.recipe_dirs]
        entries += [f"file://{d}" for d in self.flavor_roots]
        return entries

    def group_dir(self, group: str) -> tuple[Path, ...]:
        if group == "stack":
            return tuple(reversed(self.stack_dirs))
        if group == "recipe":
            return self.recipe_dirs
        return (self.conf / group, *(root / group for root in self.flavor_roots))

    def find(self, group: str, choice: str) -> Path | None:
        for d in self.group_dir(group):
            if (d / f"{choice}.yaml").is_file():
                return d / f"{choice}.yaml"
        return None

    def options(self, group: str) -> list[str]:
        names: set[str] = set()
        for d in self.group_dir(group):
            if d.is_dir():
                names |= {p.stem for p in d.glob("*.yaml")}
        return sorted(names)
