"""Load many recipes at once, with the results `load()` gives, at a fraction of its cost.

`load()` runs Hydra's compose for every recipe (~0.3 s, nearly all of it OmegaConf building node trees).
What Hydra computes for recipe R is a merge, in defaults-list order, of: G, the files listed before `recipe`
in conf/config.yaml (which ones depends only on the group choices), then R (`# @package _global_`), then
the command line's `key=value` overrides; config.yaml's own keys come first (`_self_` heads its defaults).

`load_many()` asks Hydra's own defaults-list function which files make G, in which order and under which
package, once per distinct set of group choices (the command line's, then the `override /group: option`
entries of a recipe's `defaults:`, ranked as Hydra ranks them), with one file cache for all sets. It merges
those files, the recipe (read with libyaml under OmegaConf's scalar rules) and `_self_` as plain dicts by
OmegaConf's merge rules, resolves `${key}` and `${oc.env:VAR}` itself (OmegaConf resolves anything else),
and runs the checks `load()` runs after composing (`validated()`), so every problem has the same text.
What it does not reproduce exactly goes through `load()` itself: YAML libyaml rejects (load() then reports
ruamel.yaml's message), duplicate or non-string keys, a `defaults:` entry other than `override /group:
option`, no `# @package _global_`, a `hydra:` key, merges OmegaConf treats specially, a failed composition.
The one check it does not run is load()'s ruamel.yaml syntax check of the recipe (12 ms a file): a file
libyaml accepts but ruamel.yaml (or PyYAML's pure-Python parser, which Hydra uses) refuses would load here
and fail in load(). None is known; the three parsers implement the same grammar.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.plugins.config_source import ConfigSource
from omegaconf import OmegaConf
from omegaconf._utils import get_yaml_loader
from omegaconf.errors import OmegaConfBaseException

from mlops.errors import ConfigError
from mlops.recipe import schema
from mlops.recipe._loader import (GROUPS, LazyLocator, _quote_group_values, command_line_choices, load, project_dir,
                                  source_files, validated, value_overrides)
from mlops.recipe._sources import Sources

_BASE = "mlops_batch_base"  # conf/config.yaml's defaults up to `recipe`, registered in Hydra's ConfigStore
_OVERRIDE = re.compile(r"override /(\w+)")
_OPTION = re.compile(r"[\w.-]+")
_REF = re.compile(r"\$\{([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\}")
_ENV = re.compile(r"\$\{oc\.env:([A-Za-z_]\w*)\}")
_STR_TAG = "tag:yaml.org,2002:str"


class _Fallback(Exception):
    """Something the fast path does not reproduce exactly: `load()` handles this recipe."""


class _Loader(yaml.CSafeLoader):
    """libyaml with OmegaConf's resolvers and constructors (its float pattern, no timestamps); keys must be
    unique strings, else the recipe goes through load() (Hydra and ruamel.yaml report those)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        keys = [k.value for k, _v in node.value if k.tag == _STR_TAG]
        if len(keys) != len(node.value) or len(set(keys)) != len(keys):
            raise _Fallback("a key that is not a unique string")
        return super().construct_mapping(node, deep=deep)


_omegaconf_loader = get_yaml_loader()
_Loader.yaml_implicit_resolvers = _omegaconf_loader.yaml_implicit_resolvers
_Loader.yaml_constructors = _omegaconf_loader.yaml_constructors


