"""card_uid_case: card UIDs in their one canonical form (upper-case hex, no separators)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 12:35:00

Before UIDs were validated at the counter, a clerk could register ``04a1b2c3`` or
``04:A1:B2:C3``; terminals send ``04A1B2C3``, and a lost card stored that way made the gateway's
deny-list snapshot invalid (issue 8, item 10). This rewrites such UIDs in ``cards`` and in the
deny-list log ``deny_changes`` to the canonical form, unless that would collide with another
card's UID (then the row is left as it is; the gateway skips or folds it, see
gateway/denylist.py). UIDs that cannot be made canonical (wrong length, not hex) are left for a
clerk to correct. ``deny_changes`` is append-only: its UPDATE trigger is dropped for these
statements and re-created. No schema change; the downgrade leaves the data as it is.
"""

from __future__ import annotations

import re
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# A frozen copy of protocol.carduid's normalisation: a migration must not change with the code.
_CANONICAL = re.compile(r"(?:[0-9A-F]{2}){4,16}")
_SEPARATORS = re.compile(r"[\s:.\-_]+")


def _canonical(value: str) -> str | None:
    text = unicodedata.normalize("NFKC", value).strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    text = _SEPARATORS.sub("", text).upper()
    return text if _CANONICAL.fullmatch(text) else None


def upgrade() -> None:
    bind = op.get_bind()
    cards = bind.execute(sa.text("SELECT id, uid FROM cards WHERE uid IS NOT NULL")).all()
    owner = {str(uid): int(card_id) for card_id, uid in cards}
    for card_id, uid in cards:
        canonical = _canonical(str(uid))
        if canonical is None or canonical == uid or canonical in owner:
            continue
        bind.execute(
            sa.text("UPDATE cards SET uid = :uid WHERE id = :id"), {"uid": canonical, "id": card_id}
        )
        del owner[str(uid)]
        owner[canonical] = int(card_id)

    changes = bind.execute(
        sa.text("SELECT version, card_id, uid FROM deny_changes WHERE uid IS NOT NULL")
    ).all()
    fixes = []
    for version, card_id, uid in changes:
        canonical = _canonical(str(uid))
        if canonical is None or canonical == uid or owner.get(canonical, card_id) != card_id:
            continue
        fixes.append({"uid": canonical, "version": version})
    if not fixes:
        return
    dialect = bind.dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER deny_changes_no_update")
    else:
        op.execute("DROP TRIGGER deny_changes_no_update ON deny_changes")
    bind.execute(sa.text("UPDATE deny_changes SET uid = :uid WHERE version = :version"), fixes)
    if dialect == "sqlite":
        op.execute(
            "CREATE TRIGGER deny_changes_no_update BEFORE UPDATE ON deny_changes "
            "BEGIN SELECT RAISE(ABORT, 'deny_changes is append-only'); END"
        )
    else:
        op.execute(
            "CREATE TRIGGER deny_changes_no_update BEFORE UPDATE ON deny_changes "
            "FOR EACH ROW EXECUTE FUNCTION onecard_append_only()"
        )


def downgrade() -> None:
    pass  # which UIDs were typed in lower case is not kept: the canonical form stays
