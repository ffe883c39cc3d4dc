"""holder_id_doc_type: the identity document a holder registered with (ISS-8, ISS-11)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 13:20:00

Foreign teachers and exchange students hold passports, not GB 11643 IDs (issue 10). ``holders``
gains ``id_doc_type`` (resident_id, passport, hk_macau_permit, taiwan_permit,
permanent_residence; protocol.cards.identity.IdDocType); ``national_id`` keeps the document's
number. Every existing holder registered with a resident ID: the server default says so. An
added column with a default needs no table copy, on SQLite either (batch mode adds it in place).
The downgrade drops the column in place too (SQLite >= 3.35 ``ALTER TABLE ... DROP COLUMN``): a
batch copy of ``holders`` would have to drop a table every card and account references.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('holders', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                'id_doc_type', sa.String(length=24), nullable=False, server_default='resident_id'
            )
        )


def downgrade() -> None:
    op.drop_column('holders', 'id_doc_type')
