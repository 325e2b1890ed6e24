"""Map dotted keys back to the YAML file and line that set them.

OmegaConf keeps no source positions (omegaconf#1173), so we re-read the files
that took part in a composition with ruamel.yaml, which does, and ask "which
file, latest in the merge order, sets this key?". Lines are 1-based.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError


@dataclass(frozen=True)
class YamlSyntaxError:
    file: Path
    line: int
    message: str


@dataclass(frozen=True)
class SourceFile:
    """One YAML file of the composition and the package its keys land under."""

    path: Path
    package: str  # "" for _global_, else e.g. "model"
    shown: str  # path as shown to the user (relative to the project when possible)

    def lines(self) -> dict[str, int]:
        """Every dotted key this file sets (with its package prefix) -> 1-based line."""
        data = YAML(typ="rt").load(self.path.read_text(encoding="utf-8"))
        out: dict[str, int] = {}
        if isinstance(data, CommentedMap):
            _walk(data, self.package, out)
        return out


def _walk(node: CommentedMap | CommentedSeq, prefix: str, out: dict[str, int]) -> None:
    items = node.items() if isinstance(node, CommentedMap) else enumerate(node)
    for key, value in items:
        if prefix == "" and key in ("defaults", "hydra"):
            continue
        dotted = f"{prefix}.{key}" if prefix else str(key)
        line, _col = node.lc.key(key) if isinstance(node, CommentedMap) else node.lc.item(key)
        out[dotted] = line + 1
        if isinstance(value, CommentedMap | CommentedSeq):
            _walk(value, dotted, out)


def check_syntax(path: Path) -> YamlSyntaxError | None:
    try:
        YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        return YamlSyntaxError(path, line, what or str(exc).splitlines()[0])
    return None


class KeyLocator:
    """Finds the last file in merge order that sets a dotted key (or its nearest parent)."""

    def __init__(self, files: list[SourceFile]):
        # Merge order: later files win, so search them first.
        self._files = [(f, f.lines()) for f in reversed(files)]

    def locate(self, key: str) -> str:
        probe = key
        while probe:
            for f, lines in self._files:
                if probe in lines:
                    return f"{f.shown}:{lines[probe]}"
            probe = probe.rpartition(".")[0]
        return ""

    def sets(self, key: str) -> bool:
        return any(key in lines for _f, lines in self._files)
