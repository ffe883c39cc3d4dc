"""registry_epoch: several gateways on one PostgreSQL registry see the counter's changes

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 16:10:00

Issue 12. Each gateway's tap executor caches terminal and card rows between batches. On SQLite
``PRAGMA data_version`` tells the one writer when another connection committed; PostgreSQL has
no such thing, so triggers bump a one-row counter in the same transaction as every change to a
cached column (cards: state, validity, UID, holder, type group; holders: status; terminals:
kind, merchant, enabled) and notify ``onecard_registry``. Heartbeats (terminals.last_seen_at,
denylist_version) and money (accounts) do not touch it. Statement-level triggers: a roster
import of 20,000 rows bumps it once per statement. On SQLite the table exists and stays unused.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

#: table -> the columns whose change must empty the gateways' caches
WATCHED = {
    "cards": "uid, state, valid_until, type_group, holder_id",
    "holders": "status",
    "terminals": "kind, merchant_id, enabled",
}

_FUNCTION = """
CREATE FUNCTION onecard_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_epoch SET n = n + 1 WHERE id = 1;
    PERFORM pg_notify('onecard_registry', TG_TABLE_NAME);
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.create_table('registry_epoch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('n', sa.BigInteger(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registry_epoch'))
    )
    op.execute("INSERT INTO registry_epoch (id, n) VALUES (1, 0)")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    for table, columns in WATCHED.items():
        op.execute(
            f"CREATE TRIGGER {table}_registry_changed"
            f" AFTER INSERT OR DELETE OR UPDATE OF {columns} ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION onecard_registry_changed()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in WATCHED:
            op.execute(f"DROP TRIGGER {table}_registry_changed ON {table}")
        op.execute("DROP FUNCTION onecard_registry_changed()")
    op.drop_table('registry_epoch')
