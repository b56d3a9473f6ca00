"""retention: policies, legal holds, runs, retention checkpoints

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 12:00:00.000000

Also the lease row retention runs take by compare-and-set (one run at a time across
replicas), created here so that taking it is always an UPDATE.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('retention_policies',
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('action_class', sa.String(length=32), nullable=False),
    sa.Column('days', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_retention_policies_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', 'action_class', name=op.f('pk_retention_policies'))
    )
    op.create_table('legal_holds',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('values', sa.JSON(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('placed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('release_reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_legal_holds_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_legal_holds'))
    )
    with op.batch_alter_table('legal_holds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_legal_holds_tenant_id'), ['tenant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_legal_holds_released_at'), ['released_at'], unique=False)

    op.create_table('retention_runs',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=True),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_runs'))
    )
    with op.batch_alter_table('retention_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retention_runs_started_at'), ['started_at'], unique=False)

    leases = op.create_table('retention_leases',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_retention_leases'))
    )
    op.bulk_insert(
        leases, [{'name': 'retention', 'holder': None, 'expires_at': datetime(1970, 1, 1, tzinfo=UTC)}]
    )

    op.create_table('retention_archives',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('location', sa.Text(), nullable=False),
    sa.Column('index_name', sa.String(length=255), nullable=True),
    sa.Column('records', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('restored_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_retention_archives_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_archives'))
    )
    with op.batch_alter_table('retention_archives', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retention_archives_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('retention_checkpoints',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('stream_id', sa.String(length=128), nullable=False),
    sa.Column('first_sequence', sa.Integer(), nullable=False),
    sa.Column('last_sequence', sa.Integer(), nullable=False),
    sa.Column('archive_id', sa.Integer(), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.Column('signer', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['archive_id'], ['retention_archives.id'], name=op.f('fk_retention_checkpoints_archive_id_retention_archives')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_checkpoints')),
    sa.UniqueConstraint('stream_id', 'first_sequence', 'last_sequence', name=op.f('uq_retention_checkpoints_stream_id'))
    )
    with op.batch_alter_table('retention_checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retention_checkpoints_stream_id'), ['stream_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_retention_checkpoints_tenant_id'), ['tenant_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('retention_checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retention_checkpoints_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_retention_checkpoints_stream_id'))
    op.drop_table('retention_checkpoints')
    with op.batch_alter_table('retention_archives', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retention_archives_tenant_id'))
    op.drop_table('retention_archives')
    op.drop_table('retention_leases')
    with op.batch_alter_table('retention_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retention_runs_started_at'))
    op.drop_table('retention_runs')
    with op.batch_alter_table('legal_holds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_legal_holds_released_at'))
        batch_op.drop_index(batch_op.f('ix_legal_holds_tenant_id'))
    op.drop_table('legal_holds')
    op.drop_table('retention_policies')
