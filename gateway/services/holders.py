"""Holders: roster imports (ISS-1, ISS-6), holder records, staff numbers assigned later (ISS-6),
self-service passwords (LOSS-1)."""

from __future__ import annotations

import asyncio
import hmac
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Protocol

from gateway.services.base import Actor, Context
from gateway.services.common import LIVE_STATES, PENDING_STATES
from gateway.services.passwords import hash_password, verify_password
from protocol.cards.clock import end_of_validity
from protocol.cards.identity import IdDocType, default_password
from protocol.errors import (
    AccessDenied,
    Duplicate,
    ErrorCode,
    InvalidInput,
    OnecardError,
    RuleViolation,
)
from protocol.types import CardKind, HolderCategory, HolderKind, Permission
from storage.ports import Tx
from storage.records import Holder

#: LOSS-1 self-service lockout: after this many wrong passwords the account waits LOCKOUT.
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=30)
#: A student/staff number as the rosters take it (gateway.rosterio): letters, digits, hyphens.
NUMBER_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,31}")
#: Holder fields the counter may complete (REP-3); ``number`` has its own rule (ISS-6).
UPDATABLE = frozenset({"name", "college", "class_name", "department", "photo_ref", "number"})


class RosterRowLike(Protocol):
    """What the import needs from a validated roster row (gateway.rosterio.RosterRow)."""

    @property
    def row_number(self) -> int: ...
    @property
    def name(self) -> str | None: ...
    @property
    def national_id(self) -> str | None: ...
    @property
    def student_number(self) -> str | None: ...
    @property
    def staff_number(self) -> str | None: ...
    @property
    def college(self) -> str | None: ...
    @property
    def class_name(self) -> str | None: ...
    @property
    def department(self) -> str | None: ...
    @property
    def photo(self) -> str | None: ...
    @property
    def valid_until(self) -> date | None: ...

    # optional: ``id_doc_type`` (IdDocType | None) when the roster has a 证件类型 column


@dataclass
class ImportReport:
    kind: str
    imported: int = 0
    skipped_existing: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    holder_ids: list[int] = field(default_factory=list)


def uses_default_password(holder: Holder) -> bool:
    """LOSS-1: until changed, the password is the last 6 of the ID document (not stored)."""
    return holder.password_hash is None


def check_holder_password(holder: Holder, password: str) -> bool:
    if holder.password_hash is None:
        if not holder.national_id:
            return False
        expected = default_password(holder.national_id, holder.id_doc_type)
        return hmac.compare_digest(password.encode(), expected.encode())
    return verify_password(password, holder.password_hash)


