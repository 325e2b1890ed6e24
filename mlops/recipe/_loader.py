"""Compose with Hydra, validate once with pydantic, report every problem with file and line.

This is the only module that touches a DictConfig. It returns a frozen
:class:`~mlops.recipe.schema.Config` or raises :class:`~mlops.errors.ConfigError`
listing every problem found, each with its file:line (or the override), the
dotted key, what was expected, what was given, and a hint.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from mlops._layout import Layout
from mlops.errors import ConfigError, Problem
from mlops.flavors import KINDS, flavors
from mlops.recipe import schema
from mlops.recipe._positions import KeyLocator, SourceFile, check_syntax
from mlops.recipe._secrets import credential_shapes
from mlops.recipe._sources import Sources

# Config groups in defaults-list order (= merge order); see conf/config.yaml.
GROUPS = ("data", "model", "compute", "maturity", "tracking", "serving", "monitoring", "registry", "target", "stack",
          "recipe")
_DEFAULT_CHOICE = {"stack": "local", "recipe": "breast_cancer"}
_GLOBAL_GROUPS = ("stack", "recipe")  # their files are `# @package _global_`


def project_dir(explicit: Path | None = None) -> Path:
    return (explicit or Path(os.environ.get("MLOPS_PROJECT_DIR", "."))).resolve()


def _shown(path: Path, project: Path) -> str:
    """Relative to the project, else to the framework's install (conf/..., stacks/...)."""
    for base in (project, Path(__file__).resolve().parents[2], Path(__file__).resolve().parents[1] / "_bundled"):
        try:
            return str(path.resolve().relative_to(base))
        except ValueError:
            continue
    return str(path)


def _quote_group_values(overrides: list[str]) -> list[str]:
    # `maturity=3` is an int in Hydra's grammar, but group options are names: quote it.
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and key.lstrip("~+") in GROUPS and re.fullmatch(r"-?\d+", value):
            o = f"{key}='{value}'"
        out.append(o)
    return out


def _original(line: str) -> str:
    key, _eq, value = line.partition("=")
    return f"{key}={value.strip(chr(39))}" if key.lstrip("~+") in GROUPS else line


def command_line_choices(overrides: list[str], sources: Sources, project: Path,
                         syntax: tuple[str, ...] = _GLOBAL_GROUPS) -> dict[str, str]:
    """The group choices `overrides` make, after the checks that run before Hydra (unknown options, and
    broken YAML in the files of the `syntax` groups, reported with their line). Raises ConfigError."""
    problems: list[Problem] = []
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(
            [Problem("", f"cannot parse the override: {exc.args[0].splitlines()[0]}", "command line",
                     "overrides use Hydra's grammar: key=value, group=option, +new.key=value")]
        ) from None

    choices = dict(_DEFAULT_CHOICE)
    for ov in parsed:
        key = ov.key_or_group
        if key in GROUPS and ov.value() is not None:
            choice = str(ov.value())
            choices[key] = choice
            if sources.find(key, choice) is None:
                problems.append(_unknown_option(key, choice, sources, _original(ov.input_line)))

    # Broken YAML in the files we are about to read: report it with its line before Hydra trips on it.
    for group in syntax:
        path = sources.find(group, choices[group])
        if path is not None and (err := check_syntax(path)) is not None:
            problems.append(Problem("", f"is not valid YAML: {err.message}", f"{_shown(err.file, project)}:{err.line}",
                                    "check indentation and quoting around that line"))
        elif path is not None and (shape := _not_a_mapping(path)) is not None:
            # Hydra would merge nothing (empty) or fail on a list, and the first symptom would be an unresolved
            # ${name} in the framework's files: blame the file itself.
            problems.append(Problem("", f"is {shape}, but a {group} file is a YAML mapping of keys",
                                    f"{_shown(path, project)}:1", f"start from `mlops init` or recipes/churn.yaml: "
                                    "`name:`, `data:`, `model:` at the top level"
                                    if group == "recipe" else "give it top-level keys"))
    if problems:
        raise ConfigError(problems)
    return choices


