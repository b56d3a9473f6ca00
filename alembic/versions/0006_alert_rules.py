"""alerts: rules, states, scheduler state

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 12:00:00.000000

Custom threshold rules (`alert_rules`), the scheduler's per rule and tenant watermark
(`alert_watermarks`) and lease (`alert_leases`), and when an alert was acknowledged or
resolved. At most one unresolved alert per dedup_key (`uq_alerts_open_dedup_key`, partial
unique index): two replicas raising one incident at once no longer open two alerts.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True))

    # Before the index could exist, two replicas could each open an alert for one incident.
    # Keep the newest unresolved alert of each dedup_key open (the one raise_alert counted
    # sightings on) and resolve the older duplicates, or the unique index cannot be built.
    op.execute(
        sa.text(
            "UPDATE alerts SET state = 'resolved', resolved_at = :now"
            " WHERE state != 'resolved' AND EXISTS ("
            "SELECT 1 FROM alerts AS newer WHERE newer.dedup_key = alerts.dedup_key"
            " AND newer.state != 'resolved' AND newer.id > alerts.id)"
        ).bindparams(sa.bindparam('now', datetime.now(UTC), type_=sa.DateTime(timezone=True)))
    )
    op.create_index(
        'uq_alerts_open_dedup_key',
        'alerts',
        ['dedup_key'],
        unique=True,
        postgresql_where=sa.text("state != 'resolved'"),
        sqlite_where=sa.text("state != 'resolved'"),
    )

    op.create_table('alert_rules',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('filters', sa.JSON(), nullable=False),
    sa.Column('group_by', sa.String(length=64), nullable=False),
    sa.Column('window_s', sa.Integer(), nullable=False),
    sa.Column('step_s', sa.Integer(), nullable=False),
    sa.Column('threshold', sa.Integer(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_rules'))
    )
    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_rules_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('alert_watermarks',
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.String(length=63), nullable=False),
    sa.Column('evaluated_through', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('rule', 'tenant_id', name=op.f('pk_alert_watermarks'))
    )
    op.create_table('alert_leases',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_alert_leases'))
    )


def downgrade() -> None:
    op.drop_table('alert_leases')
    op.drop_table('alert_watermarks')
    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alert_rules_tenant_id'))
    op.drop_table('alert_rules')
    op.drop_index('uq_alerts_open_dedup_key', table_name='alerts')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_column('resolved_at')
        batch_op.drop_column('acknowledged_at')
