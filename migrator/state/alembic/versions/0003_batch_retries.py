"""Automatic batch retries: transient failures in the audit, backoff on batches.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.add_column(sa.Column('retries', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('failure_reason', sa.Text(), nullable=True))
    with op.batch_alter_table('audit') as audit:
        audit.add_column(sa.Column('transient', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('audit') as audit:
        audit.drop_column('transient')
    with op.batch_alter_table('batches') as batch:
        batch.drop_column('failure_reason')
        batch.drop_column('retry_at')
        batch.drop_column('retries')
