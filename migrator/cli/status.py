"""``migrator status``: outcome counts per root, rates, batches and the ETA."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session, sessionmaker

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, fail, load, out
from migrator.errors import MigratorError
from migrator.state.db import open_state
from migrator.state.models import FINAL_OUTCOMES, Outcome
from migrator.status import PENDING, Status, failed_instances, read_status

COLUMNS = [PENDING] + [outcome.value for outcome in FINAL_OUTCOMES]


@app.command("status")
def status_command(
    config: ConfigOption = DEFAULT_CONFIG,
    failed: Annotated[int, typer.Option(
        "--failed", help="Also list up to this many failed instances with their reason.")] = 0,
    watch: Annotated[float, typer.Option(
        help="Redraw every this many seconds until Ctrl-C; 0 prints once.")] = 0,
) -> None:
    """Show outcomes per root, instances per hour per root and destination, batches and the ETA."""
    settings = load(config)
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        if watch > 0:
            _watch(sessions, watch)
            return
        with sessions() as session:
            status = read_status(session)
            failures = failed_instances(session, failed) if failed else []
    except MigratorError as exc:
        raise fail(exc) from None
    out.print(render(status))
    if failed and not failures:
        out.print("no failed instances")
    if failures:
        listing = Table(title=f"Failed instances (first {len(failures)})")
        for column in ("instance", "root", "path", "destination", "reason"):
            listing.add_column(column, overflow="fold")
        for item in failures:
            listing.add_row(str(item.instance_id), item.root, item.rel_path, item.destination or "",
                            item.reason or "")
        out.print(listing)


def _watch(sessions: sessionmaker[Session], seconds: float) -> None:
    with Live(console=out, auto_refresh=False) as live:
        try:
            while True:
                with sessions() as session:
                    live.update(render(read_status(session)), refresh=True)
                time.sleep(seconds)
        except KeyboardInterrupt:
            return


def render(status: Status) -> Group:
    """Build the status display: the outcome table and the lines under it."""
    table = Table(title="Migration status")
    table.add_column("root")
    for column in COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    table.add_column("last hour", justify="right")
    for root, counts in sorted(status.by_root.items()):
        table.add_row(root, *(str(counts.get(column, 0)) for column in COLUMNS),
                      str(status.last_hour_by_root.get(root, 0)))
    totals = status.totals()
    table.add_row("all", *(str(totals.get(column, 0)) for column in COLUMNS), str(status.last_hour),
                  style="bold")
    rate = "n/a" if status.images_per_hour is None else f"{status.images_per_hour:,.0f}"
    destinations = ", ".join(f"{name} {count:,}" for name, count in
                             sorted(status.last_hour_by_destination.items())) or "none"
    batches = ", ".join(f"{name} {count}" for name, count in sorted(status.batches.items())) or "none"
    eta = status.eta_hours()
    eta_text = "n/a (nothing delivered in the last hour)" if eta is None else f"{eta:,.1f} h"
    return Group(
        table,
        Text(f"instances delivered in the last hour: {status.last_hour:,}; average from the first "
             f"to the last delivery, pauses included: {rate}/hour"),
        Text(f"last hour per destination: {destinations}"),
        Text(f"batches: {batches}; in flight: "
             f"{status.batches.get('queued', 0) + status.batches.get('running', 0)}; "
             f"with failed instances: {status.batches_with_failures}; "
             f"waiting for an automatic retry: {status.batches_retrying}"),
        Text(f"sin bin: {totals.get(Outcome.SINBINNED.value, 0):,}; estimated time left at the "
             f"last hour's rate: {eta_text}"),
    )
