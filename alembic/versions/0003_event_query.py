"""event query: events.search_text, backfilled

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:00:00.000000

`search_text` holds a record's non-PII words for free-text search (audit.store.query). Rows
stored before this revision get it here, computed from their stored record text by the same
function the store uses at write time, in batches keyed on the primary key so memory stays
flat however large the table. The backfill runs inside the migration's transaction, so an
interrupted upgrade leaves no half-filled column. Offline (`--sql`) mode cannot read rows: it
emits the column only and warns; run the upgrade online to fill it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from alembic import context, op

from audit.store.query import search_text

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
# A frozen view of the table: the migration must not follow later changes to the model.
_EVENTS = sa.table(
    'events',
    sa.column('tenant', sa.String()),
    sa.column('doc_id', sa.String()),
    sa.column('record', sa.Text()),
    sa.column('search_text', sa.Text()),
)


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('search_text', sa.Text(), nullable=True))
    if context.is_offline_mode():
        logging.getLogger('alembic.runtime.migration').warning(
            '0003: offline mode cannot backfill events.search_text; run the upgrade online'
        )
        return
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    key = sa.tuple_(_EVENTS.c.tenant, _EVENTS.c.doc_id)
    fill = (
        sa.update(_EVENTS)
        .where(_EVENTS.c.tenant == sa.bindparam('b_tenant'))
        .where(_EVENTS.c.doc_id == sa.bindparam('b_doc_id'))
        .values(search_text=sa.bindparam('b_text'))
    )
    after: tuple[str, str] | None = None
    while True:
        page = (
            sa.select(_EVENTS.c.tenant, _EVENTS.c.doc_id, _EVENTS.c.record)
            .order_by(_EVENTS.c.tenant, _EVENTS.c.doc_id)
            .limit(_BATCH)
        )
        if after is not None:
            page = page.where(key > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
        rows = conn.execute(page).all()
        if not rows:
            return
        conn.execute(
            fill,
            [
                {
                    'b_tenant': tenant,
                    'b_doc_id': doc_id,
                    'b_text': search_text(orjson.loads(record)),
                }
                for tenant, doc_id, record in rows
            ],
        )
        after = (rows[-1][0], rows[-1][1])


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_column('search_text')
