"""``migrator demo``: migrate a demo archive built from pydicom's sample files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from migrator.cli import app, console, fail, out
from migrator.cli.plan import print_summary
from migrator.demo.run import run_demo
from migrator.errors import MigratorError


@app.command("demo")
def demo_command(
    folder: Annotated[Path, typer.Option("--dir", help="Folder for the demo; emptied if an earlier "
                                         "demo made it.")] = Path("demo-run"),
    processes: Annotated[int, typer.Option(help="Worker processes for plan and start.")] = 2,
) -> None:
    """Build a demo archive, migrate it to three local SCPs, and check every file."""
    try:
        result = run_demo(folder.resolve(), processes)
    except MigratorError as exc:
        raise fail(exc) from None
    print_summary(result.plan)
    table = Table(title="Demo outcomes")
    for column in ("expected", "recorded outcome", "files"):
        table.add_column(column)
    for (expected, outcome), count in sorted(result.table.items()):
        table.add_row(expected, outcome, str(count))
    out.print(table)
    for problem in result.problems:
        console.print(f"[red]problem:[/red] {problem}", highlight=False)
    if result.problems:
        out.print(f"{len(result.problems)} file(s) unaccounted for or in the wrong place")
        raise typer.Exit(1)
    total = sum(result.table.values())
    out.print(f"every one of the {total} files is accounted for and landed where it should; "
                  f"state database and configuration in {folder}")
    command = _own_command()
    config = folder / "migrator.toml"
    console.print(f"next: {command} status --config {config}\n"
                  f"      {command} sinbin list --config {config}\n"
                  f"      {command} trace PATH-OR-UID --config {config}", highlight=False)


def _own_command() -> str:
    """Return how to call this migrator again from the current folder."""
    executable = Path(sys.argv[0])
    if executable.name != "migrator":
        return "migrator"
    try:
        return str(executable.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(executable)
