"""Personal data a regulator can audit (issue 15; PIPL arts. 5–6, 19, 28, 45; docs/privacy.md).

- Operator reads of a full ID number, a photo or a holder's transaction history go through
  :class:`PrivacyService` and are audit-logged with the purpose the clerk gives (``pii.read_id``,
  ``pii.read_photo``, ``pii.read_history``); :meth:`PrivacyService.reads_report` counts them per
  operator.
- :meth:`PrivacyService.export` is everything the registry holds about one holder (PIPL art. 45),
  audited (``pii.export``), for the counter (with a purpose) or the holder themself (portal).
- Retention: :meth:`PrivacyService.retention_plan` lists deregistered holders whose period after
  graduation / termination has passed (the dry run); :meth:`PrivacyService.purge` clears their
  personal fields (the caller archives the export first). Transfers, accounts and cards stay:
  the holder becomes ``#id``, the ledger still balances.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from gateway.services.base import Actor, Context
from protocol.cards.identity import mask_id_doc, mask_name
from protocol.errors import InvalidInput
from protocol.types import HolderStatus, Permission
from storage.ports import Tx
from storage.records import Holder

PURGED_SNAPSHOT = '{"purged": true}'
PURGED_NAME = "（已清除 purged）"
READ_ACTIONS = ("pii.read_id", "pii.read_photo", "pii.read_history", "pii.export")
#: columns never exported or shown: secrets and the stored forms of the number
SECRET_COLUMNS = frozenset({"password_hash", "national_id_enc", "national_id_hmac", "token_hash"})
#: tables that name the holder (``holder_id``) or one of their cards (``card_id``)
BY_HOLDER = (
    "accounts",
    "cards",
    "receipts",
    "clearances",
    "holder_archive",
    "holder_alerts",
    "holder_sessions",  # kiosk sessions: when and where (the token hash is left out)
    "meal_quotas",
    "meal_usage",
    "payment_orders",
    "water_holds",
)
BY_CARD = ("card_events", "deny_changes", "hand_overs", "scrap_register")
#: holder fields retention clears (name becomes a placeholder: the column is NOT NULL)
PURGED_FIELDS = (
    "number",
    "national_id",
    "college",
    "class_name",
    "department",
    "photo_ref",
    "application_ref",
    "password_hash",
)
_LONG_DIGITS = re.compile(r"[0-9A-Za-z]{8,}")
PURPOSE_MIN, PURPOSE_MAX = 4, 200


def clean_purpose(purpose: str | None) -> str:
    """The purpose a clerk gives for a read: required, one line, no ID numbers in it."""
    text = " ".join((purpose or "").split())
    if not PURPOSE_MIN <= len(text) <= PURPOSE_MAX:
        raise InvalidInput(
            f"请说明查阅目的（{PURPOSE_MIN}–{PURPOSE_MAX} 字）",
            f"give the purpose of this read ({PURPOSE_MIN}-{PURPOSE_MAX} characters)",
        )
    return _LONG_DIGITS.sub(_mask_number, text)


def _mask_number(found: re.Match[str]) -> str:
    """A run shaped like a document number (six digits or more) masked; a word kept."""
    token = found.group(0)
    return mask_id_doc(token) if sum(c.isdigit() for c in token) >= 6 else token


@dataclass(frozen=True, slots=True)
class ReadCount:
    operator: str
    action: str
    reads: int
    holders: int
    last_at: datetime | None


@dataclass(frozen=True, slots=True)
class RetentionDue:
    holder_id: int
    name_masked: str
    reason: str  # the deregistration reason (graduation, refund, termination reasons)
    deregistered_at: datetime
    due_at: datetime
    blocked: str | None = None  # why it cannot be purged yet (a balance left)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days after deregistration; graduation has its own period, every other reason the other."""

    after_graduation_days: int = 3 * 365
    after_termination_days: int = 3 * 365

    def period(self, reason: str) -> timedelta:
        days = self.after_graduation_days if reason == "graduation" else self.after_termination_days
        return timedelta(days=days)