def _not_a_mapping(path: Path) -> str | None:
    """What the YAML file is instead of a mapping ('empty', 'a YAML list', ...), or None if it is one."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # check_syntax reports what it can read of it
    if isinstance(doc, dict):
        return None
    return {type(None): "empty", list: "a YAML list"}.get(type(doc), f"a single value ({type(doc).__name__})")


def search_path_override(sources: Sources) -> str:
    return "hydra.searchpath=[" + ",".join(f"'{e}'" for e in sources.search_path()) + "]"


def source_files(sources: Sources, chosen: dict[str, str], project: Path) -> list[SourceFile]:
    """The YAML files a composition with these group choices read, in merge order (for file:line)."""
    files = [SourceFile(sources.conf / "config.yaml", "", _shown(sources.conf / "config.yaml", project))]
    for group in GROUPS:
        path = sources.find(group, chosen[group]) if group in chosen else None
        if path is not None:
            files.append(SourceFile(path, "" if group in _GLOBAL_GROUPS else group, _shown(path, project)))
    return files


def compose_tree(overrides: list[str], project: Path) -> tuple[DictConfig, list[SourceFile], dict[str, str]]:
    """Hydra composition; raises ConfigError for anything Hydra itself rejects."""
    sources = Sources.discover(project)
    overrides = _quote_group_values(list(overrides))
    choices = command_line_choices(overrides, sources, project)
    try:
        with initialize_config_dir(config_dir=str(sources.conf), version_base="1.3", job_name="mlops"):
            cfg = compose("config", overrides=[*overrides, search_path_override(sources)], return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError([_composition_problem(exc, sources, choices, project)]) from None

    chosen = {k: str(v) for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, source_files(sources, chosen, project), chosen


def _unknown_option(group: str, choice: str, sources: Sources, line: str) -> Problem:
    options = sources.options(group)
    if group == "maturity":
        return Problem("maturity", f"level must be an integer from 0 to 4, got {choice!r}", f"override '{line}'",
                       "0 manual, 1 data prep, 2 training, 3 deployment, 4 drift-triggered retraining")
    close = difflib.get_close_matches(choice, options, n=1)
    where = {"recipe": "recipes/", "stack": "stacks/"}.get(group, f"conf/{group}/")
    hint = f"did you mean `{group}={close[0]}`?" if close else f"add {where}{choice}.yaml"
    return Problem(group, f"has no option {choice!r}; the options are: {', '.join(options) or '(none)'}",
                   f"override '{line}'", hint)


def _composition_problem(exc: Exception, sources: Sources, choices: dict[str, str], project: Path) -> Problem:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    m = re.match(r"Could not override '([^']+)'", first)
    if m:
        key = m.group(1)
        return Problem(key, "is not a key of the configuration", "command line",
                       f"check the spelling (`mlops plan` shows every key); a new key needs a leading +")
    m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if m:
        group, choice = m.groups()
        recipe = sources.find("recipe", choices["recipe"])
        p = _unknown_option(group, choice, sources, f"{group}={choice}")
        where = f"{_shown(recipe, project)} (defaults)" if recipe else "defaults list"
        return Problem(p.key, p.message, where, p.hint)
    return Problem("", f"Hydra could not compose the configuration: {first}", "",
                   "run `mlops plan --debug` for Hydra's full message")


# --------------------------------------------------------------------------- validation
def _place(key: str, locator: LazyLocator, overrides: dict[str, str]) -> str:
    """The override that set `key` (or a parent of it), else the YAML file:line."""
    for k, line in overrides.items():
        if key == k or key.startswith(k + "."):
            return f"override '{line}'"
    return locator.locate(key)


_REFERENCE_HINT = ("reference it instead: {leaf}: ${{oc.env:VAR}} with the value exported as VAR, or keep it in a "
                   "secret store (AWS Secrets Manager, SSM) and name the secret in a *_ref key")


def _string_leaves(node: Any, prefix: str = ""):
    """(dotted key, string value, the other strings of its mapping or list) for every string in the tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in items]
    strings = [v for _k, v in items if isinstance(v, str)]
    for key, v in items:
        if isinstance(v, str):
            yield key, v, tuple(s for s in strings if s is not v)
        else:
            yield from _string_leaves(v, key)