class HolderService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def import_roster(
        self,
        actor: Actor,
        kind: HolderKind,
        rows: Sequence[RosterRowLike],
        *,
        default_valid_through: date | None = None,
    ) -> ImportReport:
        """ISS-1 / ISS-6: holders from the admitted-student or new-staff list, in one transaction.

        Rows are already validated by :mod:`gateway.rosterio`; a number or national ID that is
        already registered is refused here (nothing imported) — the caller reports it.
        """
        actor.require(Permission.CARD_HANDLING)
        if kind is HolderKind.TEMPORARY:
            raise InvalidInput(
                "其他人员逐个登记", "temporary holders are registered one by one", rule="ISS-9"
            )
        now = self.ctx.clock.now()
        report = ImportReport(kind=kind.value)
        rule = "ISS-1" if kind is HolderKind.STUDENT else "ISS-6"
        category = HolderCategory.STUDENT if kind is HolderKind.STUDENT else HolderCategory.STAFF
        numbered: list[dict[str, Any]] = []
        order: list[tuple[str | None, dict[str, Any]]] = []  # (number, values) in row order
        by_number: dict[str, int] = {}
        for row in rows:
            number = row.student_number if kind is HolderKind.STUDENT else row.staff_number
            valid = row.valid_until or default_valid_through
            doc_type = getattr(row, "id_doc_type", None) or IdDocType.RESIDENT_ID
            values: dict[str, Any] = {
                "kind": kind.value,
                "category": category.value,
                "number": number or None,
                "name": row.name or "",
                "national_id": row.national_id,
                "id_doc_type": IdDocType(doc_type).value,
                "college": row.college,
                "class_name": row.class_name,
                "department": row.department,
                "photo_ref": row.photo,
                "valid_until": end_of_validity(valid) if valid else None,
                "password_hash": None,  # the default password until changed (LOSS-1)
                "created_at": now,
            }
            order.append((number or None, values))
            if number:
                numbered.append(values)
                by_number[number] = row.row_number
        by_id = {
            (getattr(r, "id_doc_type", None) or IdDocType.RESIDENT_ID, r.national_id): r.row_number
            for r in rows
            if r.national_id
        }
        async with self.ctx.registry.transaction() as tx:
            for clash in await tx.find_in("holders", "number", list(by_number), kind=kind.value):
                raise OnecardError(
                    f"第 {by_number[clash['number']]} 行：学号/工号 {clash['number']} 已登记",
                    f"row {by_number[clash['number']]}: number {clash['number']} is registered",
                    code=ErrorCode.DUPLICATE,
                    rule=rule,
                )
            numbers = sorted({doc_no for _, doc_no in by_id})
            for clash in await tx.find_in("holders", "national_id", numbers, status="active"):
                row_number = by_id.get((IdDocType(clash["id_doc_type"]), clash["national_id"]))
                if row_number is None:
                    continue  # the same number on another kind of document
                raise OnecardError(
                    f"第 {row_number} 行：证件号码已登记",
                    f"row {row_number}: ID document number is registered already",
                    code=ErrorCode.DUPLICATE,
                    rule=rule,
                )
            await tx.insert_many("holders", numbered)
            ids = {
                r["number"]: int(r["id"])
                for r in await tx.find_in("holders", "number", list(by_number), kind=kind.value)
            }
            for number, values in order:
                holder_id = ids[number] if number else await tx.insert("holders", values)
                report.holder_ids.append(holder_id)
            report.imported = len(order)
            await tx.audit(
                now,
                actor.name,
                "holder.import",
                "roster",
                kind.value,
                None,
                {"rows": report.imported},
            )
        return report

    async def update(
        self,
        actor: Actor,
        holder_id: int,
        changes: dict[str, str],
        *,
        reason: str,
        correction: bool = False,
    ) -> Holder:
        """REP-3: complete missing holder data (name, college, class, department, photo).

        ISS-6: staff imported without a staff number get a temp card; once HR assigns the number
        the clerk adds it here (``number``: set once while empty), and the temp card is then
        exchanged for a smart card. Changing a number already recorded is refused unless
        ``correction`` says it is an explicit correction of a wrong entry; it is refused too while
        a smart card carrying the number is in use or being made (that is an exchange for changed
        data, EXC-4). Both are audited with the reason (``holder.number_set``,
        ``holder.number_corrected``).
        """
        actor.require(Permission.CARD_HANDLING)
        if not changes or set(changes) - UPDATABLE:
            raise InvalidInput(
                f"可补充的信息：{', '.join(sorted(UPDATABLE))}",
                f"fields: {', '.join(sorted(UPDATABLE))}",
                rule="REP-3",
            )
        if correction and "number" not in changes:
            raise InvalidInput(
                "更正只适用于学号/工号", "a correction applies to the number only", rule="ISS-6"
            )
        fields = {k: v for k, v in changes.items() if k != "number"}
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(holder_id)
            if "number" in changes:
                await self._set_number(
                    tx, actor, holder, changes["number"], reason=reason, correction=correction
                )
            if fields:
                before = {k: getattr(holder, k) for k in fields}
                await tx.update("holders", holder_id, fields)
                await tx.audit(
                    now,
                    actor.name,
                    "holder.update",
                    "holder",
                    holder_id,
                    before,
                    {**fields, "reason": reason},
                )
            return await tx.get_holder(holder_id)

    async def _set_number(
        self, tx: Tx, actor: Actor, holder: Holder, typed: str, *, reason: str, correction: bool
    ) -> None:
        """ISS-6: the student/staff number, set once when empty, or corrected explicitly."""
        number = unicodedata.normalize("NFKC", typed).strip()
        if not NUMBER_RE.fullmatch(number):
            raise InvalidInput(
                f"学号/工号 {typed!r} 只能包含字母、数字和连字符（最多32位）",
                f"number {typed!r}: letters, digits and hyphens only (max 32)",
                rule="ISS-6",
            )
        if holder.kind is HolderKind.TEMPORARY:
            raise RuleViolation(
                "其他人员的工号为证件号码后6位，不能修改",
                "a temporary holder's work number is the last 6 of the ID document: not editable",
                code=ErrorCode.INVALID_INPUT,
                rule="ISS-11",
            )
        if not reason.strip():
            raise InvalidInput(
                "须说明依据（如人事处通知）",
                "give the reason (e.g. HR's notice)",
                rule="ISS-6",
            )
        if holder.number == number:
            raise InvalidInput(
                f"学号/工号已是 {number}", f"the number is {number} already", rule="ISS-6"
            )
        if holder.number and not correction:
            raise RuleViolation(
                f"持卡人已有学号/工号 {holder.number}；如确属登记错误，请以更正方式修改并说明原因",
                f"the holder has number {holder.number} already: to fix a wrong entry, make an"
                " explicit correction with a reason",
                code=ErrorCode.DUPLICATE,
                rule="ISS-6",
            )
        if holder.number:
            carrying = LIVE_STATES | PENDING_STATES
            printed = [
                c
                for c in await tx.cards_of_holder(holder.id)
                if c.kind is CardKind.SMART and c.state in carrying
            ]
            if printed:
                raise RuleViolation(
                    f"智能卡 {printed[0].serial} 印有原学号/工号：请凭变更文件办理换卡",
                    f"smart card {printed[0].serial} carries the old number: exchange it for"
                    " changed data with the official document",
                    rule="EXC-4",
                )
        for other in await tx.holders_by_number(number):
            if other.kind is holder.kind and other.id != holder.id:
                raise Duplicate(
                    f"学号/工号 {number} 已登记在持卡人 #{other.id}",
                    f"number {number} is registered to holder #{other.id}",
                    rule="ISS-6",
                )
        await tx.update("holders", holder.id, {"number": number})
        await tx.audit(
            self.ctx.clock.now(),
            actor.name,
            "holder.number_corrected" if holder.number else "holder.number_set",
            "holder",
            holder.id,
            {"number": holder.number},
            {"number": number, "reason": reason.strip(), "rule": "ISS-6"},
        )

    # --- self-service authentication (LOSS-1) ------------------------------------------------
    async def authenticate(self, number: str, password: str, *, channel: str) -> Actor:
        """Number + password (default: last 6 of the national ID), with a lockout."""
        now = self.ctx.clock.now()
        wrong = AccessDenied(
            "学号/工号或密码错误",
            "wrong number or password",
            code=ErrorCode.AUTH_FAILED,
            rule="LOSS-1",
        )
        # the password checks (scrypt, tens of milliseconds) run in a thread, outside any
        # transaction: never on the event loop, never holding the write lock (issue 8, item 12)
        async with self.ctx.registry.read() as tx:
            candidates = [
                h
                for h in await tx.holders_by_number(number)
                if h.status == "active" and (h.password_hash or h.national_id)
            ]
        if not candidates:
            raise wrong
        open_ = [h for h in candidates if h.locked_until is None or h.locked_until <= now]
        matches = await asyncio.to_thread(
            lambda: [check_holder_password(h, password) for h in open_]
        )
        locked_any = len(open_) < len(candidates)
        async with self.ctx.registry.transaction() as tx:
            for holder, match in zip(open_, matches, strict=True):
                if match:
                    if holder.failed_logins:
                        await tx.update(
                            "holders", holder.id, {"failed_logins": 0, "locked_until": None}
                        )
                    return Actor(name=f"holder:{holder.id}", channel=channel, holder_id=holder.id)
            for holder in open_:
                fresh = await tx.get_holder(holder.id)  # counted under the write lock
                if fresh.locked_until is not None and fresh.locked_until > now:
                    locked_any = True
                    continue
                failed = fresh.failed_logins + 1
                locked = now + LOCKOUT if failed >= MAX_FAILED_LOGINS else None
                await tx.update(
                    "holders",
                    holder.id,
                    {"failed_logins": 0 if locked else failed, "locked_until": locked},
                )
                locked_any = locked_any or locked is not None
        if locked_any:
            raise AccessDenied(
                "密码错误次数过多，请30分钟后再试或到智能卡中心办理",
                "too many wrong passwords: try again in 30 minutes or visit the counter",
                code=ErrorCode.ACCOUNT_LOCKED,
                rule="LOSS-1",
            )
        raise wrong

    async def change_password(self, actor: Actor, old: str, new: str) -> None:
        if actor.holder_id is None:
            raise AccessDenied(
                "仅持卡人本人可修改",
                "only the holder can change this password",
                code=ErrorCode.PERMISSION_DENIED,
            )
        if len(new) < 6 or new == old:
            raise InvalidInput(
                "新密码至少6位且不同于原密码",
                "the new password has 6+ characters and differs from the old",
                rule="LOSS-1",
            )
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(actor.holder_id)
            if not check_holder_password(holder, old):
                raise AccessDenied(
                    "原密码错误",
                    "wrong current password",
                    code=ErrorCode.AUTH_FAILED,
                    rule="LOSS-1",
                )
            await tx.update("holders", holder.id, {"password_hash": hash_password(new)})
            await tx.audit(now, actor.name, "holder.password_changed", "holder", holder.id)

    async def reset_password(self, actor: Actor, holder_id: int) -> None:
        """At the counter: back to the default (last 6 of the ID document), lockout lifted."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(holder_id)
            if not holder.national_id:
                raise InvalidInput(
                    "持卡人无证件号码", "holder has no ID document on record", rule="LOSS-1"
                )
            await tx.update(
                "holders",
                holder_id,
                {
                    "password_hash": None,
                    "failed_logins": 0,
                    "locked_until": None,
                },
            )
            await tx.audit(now, actor.name, "holder.password_reset", "holder", holder_id)
