"""The Celery application: one queue per storage root, tasks that carry row ids only.

Workers read the configuration named by ``MIGRATOR_CONFIG``. A task is
acknowledged after it ran (late acknowledgement), so a message whose worker
died goes back to its queue. The batch and folder leases in the state
database make a second delivery of the same message a no-op. Workers send
task events, so Flower shows every task with its root's queue.
"""

from __future__ import annotations

import logging
import os

from celery import Celery, Task
from celery.signals import worker_process_init

from migrator.audit import HOST
from migrator.config import Settings, load_settings
from migrator.context import RunContext
from migrator.errors import ConfigError, StateError
from migrator.index import INDEX_FOLDER_TASK
from migrator.index.distributed import index_folder as run_index_folder
from migrator.pipeline import MIGRATE_BATCH_TASK
from migrator.pipeline import migrate_batch as run_batch
from migrator.task_events import ShadowNamedAMQP

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
    app = Celery("pacs_migrator", broker=settings.broker.broker_url(), amqp=ShadowNamedAMQP)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Task events for Flower, also for workers started with plain
        # "celery worker": received, started, succeeded or failed. Tasks
        # queued through this app (Flower's task API) send task-sent events.
        worker_send_task_events=True,
        task_send_sent_event=True,
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


def _context() -> RunContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = RunContext.open(load_worker_settings())
    return _CONTEXT


#: Seconds before a batch task whose claim found the state database down is delivered again.
STATE_RETRY_SECONDS = 10


@app.task(name=MIGRATE_BATCH_TASK, bind=True)
def migrate_batch(self: Task, batch_id: int) -> dict[str, int]:
    """Migrate one batch by id; returns its outcome counts.

    While the state database cannot be reached the task is sent again
    every STATE_RETRY_SECONDS, without a limit: the batch stays queued.
    """
    try:
        result = run_batch(_context(), batch_id)
    except StateError as exc:
        LOGGER.warning("%s; trying again in %d s", exc, STATE_RETRY_SECONDS)
        raise self.retry(countdown=STATE_RETRY_SECONDS, max_retries=None) from exc
    return dict(result.outcomes)


@app.task(name=INDEX_FOLDER_TASK, bind=True)
def index_folder(self: Task, folder_id: int, root: str, folder: str) -> dict[str, int] | None:
    """Index one folder of a distributed plan by its row id; returns what it found.

    ``root`` and ``folder`` only label the task in the logs and in Flower:
    the row names the folder to index.
    """
    context = _context()
    summary = run_index_folder(context.sessions, context.settings, folder_id, context.owner,
                               self.request.hostname or HOST)
    if summary is None:
        return None
    return {"files": summary.files, "new": summary.new, "changed": summary.changed,
            "unreadable": summary.unreadable, "gone": summary.gone,
            "folder_errors": len(summary.folder_errors)}
