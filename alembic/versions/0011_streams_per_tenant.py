"""stream names are scoped by tenant: (tenant_id, stream) keys every stream table

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 13:10:00.000000

Before, a stream name was global: one tenant could register another tenant's (future) name,
and the answer to a registration told whether a name existed elsewhere. The four tables keyed
by stream are rebuilt with the tenant in their keys. Their rows are read, the tables dropped
and created again under the same names (constraint names must match the models' naming
convention on PostgreSQL, where a renamed table keeps its old constraint names), and the rows
written back with their stream's tenant. Pending records keep everything but their row id.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op


revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HASH = sa.String(length=64)
_TS = sa.DateTime(timezone=True)


def _rows(name: str) -> list[dict[str, Any]]:
    # Through the reflected table, so that dates and booleans come back typed on SQLite.
    table = sa.Table(name, sa.MetaData(), autoload_with=op.get_bind())
    return [dict(row._mapping) for row in op.get_bind().execute(sa.select(table))]


def _streams(per_tenant: bool) -> None:
    key = ['tenant_id', 'id'] if per_tenant else ['id']
    op.create_table('streams',
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('public_key_pem', sa.Text(), nullable=False),
    sa.Column('key_fingerprint', _HASH, nullable=False),
    sa.Column('registered_at', _TS, nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_streams_tenant_id_tenants')),
    sa.PrimaryKeyConstraint(*key, name=op.f('pk_streams'))
    )
    if not per_tenant:
        with op.batch_alter_table('streams', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_streams_tenant_id'), ['tenant_id'], unique=False)


def _children(per_tenant: bool) -> None:
    def tenant() -> list[sa.Column[str]]:  # a fresh Column per table
        return [sa.Column('tenant_id', sa.String(length=63), nullable=False)] if per_tenant else []

    scope = ['tenant_id', 'stream_id'] if per_tenant else ['stream_id']
    ref = ['streams.tenant_id', 'streams.id'] if per_tenant else ['streams.id']
    fk = 'tenant_id' if per_tenant else 'stream_id'

    def fk_to_streams(table: str) -> sa.ForeignKeyConstraint:
        return sa.ForeignKeyConstraint(scope, ref, name=op.f(f'fk_{table}_{fk}_streams'))

    op.create_table('chain_heads',
    *tenant(),
    sa.Column('stream_id', sa.String(length=128), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('hash', _HASH, nullable=False),
    sa.Column('signed_through', sa.Integer(), nullable=False),
    sa.Column('signed_hash', _HASH, nullable=False, server_default='0' * 64),
    sa.Column('last_checkpoint', sa.Integer(), nullable=False),
    sa.Column('closed', sa.Boolean(), nullable=False),
    sa.Column('contested_from', sa.Integer(), nullable=True),
    sa.Column('updated_at', _TS, nullable=False),
    fk_to_streams('chain_heads'),
    sa.PrimaryKeyConstraint(*scope, name=op.f('pk_chain_heads'))
    )
    op.create_table('checkpoints',
    *tenant(),
    sa.Column('stream_id', sa.String(length=128), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('event_hash', _HASH, nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=True),
    sa.Column('signer', _HASH, nullable=True),
    sa.Column('closing', sa.Boolean(), nullable=False),
    sa.Column('verified', sa.Boolean(), nullable=False),
    sa.Column('received_at', _TS, nullable=False),
    fk_to_streams('checkpoints'),
    sa.PrimaryKeyConstraint(*scope, 'sequence', name=op.f('pk_checkpoints'))
    )
    op.create_table('pending_records',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    *tenant(),
    sa.Column('stream_id', sa.String(length=128), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('event_hash', _HASH, nullable=False),
    sa.Column('prev', _HASH, nullable=False),
    sa.Column('doc_id', sa.String(length=256), nullable=False),
    sa.Column('timestamp', _TS, nullable=False),
    sa.Column('received_at', _TS, nullable=False),
    fk_to_streams('pending_records'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pending_records')),
    sa.UniqueConstraint(
        *scope, 'sequence', 'event_hash', name=op.f(f'uq_pending_records_{scope[0]}')
    )
    )
    with op.batch_alter_table('pending_records', schema=None) as batch_op:
        if per_tenant:
            batch_op.create_index(
                'ix_pending_records_tenant_id_stream_id', ['tenant_id', 'stream_id'], unique=False
            )
        else:
            batch_op.create_index(
                batch_op.f('ix_pending_records_stream_id'), ['stream_id'], unique=False
            )


def _rebuild(per_tenant: bool) -> None:
    streams = _rows('streams')
    heads, checkpoints, pending = _rows('chain_heads'), _rows('checkpoints'), _rows('pending_records')
    tenant_of = {s['id']: s['tenant_id'] for s in streams}
    for table in ('pending_records', 'checkpoints', 'chain_heads', 'streams'):
        op.drop_table(table)
    _streams(per_tenant)
    _children(per_tenant)
    meta = sa.MetaData()
    for name, rows in (
        ('streams', streams),
        ('chain_heads', heads),
        ('checkpoints', checkpoints),
        ('pending_records', pending),
    ):
        if not rows:
            continue
        table = sa.Table(name, meta, autoload_with=op.get_bind())
        out = []
        for row in rows:
            row = dict(row)
            if name == 'pending_records':
                row.pop('id')
            if name != 'streams':
                if per_tenant:
                    row['tenant_id'] = tenant_of[row['stream_id']]
                else:
                    row.pop('tenant_id', None)
            out.append(row)
        op.bulk_insert(table, out)


def upgrade() -> None:
    _rebuild(per_tenant=True)
    with op.batch_alter_table('retention_checkpoints', schema=None) as batch_op:
        batch_op.drop_constraint('uq_retention_checkpoints_stream_id', type_='unique')
        batch_op.create_unique_constraint(
            batch_op.f('uq_retention_checkpoints_tenant_id'),
            ['tenant_id', 'stream_id', 'first_sequence', 'last_sequence'],
        )


def downgrade() -> None:
    # Only possible while no two tenants share a stream name.
    with op.batch_alter_table('retention_checkpoints', schema=None) as batch_op:
        batch_op.drop_constraint('uq_retention_checkpoints_tenant_id', type_='unique')
        batch_op.create_unique_constraint(
            batch_op.f('uq_retention_checkpoints_stream_id'),
            ['stream_id', 'first_sequence', 'last_sequence'],
        )
    _rebuild(per_tenant=False)
