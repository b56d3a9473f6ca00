"""re-verification marks: how far each stored chain was last found intact

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 13:35:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('reverify_marks',
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('stream_id', sa.String(length=128), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('full_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('known', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'stream_id', name=op.f('pk_reverify_marks'))
    )


def downgrade() -> None:
    op.drop_table('reverify_marks')
