"""offline_settlement: why each offline sale settled as it did, and who bears it

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 12:40:00

Terminal contract §8.3 (gateway/services/offline.py): every uploaded offline sale keeps the
terminal's raw time, the merchant it named, the deny-list version the terminal held, who bears it
and why. ``sold_at`` becomes nullable (an ``at_ms`` after year 9999 is no time). Indexes serve the
per-card daily limit and the card's deny-list history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.schema import UtcDateTime

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('offline_sales', schema=None) as batch_op:
        batch_op.add_column(sa.Column('at_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('merchant_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('denylist_version', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('bearer', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('detail', sa.Text(), nullable=True))
        batch_op.alter_column('sold_at', existing_type=UtcDateTime(), nullable=True)
        batch_op.create_index('ix_offline_sales_card', ['terminal_id', 'card_uid'], unique=False)
    # deny_changes is append-only (triggers): a plain CREATE INDEX, never a batch table copy
    op.create_index('ix_deny_changes_card_id', 'deny_changes', ['card_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_deny_changes_card_id', table_name='deny_changes')
    with op.batch_alter_table('offline_sales', schema=None) as batch_op:
        batch_op.drop_index('ix_offline_sales_card')
        batch_op.alter_column('sold_at', existing_type=UtcDateTime(), nullable=False)
        batch_op.drop_column('detail')
        batch_op.drop_column('bearer')
        batch_op.drop_column('denylist_version')
        batch_op.drop_column('merchant_id')
        batch_op.drop_column('at_ms')
