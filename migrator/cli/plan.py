"""``migrator plan``: index the storage roots and cut batches."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, fail, load, out
from migrator.collisions.detect import CollisionCheck
from migrator.collisions.report import policy_of
from migrator.config import CollisionConfig
from migrator.errors import MigratorError
from migrator.state.db import open_state
from migrator.state.models import CollisionKind
from scheduler.plan.run import IndexCost, RootPlanSummary, plan


@app.command("plan")
def plan_command(
    config: ConfigOption = DEFAULT_CONFIG,
    mode: Annotated[str | None, typer.Option(
        help="Batching: 'stripe' (whole studies across folders) or 'folder' (folder by folder). "
             "Defaults to batches.mode in the configuration.")] = None,
    distributed: Annotated[bool, typer.Option(
        "--distributed",
        help="Index on the Celery workers, one task per folder on each root's queue. Needs the "
             "\\[broker] section and running workers; resumes an interrupted distributed plan.")] = False,
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

            checks: list[CollisionCheck] = []
            costs: list[IndexCost] = []
            summaries = plan(settings, sessions, batch_mode,
                             lambda root, count: progress.advance(tasks[root], count),
                             distributed=distributed, on_folders=show_folders, on_check=checks.append,
                             on_indexed=costs.append)
    except MigratorError as exc:
        raise fail(exc) from None
    print_summary(summaries)
    if costs:
        print_index_cost(costs[0])
    print_collisions(checks[0], settings.collisions)
    errors = sum(len(s.folder_errors) for s in summaries)
    if errors:
        console.print(f"{errors} folder(s) could not be read and their files are not indexed; "
                      "fix access or mounts and run 'migrator plan' again")
        raise typer.Exit(1)


def print_summary(summaries: list[RootPlanSummary]) -> None:
    table = Table(title="Plan")
    for column in ("root", "files", "GB", "studies", "batches", "unreadable", "new", "changed", "gone",
                   "in collisions"):
        table.add_column(column, justify="left" if column == "root" else "right")
    for s in summaries:
        table.add_row(s.root, str(s.files), f"{s.bytes / 1e9:.2f}", str(s.studies), str(s.batches),
                      str(s.unreadable), str(s.new), str(s.changed), str(s.gone), str(s.in_collisions))
    out.print(table)
    for s in summaries:
        for error in s.folder_errors:
            console.print(f"[yellow]warning:[/yellow] {error}", highlight=False)
        for link in s.skipped_links:
            console.print(f"[yellow]warning:[/yellow] {link}", highlight=False)


def print_index_cost(cost: IndexCost) -> None:
    """Print the indexing's rate; ``loadtest bench`` reads this line."""
    out.print(f"indexing: {cost.files_listed:,} file(s) listed, {cost.files_parsed:,} parsed in "
                  f"{cost.seconds:.1f} s, {cost.cpu_seconds:.2f} CPU-seconds with the database writes "
                  f"({cost.files_per_cpu_second:,.0f} files per CPU-second)", highlight=False)


def print_collisions(check: CollisionCheck, policies: CollisionConfig) -> None:
    """Print the collision counts of the plan's check, with the policy that ``migrator start`` applies."""
    table = Table(title="Collisions")
    for column in ("kind", "collisions", "files", "policy"):
        table.add_column(column, justify="right" if column in ("collisions", "files") else "left")
    for kind in CollisionKind:
        table.add_row(kind.value, str(check.collisions[kind.value]), str(check.files[kind.value]),
                      policy_of(policies, kind.value))
    out.print(table)
    out.print(f"byte-identical copies, sent once as duplicates: {check.identical_copies}; Patient IDs with "
              f"different header names that the legacy database corrects to one: {check.resolved_by_legacy}; "
              f"files hashed to compare their content: {check.hashed}", highlight=False)
    if check.not_compared:
        console.print(f"[yellow]warning:[/yellow] {len(check.not_compared)} file(s) could not be read to "
                      "compare their content and count as different; make their storage roots readable "
                      "on this machine and run 'migrator plan' again", highlight=False)
    if any(check.collisions.values()):
        out.print("'migrator collisions' lists the files; add --csv FILE to save the list", highlight=False)