def _raw_leaves(node: Any, prefix: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _raw_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _raw_leaves(v, f"{prefix}.{i}")
    else:
        yield prefix, node


def _secret_problems(raw: dict, locator: LazyLocator, overrides: dict[str, str]) -> tuple[list[Problem], list[str]]:
    """Secrets written into the config, by key name and by the shape of the value (mlops/recipe/_secrets.py),
    and the texts that must not be shown in any message."""
    problems, secrets = [], []
    for key, value, siblings in _string_leaves(raw):
        leaf = key.rpartition(".")[2]
        if not value or value.startswith("${oc.env:"):
            continue
        shapes = credential_shapes(value, key, siblings)
        if shapes:
            secrets += [value, *(text for _what, text in shapes)]
            what = " and ".join(dict.fromkeys(w for w, _t in shapes))
            hint = (f"`{leaf}` names where the secret is kept (a secret store's name or ARN, ssm:/path, or an "
                    "environment variable's name), never the secret itself" if re.search(r"_(ref|env)$", leaf)
                    else _REFERENCE_HINT.format(leaf=leaf))
            problems.append(Problem(key, f"holds what looks like {what} (the value is not shown)",
                                    _place(key, locator, overrides), hint))
        elif schema.SECRET_KEY.search(leaf):
            secrets.append(value)
            problems.append(Problem(key, "looks like a secret written into YAML", _place(key, locator, overrides),
                                    f"put it in an environment variable and refer to it: {leaf}: ${{oc.env:VAR}}, "
                                    "or name the variable in the matching *_env key"))
    return problems, secrets


def _scrubbed(problems: list[Problem], secrets: list[str]) -> list[Problem]:
    """The problems with every secret text replaced: an override's text, or a type error's `got ...`,
    would otherwise print it."""
    texts = sorted({t for t in secrets if len(t) >= 4}, key=len, reverse=True)
    if not texts:
        return problems

    def scrub(text: str) -> str:
        for t in texts:
            text = text.replace(t, "***")
        return text

    return [replace(p, message=scrub(p.message), where=scrub(p.where), hint=scrub(p.hint)) for p in problems]


def _model_at(loc: tuple, data: Any) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (to suggest known keys)."""
    model: Any = schema.Config
    node = data
    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        node = node.get(part, {}) if isinstance(node, dict) else {}
        ann = field.annotation
        if model is schema.Config and str(part) in schema.SECTIONS:
            model = _flavor_config(str(part), node)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            model = None
    return model


def _flavor_config(section: str, node: Any) -> type[BaseModel] | None:
    """The config class of the flavor a section names (or its kind's default flavor)."""
    kind, base, default = schema.SECTIONS[section]
    name = node.get(KINDS[kind].key, default) if isinstance(node, dict) else default
    found = flavors(kind).get(name) if isinstance(name, str) else None
    return found.config if found is not None else base


def _without_tag(loc: tuple) -> tuple:
    """pydantic puts the union member's tag in the location (`tracking.mlflow.uri`): drop it."""
    if len(loc) > 1 and loc[0] in schema.SECTIONS and isinstance(loc[1], str) \
            and loc[1] in flavors(schema.SECTIONS[loc[0]][0]):
        return (loc[0], *loc[2:])
    return loc


def _raw_at(raw: Any, loc: tuple) -> Any:
    for part in loc:
        if isinstance(raw, dict) and part in raw:
            raw = raw[part]
        elif isinstance(raw, list) and isinstance(part, int) and part < len(raw):
            raw = raw[part]
        else:
            return None
    return raw


def _pydantic_problems(exc: ValidationError, data: dict, raw: Any, locator: LazyLocator, overrides: dict[str, str]
                       ) -> list[Problem]:
    problems = []
    reported: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        loc = _without_tag(tuple(err["loc"]))
        key = ".".join(str(p) for p in loc)
        kind = err["type"]
        given = err.get("input")
        if kind == "unknown_flavor":
            fkind = schema.SECTIONS[str(loc[0])][0]
            fkey = KINDS[fkind].key
            name = given.get(fkey) if isinstance(given, dict) else None
            key = f"{loc[0]}.{fkey}"
            installed = ", ".join(sorted(flavors(fkind)))
            close = difflib.get_close_matches(str(name), list(flavors(fkind)), n=1)
            problems.append(Problem(key, f"no {fkind.replace('_', ' ')} flavor named {name!r} is installed; "
                                    f"installed: {installed}", _place(key, locator, overrides),
                                    f"did you mean `{close[0]}`?" if close else "install the package that provides "
                                    "it: it registers the flavor under the `mlops.flavors` entry point"))
            continue
        if kind == "port_clash":
            key = err["ctx"]["key"]
            problems.append(Problem(key, err["msg"], _place(key, locator, overrides),
                                    f"choose another port for one of them, e.g. {key}=<free port> (`ss -ltn` lists "
                                    "the ports in use)"))
            continue
        sig = (kind, repr(given))
        interpolated = isinstance(_raw_at(raw, loc), str) and str(_raw_at(raw, loc)).startswith("${")
        if interpolated and sig in reported:
            continue  # e.g. serving.model_name: ${name} repeats the error already shown for `name`
        reported.add(sig)
        place = _place(key, locator, overrides)
        if kind == "missing":
            problems.append(Problem(key, "is required but missing", place, f"set `{key}` in your recipe"))
        elif kind == "extra_forbidden":
            owner = _model_at(loc, data)
            known = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else (f"known keys here: {', '.join(known)}" if known else "")
            problems.append(Problem(key, "is not a known key", place, hint))
        elif kind == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(Problem(key, msg, place, ""))
        else:
            msg = err["msg"]
            msg = msg[0].lower() + msg[1:]
            shown = repr(given) if not isinstance(given, dict) else "a mapping"
            problems.append(Problem(key, f"{msg}; got {shown}", place, _type_hint(kind, key)))
    return problems


def _type_hint(kind: str, key: str) -> str:
    if kind == "number_bool":
        return "true/false is not a number: write the number itself"
    if kind == "finite_number":
        return "inf and nan are not allowed here: write a finite number"
    if kind.startswith(("int_", "float_")):
        return f"write a plain number, e.g. {key}=3e-4"
    if kind.startswith("literal_"):
        return "pick one of the listed values"
    if kind.startswith("list_"):
        return "write a YAML list, e.g. [64, 32]"
    if kind == "string_pattern_mismatch":
        return "names are lowercase letters, digits, '_' and '-', starting with a letter"
    return ""


class LazyLocator:
    """A KeyLocator over `files()`, built on first use: reading the files with ruamel.yaml costs more than
    composing does, and only a config with problems needs it."""

    def __init__(self, files: Callable[[], list[SourceFile]]):
        self._files = files
        self._locator: KeyLocator | None = None

    def locate(self, key: str) -> str:
        if self._locator is None:
            self._locator = KeyLocator(self._files())
        return self._locator.locate(key)


def value_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Dotted key -> the override that sets it (group choices and hydra.* left out), to name in problems."""
    out = {}
    for o in _quote_group_values(list(overrides)):
        k = o.partition("=")[0].lstrip("~+")
        if k not in GROUPS and not k.startswith("hydra"):
            out[k] = o
    return out


def validated(raw: dict, resolve: Callable[[], Any], chosen: dict[str, str], locator: LazyLocator,
              overrides: dict[str, str]) -> schema.Config:
    """The checks after composition, on the composed tree `raw` (interpolations unresolved) and `resolve()`
    (it resolved): secret literals, interpolation, tracking flavor against its group, the schema.
    Returns the frozen Config or raises ConfigError with every problem. `load()` and `load_many()` share it."""
    problems, secrets = _secret_problems(raw, locator, overrides)
    try:
        data = resolve()
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        hint = "for ${oc.env:VAR}, export VAR or give a default: ${oc.env:VAR,default}"
        if m := re.search(r"Interpolation key '([^']+)' not found", str(exc)):
            # `name: ${nope}` fails where `${name}` is used (conf/tracking/...): blame the line that wrote ${nope}.
            ref = "${" + m.group(1)
            key = next((k for k, v in _raw_leaves(raw) if isinstance(v, str) and ref in v), key)
            hint = "an interpolation names a dotted key of the configuration, e.g. ${name} or ${data.target}"
        problems.append(Problem(key, f"cannot be resolved: {str(exc).splitlines()[0]}", _place(key, locator, overrides),
                                hint))
        raise ConfigError(_scrubbed(problems, secrets)) from None
    assert isinstance(data, dict)
    mixed: dict[str, Problem] = {}
    for section, (kind, _base, _default) in schema.SECTIONS.items():
        group, fkey = KINDS[kind].group, KINDS[kind].key
        chosen_option, flavor = chosen.get(group), (data.get(section) or {}).get(fkey)
        # A group whose options are flavors (tracking=mlflow) merged its keys in; a flavor set by hand to another
        # one keeps them. Said only if they do not fit that flavor (its own problems are then consequences).
        if chosen_option in flavors(kind) and isinstance(flavor, str) and flavor != chosen_option:
            mixed[section] = Problem(f"{section}.{fkey}", f"is {flavor!r}, but the {group} group selected is "
                                     f"{chosen_option!r}, whose keys were merged in", _place(f"{section}.{fkey}",
                                     locator, overrides), f"switch flavors with the group: {group}={flavor} on the "
                                     f"command line, or `defaults: [{{override /{group}: {flavor}}}]` in the recipe")
    try:
        config = schema.Config.model_validate(data)
    except ValidationError as exc:
        found = _pydantic_problems(exc, data, raw, locator, overrides)
        # A flavor's own check of the same value (an sql URL with a password) says more than the generic scan.
        specific = {p.key for p in found if p.key in {q.key for q in problems}
                    and re.search(r"password|secret|token|credential", p.message, re.I)}
        problems = [q for q in problems if q.key not in specific]
        for section, problem in mixed.items():
            if any(p.key == section or p.key.startswith(section + ".") for p in found):
                problems.append(problem)
        for p in found:
            if any(p.key == section or p.key.startswith(section + ".") for section in mixed):
                continue  # consequences of the flavor mix-up reported above
            problems.append(p)
        raise ConfigError(_scrubbed(problems, secrets)) from None
    if problems:
        raise ConfigError(_scrubbed(problems, secrets))
    return config


def load(overrides: list[str] | tuple[str, ...] = (), project: Path | None = None, *, check_data: bool = True
         ) -> schema.Config:
    """Compose `overrides` with the framework config, validate, and return the frozen Config.

    Raises ConfigError with every problem found. With `check_data`, also checks
    (read-only) that the data exists and has the named columns. For many recipes at once,
    `load_many()` (mlops/recipe/_batch.py) gives the same results much faster.
    """
    project = project_dir(project)
    cfg, files, chosen = compose_tree(list(overrides), project)
    locator = LazyLocator(lambda: files)
    by_key = value_overrides(overrides)
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(raw, dict)
    config = validated(raw, lambda: OmegaConf.to_container(cfg, resolve=True), chosen, locator, by_key)
    if check_data:
        # The data source is asked through the flavor registry (its implementation, and pandas, imported now):
        # the recipe layer names the role, never the data package above it.
        source = flavors("data_source")[config.data.source].load()(config.data)
        cache = Layout(project / config.target.state_dir).cache
        data_problems = source.check(project, cache_dir=cache) or source.check_window(project, cache_dir=cache)
        if data_problems:
            raise ConfigError([Problem(k, m, _place(k, locator, by_key), h) for k, m, h in data_problems])
    if check_data and type(config.model).user_module:
        # A team's own module is imported and run once on its example (torch and Lightning imported now, for
        # such recipes only), so a wrong import path or output shape stops here, before anything starts.
        family = flavors("model")[config.model.flavor].load()
        model_problems = family.check(config.model, config.data, project)
        if model_problems:
            raise ConfigError([Problem(k, m, _place(k, locator, by_key), h) for k, m, h in model_problems])
    return config


def resolved_yaml(overrides: list[str] | tuple[str, ...] = (), project: Path | None = None) -> str:
    """The composed, resolved config as YAML (for `mlops plan`)."""
    cfg, _files, _chosen = compose_tree(list(overrides), project_dir(project))
    return OmegaConf.to_yaml(cfg, resolve=True)
