"""The one schema for SQLite and PostgreSQL (SQLAlchemy Core).

Append-only tables (``transfers``, ``card_events``, ``audit_log``, ``deny_changes``,
``holder_archive``, ``scrap_register``) are protected by triggers created in the migrations: an
UPDATE or DELETE on them aborts. Money columns are integer fen (BigInteger).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every dialect (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            msg = "naive datetime given to the registry"
            raise ValueError(msg)
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(name: str, *, nullable: bool = False) -> Column[datetime]:
    return Column(name, UtcDateTime(), nullable=nullable)


holders = Table(
    "holders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("category", String(32), nullable=False),
    Column("number", String(32), nullable=True),  # 学号 / 工号; temp: last 6 of the ID (ISS-11)
    Column("name", String(64), nullable=False),
    Column("national_id", String(18), nullable=True),  # the ID document's number (id_doc_type)
    Column("college", String(64), nullable=True),
    Column("class_name", String(64), nullable=True),
    Column("department", String(64), nullable=True),
    Column("photo_ref", String(128), nullable=True),
    _ts("valid_until", nullable=True),  # e-student-ID / temp-card validity end (ISS-1, ISS-11)
    Column("status", String(16), nullable=False, server_default="active"),
    Column("password_hash", String(256), nullable=True),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    _ts("locked_until", nullable=True),
    _ts("created_at"),
    _ts("deregistered_at", nullable=True),
    Column("application_ref", String(128), nullable=True),  # ISS-9 form / ISS-6 written proof
    # ISS-8/11: the identity document ``national_id`` holds the number of (resident ID, passport,
    # HK/Macau or Taiwan permit, permanent residence card: protocol.cards.identity.IdDocType)
    Column("id_doc_type", String(24), nullable=False, server_default="resident_id"),
    # issue 15 (storage/pii.py, migration 0010): the number encrypted (``national_id`` stays NULL),
    # its keyed hash for lookups and its masked form; ``purged_at``: retention cleared the person
    Column("national_id_enc", Text, nullable=True),
    Column("national_id_hmac", String(64), nullable=True),
    Column("national_id_masked", String(32), nullable=True),
    _ts("purged_at", nullable=True),
)
Index("ix_holders_number", holders.c.number)
Index("ix_holders_national_id", holders.c.national_id)
Index("ix_holders_national_id_hmac", holders.c.national_id_hmac)

#: issue 15: what the registry remembers of its personal-data keys (the lookup key's check value)
pii_meta = Table(
    "pii_meta",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", String(128), nullable=False),
)
Index(
    "uq_holders_number_kind",
    holders.c.kind,
    holders.c.number,
    unique=True,
    sqlite_where=text("kind != 'temporary' AND number IS NOT NULL"),
    postgresql_where=text("kind != 'temporary' AND number IS NOT NULL"),
)

cards = Table(
    "cards",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("serial", String(20), nullable=False, unique=True),
    Column("uid", String(32), nullable=True, unique=True),
    Column("kind", String(8), nullable=False),
    Column("holder_id", Integer, ForeignKey("holders.id"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("type_group", Integer, nullable=False, server_default="0"),  # MEAL-3
    Column("card_write_pending", Boolean, nullable=False, server_default=text("false")),
    _ts("valid_until", nullable=True),
    _ts("loss_reported_at", nullable=True),
    _ts("frozen_at", nullable=True),
    Column("exchange_reason", String(16), nullable=True),
    Column("ready_on", Date, nullable=True),  # REP-4 / EXC-5 two working days
    Column("replaces_card_id", Integer, ForeignKey("cards.id"), nullable=True),
    _ts("created_at"),
    _ts("handed_over_at", nullable=True),
    _ts("updated_at"),
    # SCR-1/2: the card is physically back in the center's hands (migration 0008)
    Column("in_custody", Boolean, nullable=False, server_default=text("false")),
)
Index("ix_cards_holder_id", cards.c.holder_id)
Index("ix_cards_state", cards.c.state)
Index("ix_cards_valid_until", cards.c.valid_until)

card_events = Table(
    "card_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("card_id", Integer, ForeignKey("cards.id"), nullable=False),
    Column("event", String(24), nullable=False),
    Column("from_state", String(16), nullable=True),
    Column("to_state", String(16), nullable=False),
    Column("rule", String(16), nullable=False),
    _ts("at"),
    Column("actor", String(64), nullable=False),
    Column("channel", String(16), nullable=False),  # counter, kiosk, web, scheduler, terminal
    Column("detail", Text, nullable=True),
)
Index("ix_card_events_card_id", card_events.c.card_id)

deny_changes = Table(
    "deny_changes",
    metadata,
    Column("version", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("card_id", Integer, ForeignKey("cards.id"), nullable=False),
    Column("serial", String(20), nullable=False),
    Column("uid", String(32), nullable=True),
    Column("change", String(16), nullable=False),  # lost, unlocked, frozen, expired, ...
    Column("denied", Boolean, nullable=False),  # whether the card is denied after this change
    _ts("at"),
)
Index("ix_deny_changes_card_id", deny_changes.c.card_id)  # offline settlement (migration 0004)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("holder_id", Integer, ForeignKey("holders.id"), nullable=True),
    Column("balance", BigInteger, nullable=False, server_default="0"),
    CheckConstraint(
        "kind NOT IN ('purse', 'hold', 'deposit') OR balance >= 0", name="non_negative"
    ),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("source", String(64), ForeignKey("accounts.id"), nullable=False),
    Column("dest", String(64), ForeignKey("accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("ref_id", BigInteger, ForeignKey("transfers.id"), nullable=True),
    _ts("at"),
    Column("actor", String(64), nullable=False),
    Column("card_id", Integer, ForeignKey("cards.id"), nullable=True),
    Column("terminal_id", String(64), nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("memo", String(256), nullable=False, server_default=""),
    CheckConstraint("amount > 0", name="positive_amount"),
    CheckConstraint("source <> dest", name="distinct_accounts"),
)
Index("ix_transfers_source", transfers.c.source)
Index("ix_transfers_dest", transfers.c.dest)
Index("ix_transfers_ref_id", transfers.c.ref_id)
Index("ix_transfers_at", transfers.c.at)

merchants = Table(
    "merchants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("operator_dept", String(64), nullable=False, server_default="后勤管理处"),
)

receipt_books = Table(
    "receipt_books",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("book_no", String(32), nullable=False, unique=True),
    Column("first_no", Integer, nullable=False),
    Column("last_no", Integer, nullable=False),
    _ts("received_at"),
    Column("received_by", String(64), nullable=False),
    _ts("used_up_at", nullable=True),
    Column("reconciliation_id", Integer, ForeignKey("reconciliations.id"), nullable=True),
    CheckConstraint("last_no >= first_no", name="range"),
)

reconciliations = Table(
    "reconciliations",
    metadata,
    Column("id", Integer, primary_key=True),
    _ts("at"),
    Column("actor", String(64), nullable=False),
    Column("books", Integer, nullable=False),
    Column("receipts", Integer, nullable=False),
    Column("total", BigInteger, nullable=False),
)

receipts = Table(
    "receipts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("receipt_no", Integer, nullable=False, unique=True),
    Column("book_id", Integer, ForeignKey("receipt_books.id"), nullable=False),
    Column("holder_id", Integer, ForeignKey("holders.id"), nullable=True),
    Column("payer", String(64), nullable=False),
    Column("item", String(32), nullable=False),
    Column("amount", BigInteger, nullable=False),
    _ts("at"),
    Column("cashier", String(64), nullable=False),
    Column("transfer_id", BigInteger, ForeignKey("transfers.id"), nullable=False),
    CheckConstraint("amount > 0", name="positive_amount"),
)

stock_purchases = Table(
    "stock_purchases",
    metadata,
    Column("id", Integer, primary_key=True),
    _ts("at"),
    Column("kind", String(8), nullable=False),
    Column("count", Integer, nullable=False),
    Column("academic_year", String(16), nullable=False),
    Column("received_by", String(64), nullable=False),
    CheckConstraint("count > 0", name="positive_count"),
)

requisitions = Table(
    "requisitions",
    metadata,
    Column("id", Integer, primary_key=True),
    _ts("at"),
    Column("kind", String(8), nullable=False),
    Column("count", Integer, nullable=False),
    Column("serial_from", String(20), nullable=False),
    Column("serial_to", String(20), nullable=False),
    Column("requested_by", String(64), nullable=False),
    Column("issued_by", String(64), nullable=False),
    Column("usage_note", String(256), nullable=False),
    CheckConstraint("count > 0", name="positive_count"),
)

scrap_register = Table(
    "scrap_register",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("card_id", Integer, ForeignKey("cards.id"), nullable=False, unique=True),
    Column("serial", String(20), nullable=False),
    Column("card_kind", String(8), nullable=False),
    Column("reason", String(16), nullable=False),
    _ts("at"),
    Column("actor", String(64), nullable=False),
)

#: REP-4 / EXC-5 / ISS-4 / ISS-7: who collected a card, "签字领取" (migration 0008)
hand_overs = Table(
    "hand_overs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("card_id", Integer, ForeignKey("cards.id"), nullable=False, unique=True),
    Column("rule", String(16), nullable=False),
    _ts("at"),
    Column("actor", String(64), nullable=False),  # the operator who handed it over
    Column("collector_name", String(64), nullable=False),
    Column("collector_doc", String(32), nullable=True),  # ID / student card number shown
    Column("collector_is_holder", Boolean, nullable=False),
    Column("signed", Boolean, nullable=False),  # the collector signed the collection register
    Column("receipt_no", Integer, nullable=True, unique=True),  # REP-4: the fee receipt shown
    Column("returned_card_id", Integer, ForeignKey("cards.id"), nullable=True),  # EXC-5, ISS-4
)

disposals = Table(
    "disposals",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("year", Integer, nullable=False, unique=True),  # SCR-2: once a year
    _ts("at"),
    Column("actor", String(64), nullable=False),
    Column("first_scrap_id", Integer, nullable=False),
    Column("last_scrap_id", Integer, nullable=False),
    Column("count", Integer, nullable=False),
)

meal_quotas = Table(
    "meal_quotas",
    metadata,
    Column("holder_id", Integer, ForeignKey("holders.id"), primary_key=True),
    Column("meals_per_month", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("source", String(128), nullable=False),
    _ts("updated_at"),
    CheckConstraint("meals_per_month >= 0", name="non_negative"),
)

operators = Table(
    "operators",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(32), nullable=False, unique=True),
    Column("real_name", String(64), nullable=False),
    Column("department", String(64), nullable=False),
    Column("permissions", Text, nullable=False),  # JSON list of Permission values
    Column("password_hash", String(256), nullable=False),
    Column("must_change_password", Boolean, nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=text("false")),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    _ts("locked_until", nullable=True),
    _ts("created_at"),
    Column("created_by", String(32), nullable=False),
    Column("approved_by", String(64), nullable=False),  # ACC-2: the center head
    Column("application_ref", String(128), nullable=False),  # ACC-2: the written application
)

operator_sessions = Table(
    "operator_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("operator_id", Integer, ForeignKey("operators.id"), nullable=False),
    _ts("created_at"),
    _ts("expires_at"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    _ts("at"),
    Column("actor", String(64), nullable=False),
    Column("action", String(48), nullable=False),
    Column("entity", String(32), nullable=False),
    Column("entity_id", String(64), nullable=False),
    Column("before", Text, nullable=True),
    Column("after", Text, nullable=True),
    # issue 15 (migration 0011): when retention pseudonymised before/after (once, never again)
    _ts("redacted_at", nullable=True),
)
Index("ix_audit_log_entity", audit_log.c.entity, audit_log.c.entity_id)

holder_archive = Table(
    "holder_archive",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("holder_id", Integer, ForeignKey("holders.id"), nullable=False),
    _ts("at"),
    Column("actor", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("snapshot", Text, nullable=False),
)

clearances = Table(
    "clearances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("holder_id", Integer, ForeignKey("holders.id"), nullable=False, unique=True),
    Column("college", String(64), nullable=False),
    Column("class_name", String(64), nullable=False),
    Column("certificate_no", String(32), nullable=False, unique=True),
    Column("card_returned", Boolean, nullable=False),
    Column("receipt_no", Integer, nullable=True),
    _ts("at"),
    Column("actor", String(64), nullable=False),
)

# --- the terminal gateway (migration 0002) -----------------------------------------------------

terminals = Table(
    "terminals",
    metadata,
    Column("id", String(63), primary_key=True),  # also the MQTT username and client id
    Column("kind", String(8), nullable=False),  # pos, kiosk, door, water
    Column("merchant_id", String(32), ForeignKey("merchants.id"), nullable=True),
    Column("location", String(128), nullable=False, server_default=""),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("mqtt_password_hash", String(256), nullable=False),  # mosquitto $7$ PBKDF2 hash
    Column("firmware", String(64), nullable=True),
    Column("denylist_version", BigInteger, nullable=False, server_default="0"),
    _ts("last_seen_at", nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("terminal_id", String(63), primary_key=True),
    Column("request_id", String(64), primary_key=True),
    Column("op", String(32), nullable=False),
    Column("fingerprint", String(64), nullable=False),  # sha256 of the canonical request
    Column("reply", Text, nullable=False),  # the first reply, replayed for retries
    _ts("at"),
)

offline_sales = Table(
    "offline_sales",
    metadata,
    Column("terminal_id", String(63), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("card_uid", String(32), nullable=False),
    Column("amount", BigInteger, nullable=False),
    _ts("sold_at", nullable=True),  # None when at_ms is no representable time (migration 0004)
    _ts("uploaded_at"),
    Column("result", String(32), nullable=False),  # accepted, or the error code
    Column("transfer_id", BigInteger, ForeignKey("transfers.id"), nullable=True),
    # settlement (terminal contract §8.3, gateway/services/offline.py; migration 0004)
    Column("at_ms", BigInteger, nullable=True),  # the sale time as the terminal sent it
    Column("merchant_id", String(32), nullable=True),  # as the sale named it (not a foreign key)
    Column("denylist_version", BigInteger, nullable=True),  # the list the terminal held
    Column("bearer", String(16), nullable=True),  # holder, merchant, card_center
    Column("detail", Text, nullable=True),  # why (bilingual); set for refused and disputed sales
)
Index("ix_offline_sales_card", offline_sales.c.terminal_id, offline_sales.c.card_uid)

water_holds = Table(
    "water_holds",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("terminal_id", String(63), nullable=False),
    Column("card_id", Integer, ForeignKey("cards.id"), nullable=False),
    Column("holder_id", Integer, ForeignKey("holders.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("state", String(10), nullable=False),  # held, settled, released
    Column("used", BigInteger, nullable=True),
    _ts("created_at"),
    _ts("closed_at", nullable=True),
)

meal_usage = Table(
    "meal_usage",
    metadata,
    Column("holder_id", Integer, ForeignKey("holders.id"), primary_key=True),
    Column("month", String(7), primary_key=True),  # campus-time YYYY-MM
    Column("used", Integer, nullable=False, server_default="0"),
)

holder_sessions = Table(
    "holder_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("holder_id", Integer, ForeignKey("holders.id"), nullable=False),
    Column("terminal_id", String(63), nullable=False),
    _ts("created_at"),
    _ts("expires_at"),
)

# --- online top-up and cardholder alerts (migration 0006) -------------------------------------

payment_orders = Table(
    "payment_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("out_trade_no", String(32), nullable=False, unique=True),  # ours, sent to the provider
    Column("provider", String(16), nullable=False),  # sandbox, wechat, alipay, ...
    Column("holder_id", Integer, ForeignKey("holders.id"), nullable=False),
    Column("card_id", Integer, ForeignKey("cards.id"), nullable=True),
    Column("amount", BigInteger, nullable=False),
    Column("state", String(12), nullable=False),  # pending, paid, expired
    Column("channel", String(16), nullable=False),  # web (the app channel of TOP-1)
    _ts("created_at"),
    _ts("expires_at"),
    # the provider's trade id: set once, when the order is credited; UNIQUE with the provider,
    # so one provider trade can never credit two orders (NULLs are distinct on both dialects)
    Column("provider_trade_no", String(64), nullable=True),
    _ts("paid_at", nullable=True),  # when the provider says the holder paid
    _ts("credited_at", nullable=True),  # set with transfer_id in the crediting transaction
    Column("transfer_id", BigInteger, ForeignKey("transfers.id"), nullable=True, unique=True),
    Column("late", Boolean, nullable=False, server_default=text("false")),  # paid after expiry
    _ts("updated_at"),
    CheckConstraint("amount > 0", name="positive_amount"),
    UniqueConstraint("provider", "provider_trade_no", name="uq_payment_orders_provider_trade"),
)
Index("ix_payment_orders_holder_id", payment_orders.c.holder_id, payment_orders.c.created_at)
Index("ix_payment_orders_state", payment_orders.c.state, payment_orders.c.expires_at)
Index("ix_payment_orders_credited_at", payment_orders.c.credited_at)

holder_alerts = Table(
    "holder_alerts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("holder_id", Integer, ForeignKey("holders.id"), nullable=False),
    Column("card_id", Integer, ForeignKey("cards.id"), nullable=True),
    Column("kind", String(16), nullable=False),  # card_presented, low_balance, topup
    _ts("at"),
    Column("terminal_id", String(63), nullable=True),  # where (the name is looked up to show)
    Column("channel", String(16), nullable=True),  # top-up: counter, kiosk, web
    Column("amount", BigInteger, nullable=True),  # top-up amount (fen)
    Column("balance", BigInteger, nullable=True),  # purse balance after (fen)
    Column("detail", String(32), nullable=True),  # card_presented: the card state (lost, frozen)
    _ts("read_at", nullable=True),
)
Index("ix_holder_alerts_holder_id", holder_alerts.c.holder_id, holder_alerts.c.id)
# the tap path's rate limit: one alert per card per terminal per window (storage/tapwriter.py)
Index(
    "ix_holder_alerts_card_terminal",
    holder_alerts.c.card_id,
    holder_alerts.c.terminal_id,
    holder_alerts.c.at,
)

#: One row: a counter that every committed change to what the tap path caches (a card's state,
#: validity, UID or holder; a holder's status; a terminal's kind, merchant or enabled flag) moves
#: forward. On PostgreSQL, triggers (migration 0009) bump it, and each gateway's tap executor
#: reads it once per batch and empties its caches when it moved: several gateways on one
#: registry see the counter's changes at the next batch (SQLite uses ``PRAGMA data_version``).
registry_epoch = Table(
    "registry_epoch",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("n", BigInteger, nullable=False, server_default="0"),
)

#: Tables that are append-only: UPDATE/DELETE is refused by triggers (see migrations).
APPEND_ONLY = (
    "transfers",
    "card_events",
    "audit_log",
    "deny_changes",
    "holder_archive",
    "scrap_register",
    "receipts",
    "hand_overs",
)

__all__ = [
    "APPEND_ONLY",
    "accounts",
    "audit_log",
    "card_events",
    "cards",
    "clearances",
    "deny_changes",
    "disposals",
    "hand_overs",
    "holder_alerts",
    "holder_archive",
    "holder_sessions",
    "holders",
    "idempotency",
    "meal_quotas",
    "meal_usage",
    "merchants",
    "metadata",
    "offline_sales",
    "operator_sessions",
    "operators",
    "payment_orders",
    "pii_meta",
    "receipt_books",
    "receipts",
    "reconciliations",
    "registry_epoch",
    "requisitions",
    "scrap_register",
    "stock_purchases",
    "terminals",
    "transfers",
    "water_holds",
]
