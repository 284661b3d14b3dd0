"""``migrator worker``: a Celery worker for the distributed mode."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from migrator.cli import DEFAULT_CONFIG, ConfigOption, app, fail, load


@app.command("worker")
def worker_command(
    config: ConfigOption = DEFAULT_CONFIG,
    roots: Annotated[str | None, typer.Option(
        help="Comma-separated storage root names this worker serves; default all.")] = None,
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Run a Celery worker that indexes folders and migrates batches from the queues of the given roots."""
    settings = load(config)
    if settings.broker is None:
        raise fail(ValueError(f"{config} has no [broker] section; the embedded mode needs no worker"))
    names = [name.strip() for name in roots.split(",")] if roots else [r.name for r in settings.roots]
    unknown = sorted(set(names) - {r.name for r in settings.roots})
    if unknown:
        raise fail(ValueError(f"unknown storage root(s) {unknown}; expected names from {config}"))
    os.environ["MIGRATOR_CONFIG"] = str(config.resolve())
    from workers.app import app as celery_app  # reads MIGRATOR_CONFIG when imported

    queues = ",".join(settings.broker.queue(name) for name in names)
    # --task-events: Flower shows tasks only from their events.
    celery_app.worker_main(["worker", "--queues", queues, "--concurrency", str(concurrency),
                            "--loglevel", "INFO", "--task-events", "--without-gossip", "--without-mingle",
                            "--hostname", f"migrator-{'+'.join(names)}@%h"])
