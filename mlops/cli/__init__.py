"""The `mlops` command line (Typer); see `mlops --help`."""

from mlops.cli._app import app, main

__all__ = ["app", "main"]
