"""subject vault: per-subject pseudonym keys (GDPR erasure)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 12:00:00.000000

`subject_keys` holds one random secret per data subject (tenant, kind, lookup); records
sealed with a vault carry pseudonyms under that secret, so deleting the row unlinks the
subject's raw id from them. `subject_erasures` keeps a tombstone per erasure (no raw id, no
pseudonym, no secret). See docs/record-spec.md §11.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('subject_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=63), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('lookup', sa.String(length=64), nullable=False),
    sa.Column('secret', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subject_keys')),
    sa.UniqueConstraint('tenant', 'kind', 'lookup', name=op.f('uq_subject_keys_tenant'))
    )
    op.create_table('subject_erasures',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=63), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('entries', sa.Integer(), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subject_erasures'))
    )
    with op.batch_alter_table('subject_erasures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subject_erasures_tenant'), ['tenant'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('subject_erasures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subject_erasures_tenant'))
    op.drop_table('subject_erasures')
    op.drop_table('subject_keys')
