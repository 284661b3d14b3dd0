"""``migrator status``: outcome counts overall and per root, and the rate."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, fail, load, out
from migrator.errors import MigratorError
from migrator.state.db import open_state
from migrator.state.models import Outcome
from migrator.status import PENDING, failed_instances, read_status

COLUMNS = [PENDING] + [outcome.value for outcome in Outcome]


@app.command("status")
def status_command(
    config: ConfigOption = DEFAULT_CONFIG,
    failed: Annotated[int, typer.Option(
        "--failed", help="Also list up to this many failed instances with their reason.")] = 0,
) -> None:
    """Show how many instances have each outcome, per root, and images per hour."""
    settings = load(config)
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with sessions() as session:
            status = read_status(session)
            failures = failed_instances(session, failed) if failed else []
    except MigratorError as exc:
        raise fail(exc) from None
    table = Table(title="Migration status")
    table.add_column("root")
    for column in COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    for root, counts in sorted(status.by_root.items()):
        table.add_row(root, *(str(counts.get(column, 0)) for column in COLUMNS))
    totals = status.totals()
    table.add_row("all", *(str(totals.get(column, 0)) for column in COLUMNS), style="bold")
    out.print(table)
    rate = "n/a" if status.images_per_hour is None else f"{status.images_per_hour:,.0f}"
    out.print(f"instances delivered in the last hour: {status.last_hour:,}; average from the first "
              f"to the last delivery, pauses included: {rate}/hour")
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
