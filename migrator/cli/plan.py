"""``migrator plan``: index the storage roots and cut batches."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, fail, load, out
from migrator.errors import MigratorError
from migrator.state.db import open_state
from scheduler.plan.run import RootPlanSummary, plan


@app.command("plan")
def plan_command(
    config: ConfigOption = DEFAULT_CONFIG,
    mode: Annotated[str | None, typer.Option(
        help="Batching: 'stripe' (whole studies across folders) or 'folder' (folder by folder). "
             "Defaults to batches.mode in the configuration.")] = None,
    distributed: Annotated[bool, typer.Option(
        "--distributed",
        help="Index on the Celery workers, one task per folder on each root's queue. Needs the "
             "[broker] section and running workers; resumes an interrupted distributed plan.")] = False,
) -> None:
    """Index every storage root (only new or changed files) and cut batches."""
    settings = load(config)
    if mode not in (None, "stripe", "folder"):
        raise fail(ValueError(f"--mode must be 'stripe' or 'folder', not {mode!r}"))
    batch_mode: Literal["stripe", "folder"] | None = mode  # type: ignore[assignment]
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} files"),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            tasks = {root.name: progress.add_task(f"indexing {root.name}", total=None)
                     for root in settings.roots}

            def show_folders(root: str, done: int, waiting: int) -> None:
                progress.update(tasks[root], description=f"indexing {root}: {done} folders done, "
                                                         f"{waiting} waiting")

            summaries = plan(settings, sessions, batch_mode,
                             lambda root, count: progress.advance(tasks[root], count),
                             distributed=distributed, on_folders=show_folders)
    except MigratorError as exc:
        raise fail(exc) from None
    print_summary(summaries)
    errors = sum(len(s.folder_errors) for s in summaries)
    if errors:
        console.print(f"{errors} folder(s) could not be read and their files are not indexed; "
                      "fix access or mounts and run 'migrator plan' again")
        raise typer.Exit(1)


def print_summary(summaries: list[RootPlanSummary]) -> None:
    table = Table(title="Plan")
    for column in ("root", "files", "GB", "studies", "batches", "unreadable", "new", "changed", "gone"):
        table.add_column(column, justify="left" if column == "root" else "right")
    for s in summaries:
        table.add_row(s.root, str(s.files), f"{s.bytes / 1e9:.2f}", str(s.studies), str(s.batches),
                      str(s.unreadable), str(s.new), str(s.changed), str(s.gone))
    out.print(table)
    for s in summaries:
        for error in s.folder_errors:
            console.print(f"[yellow]warning:[/yellow] {error}", highlight=False)
        for link in s.skipped_links:
            console.print(f"[yellow]warning:[/yellow] {link}", highlight=False)
