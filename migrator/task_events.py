"""Celery task events that name each task with its root's queue, for Flower.

Tasks are sent with a shadow name such as ``migrator.migrate_batch[migrator.share01]``.
Celery 5 puts the shadow name into the worker's task-received event, but
its task-sent event carries the registered name. Flower (2.2) lets a
task-sent event that arrives after the task-received event overwrite the
name, so some tasks would lose their root. The sent events of these apps
carry the shadow name as well.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.amqp import AMQP

from migrator.config import Settings


class ShadowNamedAMQP(AMQP):  # type: ignore[misc]
    """Celery's message builder, with the shadow name in task-sent events."""

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(*args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message


def sender_app(settings: Settings, name: str) -> Celery:
    """Return a Celery app that queues tasks on ``settings.broker`` and sends task-sent events."""
    assert settings.broker is not None
    app = Celery(name, broker=settings.broker.broker_url(), amqp=ShadowNamedAMQP)
    app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True,
                    task_send_sent_event=True)
    return app
