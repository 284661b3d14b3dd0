"""``migrator report``: write the migration's record as one HTML page."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, console, fail, load, out
from migrator.errors import MigratorError
from migrator.report import read_report, render_report
from migrator.report.sql import Window
from migrator.state.db import open_state


@app.command("report")
def report_command(
    config: ConfigOption = DEFAULT_CONFIG,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="HTML file to write; an existing file is replaced.")]
    = Path("migration-report.html"),
    since: Annotated[datetime | None, typer.Option(
        help="Chart only deliveries at or after this time (UTC), e.g. 2026-12-04T08:00.")] = None,
    until: Annotated[datetime | None, typer.Option(
        help="Chart only deliveries before this time (UTC).")] = None,
    top: Annotated[int, typer.Option(
        min=1, help="How many failure reasons and studies with the largest arrival spread to list.")] = 20,
) -> None:
    """Write an HTML page with throughput charts, per-study arrival spread and outcome counts."""
    try:
        window = Window(since, until)
    except ValueError as exc:
        console.print(f"[red]error:[/red] --since must be before --until: {exc}", highlight=False)
        raise typer.Exit(2) from None
    settings = load(config)
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with sessions() as session:
            report = read_report(session, window, top)
    except MigratorError as exc:
        raise fail(exc) from None
    page = render_report(report)
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise fail(OSError(f"cannot write the report to {output}: {exc.strerror}")) from None
    if not report.summary.instances:
        console.print("the state database has no indexed instance yet, and the report states it. "
                      "Run 'migrator plan' and 'migrator start' first.", highlight=False)
    out.print(f"wrote {output} ({report.summary.instances:,} instances, "
              f"{report.spread.studies:,} studies delivered)", highlight=False)
