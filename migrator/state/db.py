"""Opening the state database and bringing its schema up to date."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from migrator.errors import StateError

LOGGER = logging.getLogger(__name__)
ALEMBIC_DIR = Path(__file__).with_name("alembic")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the progress display read while workers write; the busy
    # timeout makes concurrent writers from the process pool wait, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: URL | str) -> Engine:
    """Create an engine for the state database, SQLite or PostgreSQL."""
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def upgrade(engine: Engine) -> None:
    """Apply every Alembic migration that the database does not have yet."""
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        url = engine.url.render_as_string(hide_password=True)
        raise StateError(f"cannot open the state database {url}: {exc.orig}") from exc


def open_state(url: URL | str) -> sessionmaker[Session]:
    """Open the state database, migrate it, and return a session factory."""
    engine = make_engine(url)
    try:
        upgrade(engine)
    except SQLAlchemyError as exc:
        url_text = engine.url.render_as_string(hide_password=True)
        raise StateError(f"cannot prepare the state database {url_text}: {exc}") from exc
    return sessionmaker(engine, expire_on_commit=False)
