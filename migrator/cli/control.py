"""``migrator pause``, ``migrator resume`` and ``migrator requeue``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, fail, load, out
from migrator.controls import set_paused
from migrator.errors import MigratorError
from migrator.requeue import requeue_failed
from migrator.state.db import open_state


@app.command("pause")
def pause_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Stop starting new batches; running batches finish. Every dispatcher obeys."""
    _set(config, paused=True)
    out.print("paused: no new batch starts until 'migrator resume'")


@app.command("resume")
def resume_command(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Let dispatchers start batches again."""
    _set(config, paused=False)
    out.print("resumed")


def _set(config: ConfigOption, paused: bool) -> None:
    settings = load(config)
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with sessions() as session:
            set_paused(session, paused)
    except MigratorError as exc:
        raise fail(exc) from None


@app.command("requeue")
def requeue_command(
    config: ConfigOption = DEFAULT_CONFIG,
    root: Annotated[str | None, typer.Option(help="Only failed instances of this storage root.")] = None,
    reason: Annotated[str | None, typer.Option(
        help="Only failures whose reason contains this text, e.g. 'timed out'.")] = None,
    since: Annotated[datetime | None, typer.Option(
        help="Only failures recorded at or after this time (UTC), e.g. 2026-12-04T08:00.")] = None,
) -> None:
    """Return failed instances to the plan; the next 'migrator start' sends only those."""
    settings = load(config)
    try:
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        with sessions() as session:
            instances, batches = requeue_failed(session, root, reason, since)
    except MigratorError as exc:
        raise fail(exc) from None
    out.print(f"{instances} failed instance(s) in {batches} batch(es) returned to the plan; "
              "run 'migrator start' to send them")
