"""The ``migrator`` command line: one module per subcommand."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from migrator.config import Settings, load_settings
from migrator.errors import MigratorError

app = typer.Typer(help="Migrate a legacy PACS archive into a new PACS over DICOM.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
#: Logs, progress bars and errors go to stderr; tables and results to stdout.
console = Console(stderr=True)
# Redirected output keeps whole rows, so paths and UIDs are not folded for grep.
out = Console() if sys.stdout.isatty() else Console(width=2000)

ConfigOption = Annotated[Path, typer.Option(
    "--config", "-c", envvar="MIGRATOR_CONFIG",
    help="Configuration file (TOML). Also read from MIGRATOR_CONFIG.")]
DEFAULT_CONFIG = Path("migrator.toml")


def setup_logging(verbose: bool = False) -> None:
    """Send log records to stderr through rich; only entry points call this."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    # pynetdicom logs every association at INFO, and a refused connection or a
    # failed TLS handshake at ERROR with a traceback. The migrator's own
    # message names the destination and the cause, so pynetdicom logs only with -v.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def load(path: Path) -> Settings:
    """Load the configuration or exit with its error message."""
    try:
        return load_settings(path)
    except MigratorError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(1)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False
          ) -> None:
    setup_logging(verbose)


#: Modules that register subcommands on ``app`` when imported.
COMMAND_MODULES = ["collisions", "config_cmd", "control", "demo", "plan", "report", "sinbin", "start", "status",
                   "trace", "transform", "worker", "verify"]


def load_commands() -> typer.Typer:
    """Import every subcommand module and return the application with all commands."""
    for module in COMMAND_MODULES:
        importlib.import_module(f"migrator.cli.{module}")
    return app


def main() -> None:
    load_commands()()
