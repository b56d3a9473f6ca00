"""chain heads remember the hash they are signed through and where histories compete

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 13:00:00.000000

A record after the last verified checkpoint is provisional: when a signed checkpoint proves
one of two competing branches, ingest walks back from it to `signed_hash`. Existing heads
take `signed_hash` from their verified checkpoint row.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('chain_heads', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('signed_hash', sa.String(length=64), nullable=False, server_default='0' * 64)
        )
        batch_op.add_column(sa.Column('contested_from', sa.Integer(), nullable=True))
    op.execute(
        "UPDATE chain_heads SET signed_hash = ("
        " SELECT c.event_hash FROM checkpoints c"
        " WHERE c.stream_id = chain_heads.stream_id AND c.sequence = chain_heads.signed_through"
        ") WHERE signed_through > 0 AND EXISTS ("
        " SELECT 1 FROM checkpoints c"
        " WHERE c.stream_id = chain_heads.stream_id AND c.sequence = chain_heads.signed_through)"
    )


def downgrade() -> None:
    with op.batch_alter_table('chain_heads', schema=None) as batch_op:
        batch_op.drop_column('contested_from')
        batch_op.drop_column('signed_hash')
