"""Pixel transformations: the listed SOP Instance UIDs, their transformation and status.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-10
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('transform_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.Text(), nullable=False),
    sa.Column('transformation', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('source_detail', sa.Text(), nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('retrieved_from', sa.String(length=16), nullable=True),
    sa.Column('destination', sa.String(length=100), nullable=True),
    sa.Column('new_sop_instance_uid', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('loaded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid', name='uq_transform_items_uid')
    )
    with op.batch_alter_table('transform_items', schema=None) as batch_op:
        batch_op.create_index('ix_transform_items_instance', ['instance_id'], unique=False)
        batch_op.create_index('ix_transform_items_new_uid', ['new_sop_instance_uid'], unique=False)
        batch_op.create_index('ix_transform_items_status', ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('transform_items', schema=None) as batch_op:
        batch_op.drop_index('ix_transform_items_status')
        batch_op.drop_index('ix_transform_items_new_uid')
        batch_op.drop_index('ix_transform_items_instance')
    op.drop_table('transform_items')
