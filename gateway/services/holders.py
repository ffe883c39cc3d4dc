"""Holders: roster imports (ISS-1, ISS-6), holder records, self-service passwords (LOSS-1)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Protocol

from gateway.services.base import Actor, Context
from gateway.services.passwords import hash_password, verify_password
from protocol.cards.clock import end_of_validity
from protocol.cards.identity import default_password
from protocol.errors import AccessDenied, ErrorCode, InvalidInput, OnecardError
from protocol.types import HolderCategory, HolderKind, Permission
from storage.records import Holder

#: LOSS-1 self-service lockout: after this many wrong passwords the account waits LOCKOUT.
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=30)


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


@dataclass
class ImportReport:
    kind: str
    imported: int = 0
    skipped_existing: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    holder_ids: list[int] = field(default_factory=list)


def uses_default_password(holder: Holder) -> bool:
    """LOSS-1: until changed, the password is the last 6 of the national ID (not stored)."""
    return holder.password_hash is None


def check_holder_password(holder: Holder, password: str) -> bool:
    if holder.password_hash is None:
        if not holder.national_id:
            return False
        return hmac.compare_digest(password.encode(), default_password(holder.national_id).encode())
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
            values: dict[str, Any] = {
                "kind": kind.value,
                "category": category.value,
                "number": number or None,
                "name": row.name or "",
                "national_id": row.national_id,
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
        by_id = {r.national_id: r.row_number for r in rows if r.national_id}
        async with self.ctx.registry.transaction() as tx:
            for clash in await tx.find_in("holders", "number", list(by_number), kind=kind.value):
                raise OnecardError(
                    f"第 {by_number[clash['number']]} 行：学号/工号 {clash['number']} 已登记",
                    f"row {by_number[clash['number']]}: number {clash['number']} is registered",
                    code=ErrorCode.DUPLICATE,
                    rule=rule,
                )
            for clash in await tx.find_in("holders", "national_id", list(by_id), status="active"):
                raise OnecardError(
                    f"第 {by_id[clash['national_id']]} 行：身份证号已登记",
                    f"row {by_id[clash['national_id']]}: national ID is registered already",
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
        self, actor: Actor, holder_id: int, changes: dict[str, str], *, reason: str
    ) -> Holder:
        """REP-3: complete missing holder data (name, number, college, class, department, photo)."""
        actor.require(Permission.CARD_HANDLING)
        allowed = {"name", "college", "class_name", "department", "photo_ref"}
        if not changes or set(changes) - allowed:
            raise InvalidInput(
                f"可补充的信息：{', '.join(sorted(allowed))}",
                f"fields: {', '.join(sorted(allowed))}",
                rule="REP-3",
            )
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(holder_id)
            before = {k: getattr(holder, k) for k in changes}
            await tx.update("holders", holder_id, changes)
            await tx.audit(
                now,
                actor.name,
                "holder.update",
                "holder",
                holder_id,
                before,
                {**changes, "reason": reason},
            )
            return await tx.get_holder(holder_id)

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
        """At the counter: back to the default (last 6 of the national ID), lockout lifted."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(holder_id)
            if not holder.national_id:
                raise InvalidInput(
                    "持卡人无身份证号", "holder has no national ID on record", rule="LOSS-1"
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