def _read(path: Path) -> tuple[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        return text, yaml.load(text, Loader=_Loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError:
        raise _Fallback("YAML libyaml rejects") from None


def _plain(node: Any) -> None:
    """Only what OmegaConf stores unchanged in untyped nodes."""
    if isinstance(node, dict):
        for v in node.values():
            _plain(v)
    elif isinstance(node, list):
        for v in node:
            _plain(v)
    elif not isinstance(node, str | int | float | bool | None):
        raise _Fallback(f"a {type(node).__name__} value")


def _recipe(path: Path) -> tuple[dict, tuple[tuple[str, str], ...]]:
    """The recipe's keys and the group choices its `defaults:` list overrides."""
    text, body = _read(path)
    if ConfigSource._get_header_dict(text[:512]).get("package") != "_global_":
        raise _Fallback("no `# @package _global_`")
    body = {} if body is None else body
    if not isinstance(body, dict) or "hydra" in body:
        raise _Fallback("not a mapping of config keys")
    _plain(body)
    body = dict(body)
    choices = {}
    defaults = body.pop("defaults", [])
    if not isinstance(defaults, list):
        raise _Fallback("`defaults` is not a list")
    for entry in defaults:
        if entry == "_self_":
            continue
        key, option = next(iter(entry.items())) if isinstance(entry, dict) and len(entry) == 1 else ("", None)
        group = m[1] if (m := _OVERRIDE.fullmatch(key)) else None
        if group not in GROUPS or group == "recipe" or group in choices or not isinstance(option, str) \
                or not _OPTION.fullmatch(option):
            raise _Fallback(f"defaults entry {entry!r}")
        choices[group] = option
    return body, tuple(sorted(choices.items()))


def _merged(dest: dict, src: dict) -> dict:
    """OmegaConf's merge of untyped configs, as a new dict (subtrees of `dest` it does not change are shared):
    mappings merge key by key, anything else replaces, `???` keeps what is there."""
    out = dict(dest)
    for key, value in src.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            out[key] = _merged(old, value)
        elif value == "???" and key in out:
            continue
        elif isinstance(value, dict | list) and (isinstance(old, dict | list) and type(old) is not type(value)
                                                 or isinstance(old, str) and "${" in old):
            raise _Fallback(f"merging a {type(value).__name__} onto {old!r} at {key}")
        else:
            out[key] = value
    return out


def _resolved(raw: dict) -> dict:
    """`OmegaConf.to_container(resolve=True)` for `${a.b}` (whole value, or inside text) and `${oc.env:VAR}`."""

    def target(path: str, depth: int) -> Any:
        node: Any = raw
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise _Fallback(f"${{{path}}} is not a key")
            node = node[part]
        if isinstance(node, str) and "${" in node:
            return text(node, depth + 1)
        if isinstance(node, dict | list) or node == "???":
            raise _Fallback(f"${{{path}}} is a container or missing")
        return node

    def text(s: str, depth: int) -> Any:
        if depth > 16:
            raise _Fallback("an interpolation cycle")
        if m := _REF.fullmatch(s):
            return target(m[1], depth)
        if (m := _ENV.fullmatch(s)) and m[1] in os.environ:
            return os.environ[m[1]]
        parts = _REF.split(s)  # literal, key, literal, key, ..., literal
        if any(c in lit for lit in parts[::2] for c in "${}\\"):
            raise _Fallback(f"interpolation {s!r}")
        return "".join(str(target(p, depth)) if i % 2 else p for i, p in enumerate(parts))

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return text(node, 0) if isinstance(node, str) and "${" in node else node

    return walk(raw)


class _Framework:
    """conf/config.yaml split around `recipe`, and the tree G of the configs before it, per set of choices."""

    def __init__(self, sources: Sources, project: Path, overrides: list[str]):
        self.sources, self.project = sources, project
        _text, primary = _read(sources.conf / "config.yaml")
        defaults = primary.pop("defaults", [])
        cut = next((i for i, d in enumerate(defaults) if isinstance(d, dict) and "recipe" in d), None)
        # config.yaml's own keys come first (`_self_` heads its defaults: the groups and the recipe override
        # them) or last; `recipe` must be the last group.
        self.self_first = bool(defaults) and defaults[0] == "_self_"
        if cut is None or [d for d in defaults[cut + 1:] if d != "_self_"] or "_self_" in defaults[int(self.self_first):cut]:
            raise _Fallback("conf/config.yaml's defaults do not end with `recipe` (and `_self_`)")
        self.prefix, self.self_keys = defaults[int(self.self_first):cut], primary
        # The command line: group choices go into G, the rest is applied after the merge, as Hydra does.
        self.groups, self.values = [], []
        for o, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
            key = parsed.key_or_group
            if key.startswith("hydra") or "/" in key:
                raise _Fallback(f"override {o!r}")
            if key in GROUPS:
                if parsed.is_delete() or parsed.is_add() or parsed.is_force_add() \
                        or not isinstance(parsed.value(), str):
                    raise _Fallback(f"override {o!r}")
                self.groups.append(o)
            else:
                self.values.append(parsed)
        self.chosen_on_command_line = {o.partition("=")[0] for o in self.groups}
        self.bases: dict[tuple, tuple[dict, dict[str, str]] | None] = {}
        self._files: dict[str, tuple[dict, str | None]] = {}

    def compose(self, keys: Iterable[tuple[tuple[str, str], ...]]) -> None:
        """G and its group choices for each set of recipe choices; None where that fails (load() reports it).

        Hydra's defaults list says which files, in which order, under which package (the same function
        `compose()` calls, minus Hydra's own config, with one file cache for all sets); the files are read
        once and merged as plain dicts."""
        from hydra._internal.config_repository import CachingConfigRepository, ConfigRepository
        from hydra._internal.defaults_list import create_defaults_list
        from hydra._internal.utils import create_config_search_path

        ConfigStore.instance().store(name=_BASE, node={"defaults": self.prefix})
        search = create_config_search_path(str(self.sources.conf))
        search.get_path().pop(-1)  # ConfigStore's schemas stay last, as `hydra.searchpath=[...]` keeps them
        for entry in self.sources.search_path():
            search.append("hydra.searchpath in command-line", entry)
        search.append("schema", "structured://")
        repo = CachingConfigRepository(ConfigRepository(config_search_path=search))
        parser = OverridesParser.create()
        with initialize_config_dir(config_dir=str(self.sources.conf), version_base="1.3", job_name="mlops"):
            for key in keys:
                mine = [f"{g}='{v}'" for g, v in key if g not in self.chosen_on_command_line]
                try:
                    listed = create_defaults_list(repo=repo, config_name=_BASE, prepend_hydra=False,
                                                  overrides_list=parser.parse_overrides([*self.groups, *mine]),
                                                  skip_missing=False)
                    if listed.config_overrides:
                        raise _Fallback("a group override Hydra takes for a value")
                    base: dict = {}
                    for default in listed.defaults:
                        base = _merged(base, self._embedded(repo, default))
                    if "hydra" in base:
                        raise _Fallback("a framework file sets hydra.*")
                except Exception:  # noqa: BLE001 (each of these recipes goes to load(), which reports the failure)
                    self.bases[key] = None
                    continue
                self.bases[key] = (base, {k: str(v) for k, v in listed.overrides.known_choices.items()})

    def _embedded(self, repo: Any, default: Any) -> dict:
        """One entry of the defaults list as Hydra merges it: the file's keys under its package."""
        path = default.config_path
        if path not in self._files:
            loaded = repo.load_config(path)
            schema_named_alike = not loaded.is_schema_source and repo.get_schema_source().is_config(
                ConfigSource._normalize_file_name(path)) if loaded is not None else False
            if loaded is None or schema_named_alike or OmegaConf.get_type(loaded.config) is not dict:
                raise _Fallback(f"{path}: missing, or typed by a structured config")
            keys = OmegaConf.to_container(loaded.config, resolve=False)
            _plain(keys)
            self._files[path] = (keys, loaded.header.get("package"))
        keys, package = self._files[path]
        package = default.package if default.package is not None else package
        for part in reversed(package.split(".") if package else []):
            keys = {part: keys}
        return keys

    def config(self, name: str, body: dict, key: tuple, by_key: dict[str, str]) -> schema.Config:
        if self.bases[key] is None:
            raise _Fallback("the framework config did not compose")
        base, chosen = self.bases[key]
        chosen = {**chosen, "recipe": name}
        raw = _merged(_merged(self.self_keys, base), body) if self.self_first else \
            _merged(_merged(base, body), self.self_keys)
        if self.values:
            from hydra._internal.config_loader_impl import ConfigLoaderImpl

            cfg = OmegaConf.create(raw)
            OmegaConf.set_struct(cfg, True)
            try:
                ConfigLoaderImpl._apply_overrides_to_config(self.values, cfg)
            except (HydraException, OmegaConfBaseException) as exc:
                raise _Fallback(f"override: {exc}") from None
            raw = OmegaConf.to_container(cfg, resolve=False)
            resolve = lambda: OmegaConf.to_container(cfg, resolve=True)  # noqa: E731
        else:
            try:
                data = _resolved(raw)
                resolve = lambda: data  # noqa: E731
            except _Fallback:
                resolve = lambda: _omegaconf_resolved(raw)  # noqa: E731
        files = lambda: source_files(self.sources, chosen, self.project)  # noqa: E731
        return validated(raw, resolve, chosen, LazyLocator(files), by_key)


def _omegaconf_resolved(raw: dict) -> Any:
    cfg = OmegaConf.create(raw)
    OmegaConf.set_struct(cfg, True)
    return OmegaConf.to_container(cfg, resolve=True)


def load_many(recipes: Iterable[str] | None = None, project: Path | None = None,
              overrides: list[str] | tuple[str, ...] = ()) -> dict[str, schema.Config | ConfigError]:
    """Each recipe (a name in the project's recipes/, default: all of them) loaded with the common
    `overrides`: for every name, what ``load([*overrides, f"recipe={name}"], project, check_data=False)``
    returns, or the ConfigError it raises, in the order given. No data checks. About 100x faster than
    load() for each; see the module docstring for how, and bench/plan.py for the figures.

        from mlops.plan import compile_plan
        from mlops.recipe import load_many

        for name, cfg in load_many(["churn", "breast_cancer"], overrides=["maturity=3"]).items():
            print(name, cfg if isinstance(cfg, Exception) else compile_plan(cfg).digest())
    """
    return load_many_with_fallbacks(recipes, project, overrides)[0]


def load_many_with_fallbacks(recipes: Iterable[str] | None = None, project: Path | None = None,
                             overrides: list[str] | tuple[str, ...] = ()
                             ) -> tuple[dict[str, schema.Config | ConfigError], list[str]]:
    """`load_many()`, and the names that went through load() (bench/plan.py and the tests report them)."""
    if any(o.partition("=")[0].lstrip("~+") == "recipe" for o in overrides):
        raise ValueError("load_many() takes the recipes as names, not as a recipe= override")
    project = project_dir(project)
    sources = Sources.discover(project)
    names = list(dict.fromkeys(sources.options("recipe") if recipes is None else recipes))
    given, overrides = list(overrides), _quote_group_values(list(overrides))
    by_key = value_overrides(overrides)
    parsed: dict[str, tuple[dict, tuple]] = {}
    slow: list[str] = []
    try:
        # What load() checks before Hydra runs, except each recipe's own YAML (libyaml reads it below).
        command_line_choices(overrides, sources, project, syntax=("stack",))
        framework = _Framework(sources, project, overrides)
        for name in names:
            path = sources.find("recipe", name) if _OPTION.fullmatch(name) else None
            try:
                if path is None:
                    raise _Fallback("no such recipe")
                parsed[name] = _recipe(path)
            except Exception:  # noqa: BLE001 (_Fallback, or unreadable: load() decides)
                slow.append(name)
        framework.compose(dict.fromkeys(key for _body, key in parsed.values()))
    except (_Fallback, ConfigError, HydraException, OmegaConfBaseException, ValueError):
        parsed, slow = {}, list(names)

    results: dict[str, schema.Config | ConfigError] = {}
    for name, (body, key) in parsed.items():
        try:
            results[name] = framework.config(name, body, key, by_key)
        except ConfigError as exc:
            results[name] = exc
        except Exception:  # noqa: BLE001 (_Fallback, or a failure load() would have too: load() decides)
            slow.append(name)
    for name in slow:
        try:
            results[name] = load([*given, f"recipe={name}"], project, check_data=False)
        except ConfigError as exc:
            results[name] = exc
    return {name: results[name] for name in names}, slow
