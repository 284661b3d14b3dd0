"""The batch pipeline: one plain function, called by the embedded pool and by Celery."""

from migrator.pipeline.batch import BatchResult, migrate_batch

#: The Celery task name under which workers run ``migrate_batch``.
MIGRATE_BATCH_TASK = "migrator.migrate_batch"

__all__ = ["MIGRATE_BATCH_TASK", "BatchResult", "migrate_batch"]
