"""``migrator transform load``, ``migrator transform run`` and ``migrator transform status``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, load, out
from migrator.context import RunContext
from migrator.errors import MigratorError
from migrator.state.db import open_state
from migrator.state.models import TransformStatus
from migrator.transform.input import TransformListError, load_list, read_list
from migrator.transform.run import run_transforms
from migrator.transform.status import read_progress

transform_app = typer.Typer(help="Rotate or flip listed instances and send them on, after the migration.",
                            no_args_is_help=True)
app.add_typer(transform_app, name="transform")

#: Exit statuses besides 0.
EXIT_NOT_DONE = 1
EXIT_USAGE = 2

COLUMNS = [status.value for status in TransformStatus]


def _error(message: object, status: int) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(status)


@transform_app.command("load")
def load_command(
    csv_file: Annotated[Path, typer.Argument(
        metavar="CSV", help="Lines of sop_instance_uid,transformation; see the README for the format.")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Validate a CSV list and add its SOP Instance UIDs as pending transformations.

    A list with an invalid line loads nothing and exits 2, naming every
    invalid line. Loading a list again changes the transformation of items
    not yet delivered transformed, and exits 1 when it lists an item
    already delivered with another transformation.
    """
    settings = load(config)
    try:
        entries = read_list(csv_file)
    except TransformListError as exc:
        raise _error(exc, EXIT_USAGE) from None
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with sessions() as session:
            summary = load_list(session, entries, csv_file.name)
    except (MigratorError, SQLAlchemyError) as exc:
        raise _error(exc, EXIT_NOT_DONE) from None
    out.print(f"{csv_file}: {len(entries)} SOP Instance UID(s); {summary.added} added, {summary.changed} "
              f"with a changed transformation, {summary.unchanged} unchanged", highlight=False)
    for conflict in summary.conflicts:
        console.print(f"[yellow]not applied:[/yellow] {conflict}", highlight=False)
    if summary.conflicts:
        raise typer.Exit(EXIT_NOT_DONE)


@transform_app.command("run")
def run_command(
    config: ConfigOption = DEFAULT_CONFIG,
    sinbinned: Annotated[bool, typer.Option(
        "--sinbinned", help="Also try the items refused into the sin bin, after changing the options "
                            "that refused them (such as transform.allow_patient_geometry).")] = False,
) -> None:
    """Retrieve, transform and send every pending or failed item; exits 1 while any item has failed.

    Instances that the migration held back with reason "needs
    transformation" are first added from the legacy database's
    transformation column.
    """
    settings = load(config)
    # OpenJPEG's encoder logs "tile number 1 / 1" at INFO for every frame it encodes.
    logging.getLogger("openjpeg").setLevel(logging.WARNING)
    try:
        context = RunContext.open(settings)
        summary = run_transforms(context, include_sinbinned=sinbinned)
    except (MigratorError, SQLAlchemyError) as exc:
        raise _error(exc, EXIT_NOT_DONE) from None
    if summary.held.imported:
        out.print(f"{summary.held.imported} instance(s) held back by the migration added from the legacy "
                  "database", highlight=False)
    for invalid in summary.held.invalid:
        shown = "no value" if invalid.value is None else repr(invalid.value)
        console.print(f"[yellow]held back without a valid transformation:[/yellow] instance "
                      f"{invalid.instance_id} ({invalid.rel_path}): {shown}; correct it in the legacy "
                      "database or list the instance in a CSV", highlight=False)
    table = Table("status", "items", title="This run")
    for status in COLUMNS:
        if summary.statuses.get(status):
            table.add_row(status, f"{summary.statuses[status]:,}")
    out.print(table)
    if not summary.statuses:
        out.print("nothing to transform; load a list with 'migrator transform load CSV'")
    if summary.statuses.get(TransformStatus.FAILED.value):
        out.print("see the reasons with 'migrator transform status --list failed'")
        raise typer.Exit(EXIT_NOT_DONE)


@transform_app.command("status")
def status_command(
    config: ConfigOption = DEFAULT_CONFIG,
    list_status: Annotated[list[str] | None, typer.Option(
        "--list", metavar="STATUS",
        help=f"Also list the items with this status and their reason; repeat for more. One of "
             f"{', '.join(COLUMNS)}.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="List at most this many items.")] = 50,
) -> None:
    """Show the transform items per transformation and status, and the instances still held back."""
    settings = load(config)

    unknown = [status for status in list_status or [] if status not in COLUMNS]
    if unknown:
        raise _error(f"--list {', '.join(unknown)} is not a status; expected one of {', '.join(COLUMNS)}",
                     EXIT_USAGE)
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with sessions() as session:
            progress = read_progress(session, list_status or [], limit)
    except (MigratorError, SQLAlchemyError) as exc:
        raise _error(exc, EXIT_NOT_DONE) from None

    table = Table("transformation", *COLUMNS, "total", title="Transformations")
    for name, counts in sorted(progress.counts.items()):
        table.add_row(name, *(f"{counts.get(status, 0):,}" for status in COLUMNS), f"{sum(counts.values()):,}")
    totals = progress.totals()
    table.add_row("all", *(f"{totals.get(status, 0):,}" for status in COLUMNS), f"{sum(totals.values()):,}",
                  style="bold")
    out.print(table)
    for source, counts in sorted(progress.by_source.items()):
        parts = ", ".join(f"{count:,} {status}" for status, count in sorted(counts.items()))
        out.print(f"from {source}: {parts}", highlight=False)
    if progress.held_back:
        out.print(f"{progress.held_back:,} instance(s) held back by the migration wait for "
                  "'migrator transform run' to add them", highlight=False)

    if list_status:
        listing = Table(title=f"Items ({len(progress.listed)} shown)")
        for column in ("item", "SOP Instance UID", "transformation", "status", "from", "reason"):
            listing.add_column(column, overflow="fold")
        for item in progress.listed:
            listing.add_row(str(item.id), item.sop_instance_uid, item.transformation, item.status,
                            item.retrieved_from or "", item.reason or "")
        out.print(listing)
