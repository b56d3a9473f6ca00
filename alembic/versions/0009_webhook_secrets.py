"""webhook secrets are stored encrypted: the column holds a Fernet token (longer than 128)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 10:40:00.000000

Secrets written in clear before this revision are encrypted by the service at its next start
(WebhookService.seal_legacy_secrets): the key is the service's, not the migration's.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.alter_column(
            'secret', existing_type=sa.String(length=128), type_=sa.Text(), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.alter_column(
            'secret', existing_type=sa.Text(), type_=sa.String(length=128), existing_nullable=False
        )
