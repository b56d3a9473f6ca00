"""transparency logs: one Merkle tree per stream, its checkpoints, and a witness's state

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 20:53:01.603656

tlog_logs/tlog_nodes/tlog_leaves/tlog_checkpoints hold each (tenant, stream)'s RFC 6962 tree
(audit.tlog); witness_logs is what `ffaudit witness serve` has cosigned per origin. Trees
start empty: records accepted before this revision are not leaves (their chains and engine
checkpoints still prove them).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('tlog_logs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('stream_id', sa.String(length=128), nullable=False),
    sa.Column('origin', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('root_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('min_index', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tlog_logs')),
    sa.UniqueConstraint('origin', name=op.f('uq_tlog_logs_origin'))
    )
    with op.batch_alter_table('tlog_logs', schema=None) as batch_op:
        batch_op.create_index('ix_tlog_logs_tenant_stream', ['tenant_id', 'stream_id'], unique=True)

    op.create_table('witness_logs',
    sa.Column('origin', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('root_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('origin', name=op.f('pk_witness_logs'))
    )
    op.create_table('tlog_checkpoints',
    sa.Column('log_id', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('root_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('signed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cosigned_note', sa.Text(), nullable=True),
    sa.Column('cosigned_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['log_id'], ['tlog_logs.id'], name=op.f('fk_tlog_checkpoints_log_id_tlog_logs')),
    sa.PrimaryKeyConstraint('log_id', 'size', name=op.f('pk_tlog_checkpoints'))
    )
    op.create_table('tlog_leaves',
    sa.Column('log_id', sa.Integer(), nullable=False),
    sa.Column('idx', sa.BigInteger(), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('entry', sa.LargeBinary(length=32), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['log_id'], ['tlog_logs.id'], name=op.f('fk_tlog_leaves_log_id_tlog_logs')),
    sa.PrimaryKeyConstraint('log_id', 'idx', name=op.f('pk_tlog_leaves'))
    )
    with op.batch_alter_table('tlog_leaves', schema=None) as batch_op:
        batch_op.create_index('ix_tlog_leaves_log_sequence', ['log_id', 'sequence', 'idx'], unique=False)

    op.create_table('tlog_nodes',
    sa.Column('log_id', sa.Integer(), nullable=False),
    sa.Column('level', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
    sa.ForeignKeyConstraint(['log_id'], ['tlog_logs.id'], name=op.f('fk_tlog_nodes_log_id_tlog_logs')),
    sa.PrimaryKeyConstraint('log_id', 'level', 'idx', name=op.f('pk_tlog_nodes'))
    )


def downgrade() -> None:
    op.drop_table('tlog_nodes')
    with op.batch_alter_table('tlog_leaves', schema=None) as batch_op:
        batch_op.drop_index('ix_tlog_leaves_log_sequence')

    op.drop_table('tlog_leaves')
    op.drop_table('tlog_checkpoints')
    op.drop_table('witness_logs')
    with op.batch_alter_table('tlog_logs', schema=None) as batch_op:
        batch_op.drop_index('ix_tlog_logs_tenant_stream')

    op.drop_table('tlog_logs')
