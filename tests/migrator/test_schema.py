"""The Alembic migrations build exactly the schema that the models declare."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from migrator.state.db import make_engine, open_state
from migrator.state.models import Base


def test_migrations_match_models(state_url: str) -> None:
    open_state(state_url)
    engine = make_engine(state_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []
