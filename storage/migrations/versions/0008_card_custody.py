"""card_custody: which cards the center physically has back, and who collected each card

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 13:30:00

SCR-1/2 (issue 10): the scrap register lists only the cards the center has recovered ("回收的校园
卡", "与报废卡片一一对应"). ``cards`` gains ``in_custody``: a card handed in for the smart card
(ISS-4), refunded (REF-3), returned at termination or exchange, or handed in after its procedure.
REP-4 / EXC-5 (issue 10): a replacement or exchanged smart card is collected against the fee
receipt or the original card, signed for ("签字领取"): ``hand_overs`` is that register, one line
per card handed over, append-only like the other registers.

Existing cards: recovered, refunded, exchanged, scrapped and ready cards are at the center; a
terminated card is taken as returned unless it was lost, ended automatically (TERM-3), paid for
as a lost temp card (ISS-4), or its holder's graduation clearance says it was not returned
(TERM-5). A clerk records a card brought in later with ``onecard card hand-in``. An added column
with a default needs no table copy, on SQLite either (ADD COLUMN in place).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.schema import UtcDateTime

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_BACKFILL = """
UPDATE cards SET in_custody = :yes
WHERE state IN ('ready', 'recovered', 'refunded', 'exchanged', 'scrapped')
   OR (state = 'terminated'
       AND loss_reported_at IS NULL
       AND NOT EXISTS (
           SELECT 1 FROM card_events e
           WHERE e.card_id = cards.id
             AND (e.event = 'auto_terminate' OR e.detail = 'temp card lost, fee paid'))
       AND NOT EXISTS (
           SELECT 1 FROM clearances c
           WHERE c.holder_id = cards.holder_id AND c.card_returned = :no))
"""


def upgrade() -> None:
    # recreate='never': a plain ADD COLUMN (a Boolean would make batch mode copy the table, and
    # the copy's DROP TABLE cards breaks the foreign keys that point at it)
    with op.batch_alter_table('cards', schema=None, recreate='never') as batch_op:
        batch_op.add_column(
            sa.Column('in_custody', sa.Boolean(), server_default=sa.text('false'), nullable=False)
        )
    op.get_bind().execute(sa.text(_BACKFILL), {"yes": True, "no": False})

    op.create_table('hand_overs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('card_id', sa.Integer(), nullable=False),
    sa.Column('rule', sa.String(length=16), nullable=False),
    sa.Column('at', UtcDateTime(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('collector_name', sa.String(length=64), nullable=False),
    sa.Column('collector_doc', sa.String(length=32), nullable=True),
    sa.Column('collector_is_holder', sa.Boolean(), nullable=False),
    sa.Column('signed', sa.Boolean(), nullable=False),
    sa.Column('receipt_no', sa.Integer(), nullable=True),
    sa.Column('returned_card_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['card_id'], ['cards.id'], name=op.f('fk_hand_overs_card_id_cards')),
    sa.ForeignKeyConstraint(['returned_card_id'], ['cards.id'], name=op.f('fk_hand_overs_returned_card_id_cards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hand_overs')),
    sa.UniqueConstraint('card_id', name=op.f('uq_hand_overs_card_id')),
    sa.UniqueConstraint('receipt_no', name=op.f('uq_hand_overs_receipt_no'))
    )
    _append_only('hand_overs')


def _append_only(table: str) -> None:
    """Like the other registers: UPDATE and DELETE abort (the function is migration 0001's)."""
    dialect = op.get_bind().dialect.name
    for verb in ("UPDATE", "DELETE"):
        name = f"{table}_no_{verb.lower()}"
        if dialect == "sqlite":
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
        else:
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {verb} ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION onecard_append_only()"
            )


def downgrade() -> None:
    op.drop_table('hand_overs')
    with op.batch_alter_table('cards', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('in_custody')  # SQLite 3.35+
