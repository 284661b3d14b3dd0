"""Shared fixtures: state databases on SQLite and on the local PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from migrator.demo.scp import StorageSCP
from tests.support import running_scps

#: The PostgreSQL server the tests use; each test gets a database of its own.
POSTGRES_ADMIN_URL = os.environ.get("MIGRATOR_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

pytest_plugins = ["tests.peers"]


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, then drop it."""
    name = f"migrator_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped after the test."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str:
    """The state database URL, once for SQLite and once for PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def scps(tmp_path: Path) -> Iterator[dict[str, StorageSCP]]:
    """Main, non-pixel and sin bin storage SCPs on 127.0.0.1, stopped after the test."""
    with running_scps(tmp_path) as running:
        yield running
