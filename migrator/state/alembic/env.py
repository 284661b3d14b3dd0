"""Alembic environment: runs on the connection that ``migrator.state.db`` passes in."""

from alembic import context

from migrator.state.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
