"""The Celery application: one queue per storage root, tasks that carry batch ids only.

Workers read the configuration named by ``MIGRATOR_CONFIG``. A task is
acknowledged after it ran (late acknowledgement), so a message whose worker
died goes back to its queue. The batch lease in the state database makes a
second delivery of the same message a no-op.
"""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_process_init

from migrator.config import Settings, load_settings
from migrator.context import RunContext
from migrator.errors import ConfigError
from migrator.pipeline import MIGRATE_BATCH_TASK
from migrator.pipeline import migrate_batch as run_batch

LOGGER = logging.getLogger(__name__)


def load_worker_settings() -> Settings:
    """Load the configuration named by MIGRATOR_CONFIG; it must configure a broker."""
    path = os.environ.get("MIGRATOR_CONFIG", "migrator.toml")
    settings = load_settings(path)
    if settings.broker is None:
        raise ConfigError(f"{path} has no [broker] section; workers need the broker URL")
    return settings


def make_app(settings: Settings) -> Celery:
    """Create the Celery application for ``settings.broker``."""
    assert settings.broker is not None
    app = Celery("pacs_migrator", broker=settings.broker.broker_url())
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    return app


_SETTINGS = load_worker_settings() if os.environ.get("MIGRATOR_CONFIG") else None
app = make_app(_SETTINGS) if _SETTINGS is not None else Celery("pacs_migrator")
_CONTEXT: RunContext | None = None


@worker_process_init.connect
def _open_context(**_: object) -> None:
    # Each prefork child opens its own database connections after the fork.
    global _CONTEXT
    if _SETTINGS is not None:
        _CONTEXT = RunContext.open(_SETTINGS)


@app.task(name=MIGRATE_BATCH_TASK)
def migrate_batch(batch_id: int) -> dict[str, int]:
    """Migrate one batch by id; returns its outcome counts."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = RunContext.open(load_worker_settings())
    result = run_batch(_CONTEXT, batch_id)
    return dict(result.outcomes)
