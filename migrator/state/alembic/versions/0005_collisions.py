"""Collisions: patient hashes and content hashes in the index, the collisions found, the hash key.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_id_hash', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('patient_name_hash', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('content_sha256', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_instances_patient', ['patient_id_hash', 'patient_name_hash'],
                              unique=False)
    op.create_table('collisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('files', sa.Integer(), nullable=False),
    sa.Column('variants', sa.Integer(), nullable=False),
    sa.Column('first_found_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'key', name='uq_collisions_kind_key')
    )
    op.create_table('collision_members',
    sa.Column('collision_id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('variant', sa.Integer(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['collision_id'], ['collisions.id'], ),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ),
    sa.PrimaryKeyConstraint('collision_id', 'instance_id')
    )
    with op.batch_alter_table('collision_members', schema=None) as batch_op:
        batch_op.create_index('ix_collision_members_instance', ['instance_id'], unique=False)
    op.create_table('hash_keys',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('key', sa.LargeBinary(), nullable=True),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('hash_keys')
    with op.batch_alter_table('collision_members', schema=None) as batch_op:
        batch_op.drop_index('ix_collision_members_instance')
    op.drop_table('collision_members')
    op.drop_table('collisions')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index('ix_instances_patient')
        batch_op.drop_column('content_sha256')
        batch_op.drop_column('patient_name_hash')
        batch_op.drop_column('patient_id_hash')
