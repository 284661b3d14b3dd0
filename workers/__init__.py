"""The Celery application of the distributed mode; the embedded mode does not need it."""
