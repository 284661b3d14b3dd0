"""``migrator status``: outcome counts overall and per root, and the rate."""

from __future__ import annotations

from rich.table import Table

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, fail, load, out
from migrator.errors import MigratorError
from migrator.state.db import open_state
from migrator.state.models import Outcome
from migrator.status import PENDING, read_status

COLUMNS = [PENDING] + [outcome.value for outcome in Outcome]


@app.command("status")
def status_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Show how many instances have each outcome, per root, and images per hour."""
    settings = load(config)
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with sessions() as session:
            status = read_status(session)
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
    console.print(f"images/hour (first to last delivery): {rate}")
