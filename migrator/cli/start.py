"""``migrator start``: migrate the planned batches (embedded mode)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, fail, load, out
from migrator.config import Settings
from migrator.errors import MigratorError
from migrator.pipeline.dry_run import WOULD_FAIL
from migrator.state.db import open_state
from migrator.status import PENDING, read_status
from scheduler.dispatch.distributed import run_distributed
from scheduler.dispatch.embedded import run_embedded


@app.command("start")
def start_command(
    config: ConfigOption = DEFAULT_CONFIG,
    retry_failed: Annotated[bool, typer.Option(
        help="Try again every instance whose outcome is 'failed'.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run",
        help="Read, reconcile, route and correct every planned instance on this machine, and send "
             "nothing: the audit records where each would go. Every instance stays pending.")] = False,
) -> None:
    """Migrate every planned batch; run again to resume.

    Without a \\[broker] section batches run on a local process pool; with one,
    they are fed to the Celery workers of each root's queue. A dry run
    always runs on the local pool.
    """
    settings = load(config)
    if dry_run and retry_failed:
        # Resetting failed outcomes is a change to the record, which a dry run must not make.
        raise fail(ValueError("--dry-run cannot be combined with --retry-failed: a dry run changes "
                              "no outcome; rehearse first, then run 'migrator start --retry-failed'"))
    if dry_run:
        raise typer.Exit(_dry_run(settings))
    totals: Counter[str] = Counter()
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with Progress(TextColumn("migrating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console) as progress:
            task = progress.add_task("instances", total=None)
            if settings.broker is not None:
                with sessions() as session:
                    progress.update(task, total=read_status(session).totals().get(PENDING, 0))
                run_distributed(settings, sessions, retry_failed,
                                on_progress=lambda pending: progress.update(
                                    task, completed=(progress.tasks[0].total or 0) - pending))
            else:
                totals = run_embedded(settings, sessions, retry_failed,
                                      on_batch=lambda result, size: progress.advance(task, size),
                                      on_start=lambda total: progress.update(task, total=total))
    except KeyboardInterrupt:
        console.print("interrupted; run 'migrator start' again to resume")
        raise typer.Exit(130) from None
    except MigratorError as exc:
        raise fail(exc) from None
    with sessions() as session:
        status = read_status(session).totals()
    if not totals and settings.broker is None:
        console.print("nothing to migrate: no planned batch left. Run 'migrator plan' for new files"
                      + (f", or 'migrator start --retry-failed' for the {status['failed']} failed "
                         "instance(s)" if status.get("failed") else ""))
    elif settings.broker is not None:
        out.print("outcomes so far: " + ", ".join(f"{k} {v}" for k, v in sorted(status.items())))
    else:
        out.print("outcomes of this run: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    unfinished = False
    if status.get(PENDING):
        unfinished = True
        console.print(f"{status[PENDING]} instance(s) are still pending: their batches are held by "
                      "another run, or they were indexed without a batch; run 'migrator start' again "
                      "once other runs have stopped (and 'migrator plan' first for new files)")
    if status.get("failed"):
        unfinished = True
        console.print(f"{status['failed']} instance(s) failed; 'migrator status --failed 50' lists "
                      "them and 'migrator start --retry-failed' tries them again")
    if unfinished:
        raise typer.Exit(1)


def _dry_run(settings: Settings) -> int:
    """Run ``start --dry-run`` and print where the instances would go; return the exit code."""
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with Progress(TextColumn("dry run"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console) as progress:
            task = progress.add_task("instances", total=None)
            totals = run_embedded(settings, sessions, dry_run=True,
                                  on_batch=lambda result, size: progress.advance(task, size),
                                  on_start=lambda total: progress.update(task, total=total))
    except KeyboardInterrupt:
        console.print("interrupted; nothing was sent")
        return 130
    except MigratorError as exc:
        raise fail(exc) from None
    if not totals:
        console.print("dry run: no planned batch to prepare. Run 'migrator plan' first")
        return 0
    out.print("dry run, nothing sent: " + ", ".join(f"{k.removeprefix('dry run: ')} {v}"
                                                        for k, v in sorted(totals.items())))
    console.print("every instance is still pending; 'migrator trace' shows each one's dry-run entry")
    return 1 if totals.get(WOULD_FAIL) else 0
