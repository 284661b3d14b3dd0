"""Initial schema: storage roots, instances, batches, audit, sin bin items.

Revision ID: 0001
Revises: 
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('storage_roots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('root_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('byte_count', sa.BigInteger(), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['root_id'], ['storage_roots.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index('ix_batches_status', ['status', 'root_id', 'seq'], unique=False)

    op.create_table('instances',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('root_id', sa.Integer(), nullable=False),
    sa.Column('rel_path', sa.Text(), nullable=False),
    sa.Column('folder', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('transfer_syntax', sa.Text(), nullable=True),
    sa.Column('sop_class_uid', sa.Text(), nullable=True),
    sa.Column('sop_instance_uid', sa.Text(), nullable=True),
    sa.Column('study_uid', sa.Text(), nullable=True),
    sa.Column('series_uid', sa.Text(), nullable=True),
    sa.Column('modality', sa.Text(), nullable=True),
    sa.Column('has_pixel_data', sa.Boolean(), nullable=True),
    sa.Column('parse_error', sa.Text(), nullable=True),
    sa.Column('batch_id', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=True),
    sa.Column('indexed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ),
    sa.ForeignKeyConstraint(['root_id'], ['storage_roots.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('root_id', 'rel_path', name='uq_instances_root_path')
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index('ix_instances_batch', ['batch_id'], unique=False)
        batch_op.create_index('ix_instances_root_folder', ['root_id', 'folder'], unique=False)
        batch_op.create_index('ix_instances_sop_instance_uid', ['sop_instance_uid'], unique=False)
        batch_op.create_index('ix_instances_unbatched', ['root_id', 'batch_id', 'study_uid'], unique=False)

    op.create_table('audit',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('reconciliation', sa.String(length=32), nullable=True),
    sa.Column('route_rule', sa.String(length=200), nullable=True),
    sa.Column('destination', sa.String(length=100), nullable=True),
    sa.Column('dimse_status', sa.Integer(), nullable=True),
    sa.Column('changes', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.create_index('ix_audit_instance', ['instance_id'], unique=False)
        batch_op.create_index('ix_audit_time', ['finished_at'], unique=False)

    op.create_table('sinbin_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('archived', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_to', sa.String(length=100), nullable=True),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sinbin_items', schema=None) as batch_op:
        batch_op.create_index('ix_sinbin_instance', ['instance_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('sinbin_items', schema=None) as batch_op:
        batch_op.drop_index('ix_sinbin_instance')

    op.drop_table('sinbin_items')
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_time')
        batch_op.drop_index('ix_audit_instance')

    op.drop_table('audit')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index('ix_instances_unbatched')
        batch_op.drop_index('ix_instances_sop_instance_uid')
        batch_op.drop_index('ix_instances_root_folder')
        batch_op.drop_index('ix_instances_batch')

    op.drop_table('instances')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index('ix_batches_status')

    op.drop_table('batches')
    op.drop_table('storage_roots')
