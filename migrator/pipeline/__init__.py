"""The batch pipeline: one plain function, called by the embedded pool and by Celery."""

from migrator.pipeline.batch import BatchResult, migrate_batch

__all__ = ["BatchResult", "migrate_batch"]
