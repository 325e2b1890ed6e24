"""The `mlops` command line (Typer); see `mlops --help`."""

from mlops.cli import _lifecycle  # noqa: F401  (registers run, deploy, promote, rollback, runs)
from mlops.cli._app import app, main
from mlops.cli._data import data_app
from mlops.cli._init import init
from mlops.cli._monitor import monitor_app, validate
from mlops.cli._stack import stack_app

app.command()(validate)
app.command()(init)
app.add_typer(monitor_app, name="monitor")
app.add_typer(data_app, name="data")
app.add_typer(stack_app, name="stack")

__all__ = ["app", "main"]
