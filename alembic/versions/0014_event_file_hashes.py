"""event file hashes: events.file_hashes, backfilled

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 10:00:00.000000

`file_hashes` holds the SHA-256 digests of the files a record names, for the file-hash
filter (audit.store.query.file_hashes_of). Rows stored before this revision get it here,
computed from their stored record text by the function the store uses at write time, in
batches keyed on the primary key as in 0003. Only rows whose text mentions `sha256` are
read: every place a digest can be named has that in its key, so no other row has one. The
backfill runs inside the migration's transaction, so an interrupted upgrade leaves no
half-filled column. Offline (`--sql`) mode cannot read rows: it emits the column only and
warns; run the upgrade online to fill it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from alembic import context, op

from audit.store.query import file_hashes_text

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
# A frozen view of the table: the migration must not follow later changes to the model.
_EVENTS = sa.table(
    'events',
    sa.column('tenant', sa.String()),
    sa.column('doc_id', sa.String()),
    sa.column('record', sa.Text()),
    sa.column('file_hashes', sa.Text()),
)


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('file_hashes', sa.Text(), nullable=True))
    if context.is_offline_mode():
        logging.getLogger('alembic.runtime.migration').warning(
            '0014: offline mode cannot backfill events.file_hashes; run the upgrade online'
        )
        return
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    key = sa.tuple_(_EVENTS.c.tenant, _EVENTS.c.doc_id)
    fill = (
        sa.update(_EVENTS)
        .where(_EVENTS.c.tenant == sa.bindparam('b_tenant'))
        .where(_EVENTS.c.doc_id == sa.bindparam('b_doc_id'))
        .values(file_hashes=sa.bindparam('b_hashes'))
    )
    after: tuple[str, str] | None = None
    while True:
        page = (
            sa.select(_EVENTS.c.tenant, _EVENTS.c.doc_id, _EVENTS.c.record)
            .where(_EVENTS.c.record.contains('sha256', autoescape=True))
            .order_by(_EVENTS.c.tenant, _EVENTS.c.doc_id)
            .limit(_BATCH)
        )
        if after is not None:
            page = page.where(key > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
        rows = conn.execute(page).all()
        if not rows:
            return
        found = [
            {'b_tenant': tenant, 'b_doc_id': doc_id, 'b_hashes': hashes}
            for tenant, doc_id, record in rows
            if (hashes := file_hashes_text(orjson.loads(record))) is not None
        ]
        if found:
            conn.execute(fill, found)
        after = (rows[-1][0], rows[-1][1])


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_column('file_hashes')