@dataclass(slots=True)
class Export:
    holder_id: int
    generated_at: datetime
    holder: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "说明 about": "一卡通中心持有的本人全部数据 / everything we hold about you",
            "holder_id": self.holder_id,
            "generated_at": self.generated_at,
            "holder": self.holder,
            **self.tables,
        }

    def count(self) -> int:
        return sum(len(rows) for rows in self.tables.values())

    def to_json(self) -> str:
        """The readable file: indented UTF-8 JSON, times in ISO 8601."""
        return json.dumps(self.as_dict(), ensure_ascii=False, indent=2, default=_plain)


def _plain(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


class PrivacyService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- audited operator reads -------------------------------------------------------------
    async def _read(self, actor: Actor, holder_id: int, action: str, purpose: str) -> Holder:
        actor.require(Permission.CARD_HANDLING)
        why = clean_purpose(purpose)
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(holder_id)
            await _audit_read(tx, self.ctx.clock.now(), actor, action, holder_id, why)
        return holder

    async def read_id(self, actor: Actor, holder_id: int, purpose: str) -> str | None:
        """The full ID number (audited ``pii.read_id`` with the purpose)."""
        return (await self._read(actor, holder_id, "pii.read_id", purpose)).national_id

    async def read_photo(self, actor: Actor, holder_id: int, purpose: str) -> str | None:
        """The photo reference (audited ``pii.read_photo``)."""
        return (await self._read(actor, holder_id, "pii.read_photo", purpose)).photo_ref

    async def history(
        self, actor: Actor, holder_id: int, purpose: str, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """The holder's transfers, newest first (audited ``pii.read_history``)."""
        actor.require(Permission.REPORTS)
        await self._read(actor, holder_id, "pii.read_history", purpose)
        async with self.ctx.registry.read() as tx:
            rows = await _transfers(tx, await _accounts(tx, holder_id))
        return sorted(rows, key=lambda r: r["id"], reverse=True)[:limit]

    async def reads_report(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[ReadCount]:
        """Reads of personal data per operator and kind (and exports), oldest filter inclusive."""
        groups: dict[tuple[str, str], list[tuple[str, datetime]]] = defaultdict(list)
        async with self.ctx.registry.read() as tx:
            found = await tx.find_in("audit_log", "action", list(READ_ACTIONS))
        for row in found:
            at = row["at"]
            if (since is None or at >= since) and (until is None or at < until):
                groups[(row["actor"], row["action"])].append((row["entity_id"], at))
        return [
            ReadCount(
                operator=op,
                action=action,
                reads=len(hits),
                holders=len({h for h, _ in hits}),
                last_at=max(at for _, at in hits),
            )
            for (op, action), hits in sorted(groups.items())
        ]

    # --- export (PIPL art. 45) ----------------------------------------------------------------
    async def export(self, actor: Actor, holder_id: int, purpose: str | None = None) -> Export:
        """Everything held about the holder. The holder themself (portal, ``actor.holder_id``)
        needs no purpose; an operator does. Audited either way (``pii.export``)."""
        if actor.holder_id != holder_id:
            actor.require(Permission.CARD_HANDLING)
            why = clean_purpose(purpose)
        else:
            why = "本人申请 holder's own request"
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            out = await collect(tx, holder_id, now)
            await _audit_read(tx, now, actor, "pii.export", holder_id, why)
        return out

    # --- retention -----------------------------------------------------------------------------
    async def retention_plan(self, policy: RetentionPolicy) -> list[RetentionDue]:
        """The dry run: deregistered holders not yet purged whose period has passed."""
        now = self.ctx.clock.now()
        due: list[RetentionDue] = []
        async with self.ctx.registry.read() as tx:
            for row in await tx.find(
                "holders", status=HolderStatus.DEREGISTERED.value, purged_at=None
            ):
                left = row["deregistered_at"]
                if left is None:
                    continue
                reason = await _left_because(tx, row["id"])
                due_at = left + policy.period(reason)
                if due_at > now:
                    continue
                owed = sum([await tx.balance(a) for a in await _accounts(tx, row["id"])])
                due.append(
                    RetentionDue(
                        holder_id=row["id"],
                        name_masked=mask_name(row["name"]),
                        reason=reason,
                        deregistered_at=left,
                        due_at=due_at,
                        blocked=None if owed == 0 else f"余额未结清 balance {owed} fen",
                    )
                )
        return due

    async def purge(self, actor: Actor, due: RetentionDue, policy: RetentionPolicy) -> None:
        """Clear one holder's personal fields (audited ``pii.purge``); rechecked under the write
        transaction, so a plan gone stale (an extension, a balance) is refused, not applied."""
        actor.require(Permission.ACCOUNTS_ADMIN)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(due.holder_id)
            left = holder.deregistered_at
            reason = await _left_because(tx, holder.id)  # not the caller's word for it
            if (
                holder.status is not HolderStatus.DEREGISTERED
                or left is None
                or left + policy.period(reason) > now
                or any([await tx.balance(a) for a in await _accounts(tx, holder.id)])
            ):
                raise InvalidInput(
                    f"持卡人 #{holder.id} 未到保存期限或不可清除",
                    f"holder #{holder.id} is not due for purging",
                )
            row = await tx.get("holders", holder.id)
            if row is not None and row.get("purged_at") is not None:
                return
            await tx.update(
                "holders",
                holder.id,
                {**dict.fromkeys(PURGED_FIELDS), "name": PURGED_NAME, "purged_at": now},
            )
            for snap in await tx.find("holder_archive", holder_id=holder.id):
                if snap["snapshot"] != PURGED_SNAPSHOT:
                    await tx.update("holder_archive", snap["id"], {"snapshot": PURGED_SNAPSHOT})
            redacted = await _pseudonymise_registers(tx, holder, now)
            await tx.audit(
                now,
                actor.name,
                "pii.purge",
                "holder",
                holder.id,
                {"fields": list(PURGED_FIELDS), "reason": reason},
                {"purged": True, "policy_days": policy.period(reason).days, **redacted},
            )


async def _pseudonymise_registers(tx: Tx, holder: Holder, now: datetime) -> dict[str, int]:
    """What the append-only registers kept of the holder (migration 0011, docs/privacy.md §7):
    the collection register's collector of their cards becomes the marker (the hand-over itself
    stays: card, time, operator, receipt, signature); the audit entries about them and their
    cards keep who, what, when, and lose the personal values. Receipts are not touched."""
    card_ids = [c.id for c in await tx.cards_of_holder(holder.id)]
    hand_overs = 0
    for row in await tx.find_in("hand_overs", "card_id", card_ids):
        if row["collector_name"] != PURGED_NAME or row["collector_doc"] is not None:
            await tx.update(
                "hand_overs", row["id"], {"collector_name": PURGED_NAME, "collector_doc": None}
            )
            hand_overs += 1
    entries = await tx.find("audit_log", entity="holder", entity_id=str(holder.id))
    for card_id in card_ids:
        entries += await tx.find("audit_log", entity="card", entity_id=str(card_id))
    words = {holder.name, holder.number or "", holder.application_ref or ""}
    for row in entries:  # every value the entries name under a personal key (old names too)
        for text in (row["before"], row["after"]):
            _personal_values(_json(text), words)
    audit = 0
    for row in entries:
        if row.get("redacted_at") is not None:
            continue
        before, after = _redact(row["before"], words), _redact(row["after"], words)
        if (before, after) != (row["before"], row["after"]):
            await tx.update(
                "audit_log", row["id"], {"before": before, "after": after, "redacted_at": now}
            )
            audit += 1
    return {"hand_overs_pseudonymised": hand_overs, "audit_entries_pseudonymised": audit}


#: keys of audit before/after values that name or identify a person
PERSONAL_KEYS = frozenset(
    {*PURGED_FIELDS, "name", "collector_name", "collector_doc", "presented_id", "payer"}
)


def _json(text: str | None) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _personal_values(value: object, out: set[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in PERSONAL_KEYS and isinstance(item, str):
                out.add(item)
            _personal_values(item, out)
    elif isinstance(value, list):
        for item in value:
            _personal_values(item, out)


def _scrub(value: object, words: list[str]) -> object:
    if isinstance(value, dict):
        return {
            k: PURGED_NAME if k in PERSONAL_KEYS and isinstance(v, str) else _scrub(v, words)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub(v, words) for v in value]
    if isinstance(value, str):
        for word in words:
            value = value.replace(word, PURGED_NAME)
        return value
    return value


def _redact(text: str | None, words: set[str]) -> str | None:
    """``text`` (an audit entry's before/after JSON) with personal values replaced by the
    marker: under a personal key, and wherever a known value (a name, a number) appears in
    free text (a purpose, a finding)."""
    if text is None:
        return None
    longest_first = sorted((w for w in words if len(w) >= 2), key=len, reverse=True)
    parsed = _json(text)
    scrubbed = _scrub(parsed, longest_first)
    if scrubbed == parsed:
        return text
    return json.dumps(scrubbed, ensure_ascii=False, default=str, sort_keys=True)


async def _audit_read(
    tx: Tx, now: datetime, actor: Actor, action: str, holder_id: int, purpose: str
) -> None:
    await tx.audit(
        now,
        actor.name,
        action,
        "holder",
        holder_id,
        None,
        {"purpose": purpose, "channel": actor.channel},
    )


async def _left_because(tx: Tx, holder_id: int) -> str:
    """The deregistration reason the archive recorded (graduation, refund, termination...)."""
    archived = await tx.find("holder_archive", holder_id=holder_id, order_by="id")
    return str(archived[-1]["reason"]) if archived else "termination"


async def _accounts(tx: Tx, holder_id: int) -> list[str]:
    return [str(a["id"]) for a in await tx.find("accounts", holder_id=holder_id)]


async def _transfers(tx: Tx, accounts: list[str]) -> list[dict[str, Any]]:
    seen: dict[int, dict[str, Any]] = {}
    for account in accounts:
        for row in await tx.find("transfers", source=account) + await tx.find(
            "transfers", dest=account
        ):
            seen[row["id"]] = row
    return list(seen.values())


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in SECRET_COLUMNS}


async def collect(tx: Tx, holder_id: int, now: datetime) -> Export:
    """Every row that names the holder or one of their cards or accounts."""
    row = await tx.get("holders", holder_id)
    if row is None:
        await tx.get_holder(holder_id)  # raises NotFound
    assert row is not None
    out = Export(holder_id=holder_id, generated_at=now, holder=_clean(row))
    for table in BY_HOLDER:
        out.tables[table] = [_clean(r) for r in await tx.find(table, holder_id=holder_id)]
    cards = out.tables["cards"]
    card_ids = [c["id"] for c in cards]
    for table in BY_CARD:
        out.tables[table] = [_clean(r) for r in await tx.find_in(table, "card_id", card_ids)]
    uids = [c["uid"] for c in cards if c.get("uid")]
    out.tables["offline_sales"] = [
        _clean(r) for r in await tx.find_in("offline_sales", "card_uid", uids)
    ]
    accounts = [str(a["id"]) for a in out.tables["accounts"]]
    out.tables["transfers"] = sorted(await _transfers(tx, accounts), key=lambda r: r["id"])
    audit = await tx.find("audit_log", entity="holder", entity_id=str(holder_id))
    for card_id in card_ids:
        audit += await tx.find("audit_log", entity="card", entity_id=str(card_id))
    out.tables["audit_log"] = sorted(audit, key=lambda r: r["id"])
    return out
