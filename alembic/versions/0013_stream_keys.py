"""stream keys: which pseudonym keys each stream's records were sealed under

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 13:55:00.000000

Filled at ingest from now on; streams ingested before are learnt as their records arrive
(a query by raw id names a stream with no known key as not covered).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('stream_keys',
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('stream_id', sa.String(length=128), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id', 'stream_id'], ['streams.tenant_id', 'streams.id'], name=op.f('fk_stream_keys_tenant_id_streams')),
    sa.PrimaryKeyConstraint('tenant_id', 'stream_id', 'key_id', name=op.f('pk_stream_keys'))
    )


def downgrade() -> None:
    op.drop_table('stream_keys')
