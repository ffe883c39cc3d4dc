"""pseudonymise_registers: the retention purge reaches the collection register and the audit log

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 17:00:00

Issue 15 (docs/privacy.md §7): after a holder's retention period the purge also pseudonymises
what the append-only registers kept of them, each through one narrow exception to its trigger:

- ``hand_overs`` (REP-4/EXC-5 collection register): ``collector_name`` may become the purge
  marker and ``collector_doc`` NULL; every other column stays as it was.
- ``audit_log``: ``before``/``after`` may be rewritten once, recorded in the new column
  ``redacted_at`` (set from NULL, never again); who, what, when and which record stay.

``receipts`` stay append-only: they are accounting records (FEE-2/3) finance keeps by law.
The downgrade restores the plain append-only triggers (rows already pseudonymised stay so).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.schema import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PURGED_NAME = "（已清除 purged）"
#: columns a pseudonymisation never changes, per table
_KEPT = {
    "hand_overs": (
        "id",
        "card_id",
        "rule",
        "at",
        "actor",
        "collector_is_holder",
        "signed",
        "receipt_no",
        "returned_card_id",
    ),
    "audit_log": ("id", "at", "actor", "action", "entity", "entity_id"),
}
#: what the one allowed change must look like (NEW.*), per table
_ALLOWED = {
    "hand_overs": f"NEW.collector_name = '{PURGED_NAME}' AND NEW.collector_doc IS NULL",
    "audit_log": "OLD.redacted_at IS NULL AND NEW.redacted_at IS NOT NULL",
}


def _pg_function(table: str) -> str:
    same = " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in _KEPT[table])
    return (
        f"CREATE FUNCTION onecard_{table}_pseudonymise_only() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN"
        f" IF {_ALLOWED[table]} AND {same} THEN RETURN NEW; END IF;"
        f" RAISE EXCEPTION '{table} is append-only'; END $$"
    )


def _sqlite_refusal(table: str) -> str:
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _KEPT[table])
    return (
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}"
        f" WHEN NOT ({_ALLOWED[table]}) OR {changed}"
        f" BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
    )


def _drop_update_trigger(table: str) -> None:
    on = f" ON {table}" if op.get_bind().dialect.name == "postgresql" else ""
    op.execute(f"DROP TRIGGER {table}_no_update{on}")


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("redacted_at", UtcDateTime(), nullable=True))
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in _KEPT:
        _drop_update_trigger(table)
        if postgres:
            op.execute(_pg_function(table))
            op.execute(
                f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}"
                f" FOR EACH ROW EXECUTE FUNCTION onecard_{table}_pseudonymise_only()"
            )
        else:
            op.execute(_sqlite_refusal(table))


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in _KEPT:
        _drop_update_trigger(table)
        if postgres:
            op.execute(f"DROP FUNCTION onecard_{table}_pseudonymise_only()")
            op.execute(
                f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION onecard_append_only()"
            )
        else:
            op.execute(
                f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}"
                f" BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
    op.drop_column("audit_log", "redacted_at")
