"""The one exception tree of mlops, and the exit code of each branch.

    MlopsError                      exit 1   anything we anticipated but did not classify
    ├── ConfigError                 exit 2   the recipe, stack or overrides are wrong (every problem at once)
    ├── DataError                   exit 3   the data does not pass validation (columns, types, nulls, rows)
    ├── ServiceError                exit 4   a local service (Prefect, Triton) failed to start, answer or stop
    ├── TargetUnavailable           exit 5   the target cannot be reached from here (no pulumi CLI, no credentials)
    ├── RegistryError               exit 6   a model version or alias does not exist, or would be overwritten
    ├── PredictError                exit 7   the rows sent to `mlops predict` do not fit the model's signature
    ├── ProjectBusy                 exit 8   another command is changing the same project now (`--wait` waits)
    └── GateRejected                exit 9   the version `up` trained fails the recipe's floors or ceilings (maturity.gate)

The CLI prints ``str(error)`` (one paragraph, or one paragraph per problem)
and exits with ``error.exit_code``; a traceback only with ``--debug``.
"""

from __future__ import annotations

from dataclasses import dataclass


class MlopsError(Exception):
    exit_code = 1
    title = "error"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config, located as precisely as we can."""

    key: str  # dotted key, e.g. "model.lr"
    message: str  # what was expected and what was given
    where: str = ""  # "recipes/x.yaml:12", or "override 'model.lr=abc'"
    hint: str = ""

    def render(self) -> str:
        loc = f"{self.where}: " if self.where else ""
        key = f"`{self.key}` " if self.key else ""
        hint = f" Hint: {self.hint}" if self.hint else ""
        msg = self.message if self.message.endswith((".", "?")) else self.message + "."
        return f"{loc}{key}{msg}{hint}"


class ConfigError(MlopsError):
    exit_code = 2
    title = "invalid configuration"

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the configuration:"
        super().__init__("\n".join([head, *(f"  - {p.render()}" for p in self.problems)]))


class DataError(MlopsError):
    exit_code = 3
    title = "data validation failed"


class ServiceError(MlopsError):
    exit_code = 4
    title = "service error"


class TargetUnavailable(MlopsError):
    exit_code = 5
    title = "target unavailable"


class RegistryError(MlopsError):
    exit_code = 6
    title = "registry error"


class PredictError(MlopsError):
    exit_code = 7
    title = "bad input rows"


class ProjectBusy(MlopsError):
    """Another `mlops` command holds the project lock (mlops._lock); the message names it."""

    exit_code = 8
    title = "project busy"


class GateRejected(MlopsError):
    exit_code = 9
    title = "model rejected by the gate"
