"""PostgreSQL databases and Redis keys of the benchmark's own, and what the state database measures."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from migrator.state.models import Base

LOGGER = logging.getLogger(__name__)


@contextmanager
def postgres_database(admin_url: str, purpose: str) -> Iterator[str]:
    """Create an empty database on the server of ``admin_url``, yield its URL, then drop it.

    The database is dropped WITH (FORCE) even if connections remain.
    """
    name = f"bench_{purpose.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        LOGGER.debug("created PostgreSQL database %s", name)
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            LOGGER.debug("dropped PostgreSQL database %s", name)
    finally:
        admin.dispose()


def server_version(admin_url: str) -> str:
    engine = create_engine(admin_url)
    try:
        with engine.connect() as connection:
            return f"PostgreSQL {connection.scalar(text('SHOW server_version'))}"
    finally:
        engine.dispose()


def table_sizes(engine: Engine) -> dict[str, int]:
    """Return table name -> pg_total_relation_size (heap, indexes and TOAST) in bytes."""
    sizes = {}
    with engine.connect() as connection:
        for table in sorted(Base.metadata.tables):
            size = connection.scalar(text("SELECT pg_total_relation_size(to_regclass(:name))"),
                                     {"name": table})
            sizes[table] = int(size or 0)
    return sizes


def vacuum_full(engine: Engine) -> None:
    """Rewrite every table without its dead row versions (VACUUM FULL)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM FULL"))


def remove_redis_keys(redis_url: str, queue_prefix: str) -> int:
    """Delete the Redis keys that name ``queue_prefix``: queues, kombu bindings, limiter counters.

    The prefix must be unique to the run, because every key that contains
    it is deleted. Returns how many keys were deleted.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{queue_prefix}*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()
