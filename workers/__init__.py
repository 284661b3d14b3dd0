"""The Celery application for the distributed mode; the embedded mode does not need it."""
