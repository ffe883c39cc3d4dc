"""pii_at_rest: national IDs encrypted, a lookup hash and the masked form; retention (issue 15)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 16:45:00

``holders`` gains ``national_id_enc`` (AES-256-GCM, storage/pii.py), ``national_id_hmac`` (keyed
hash, indexed: lookups and duplicate checks) and ``national_id_masked``, and ``purged_at``
(retention cleared the person's fields; the ledger stays). ``pii_meta`` remembers the lookup key's
check value. This revision only adds the columns: the rows are converted after it, in batches that
each commit (storage/piidb.py, run by ``onecard db upgrade``): an interrupted one resumes, and
a registry with a clear number left is refused until it finishes.

``holder_archive`` stays append-only except for one change: retention may replace a snapshot by
the purge marker (``{"purged": true}``), nothing else.

The downgrade decrypts the numbers back into ``national_id`` with the registry's key (it refuses
without it) before it drops the columns.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.schema import UtcDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PURGED = '{"purged": true}'

_PG_ARCHIVE = f"""
CREATE FUNCTION onecard_archive_purge_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.snapshot = '{PURGED}' AND NEW.id = OLD.id AND NEW.holder_id = OLD.holder_id
       AND NEW.at = OLD.at AND NEW.actor = OLD.actor AND NEW.reason = OLD.reason THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'holder_archive is append-only';
END $$
"""


def upgrade() -> None:
    op.add_column("holders", sa.Column("national_id_enc", sa.Text(), nullable=True))
    op.add_column("holders", sa.Column("national_id_hmac", sa.String(length=64), nullable=True))
    op.add_column("holders", sa.Column("national_id_masked", sa.String(length=32), nullable=True))
    op.add_column("holders", sa.Column("purged_at", UtcDateTime(), nullable=True))
    op.create_index("ix_holders_national_id_hmac", "holders", ["national_id_hmac"], unique=False)
    op.create_table(
        "pii_meta",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_pii_meta")),
    )
    op.execute("DROP TRIGGER holder_archive_no_update" + _on_archive())
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_ARCHIVE)
        op.execute(
            "CREATE TRIGGER holder_archive_no_update BEFORE UPDATE ON holder_archive"
            " FOR EACH ROW EXECUTE FUNCTION onecard_archive_purge_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER holder_archive_no_update BEFORE UPDATE ON holder_archive"
            f" WHEN NEW.snapshot != '{PURGED}' OR NEW.id != OLD.id"
            " OR NEW.holder_id != OLD.holder_id OR NEW.at != OLD.at OR NEW.actor != OLD.actor"
            " OR NEW.reason != OLD.reason"
            " BEGIN SELECT RAISE(ABORT, 'holder_archive is append-only'); END"
        )


def _on_archive() -> str:
    return " ON holder_archive" if op.get_bind().dialect.name == "postgresql" else ""


def downgrade() -> None:
    from storage.piidb import decrypt_back

    bind = op.get_bind()
    decrypt_back(bind)
    op.execute("DROP TRIGGER holder_archive_no_update" + _on_archive())
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION onecard_archive_purge_only()")
        op.execute(
            "CREATE TRIGGER holder_archive_no_update BEFORE UPDATE ON holder_archive"
            " FOR EACH ROW EXECUTE FUNCTION onecard_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER holder_archive_no_update BEFORE UPDATE ON holder_archive"
            " BEGIN SELECT RAISE(ABORT, 'holder_archive is append-only'); END"
        )
    op.drop_table("pii_meta")
    op.drop_index("ix_holders_national_id_hmac", table_name="holders")
    for column in ("purged_at", "national_id_masked", "national_id_hmac", "national_id_enc"):
        op.drop_column("holders", column)
