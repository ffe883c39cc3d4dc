"""Class batches at the counter (ISS-1, ISS-2, ISS-4): a whole class at once.

* ISS-1 "为新生制作临时CPU卡，并交由二级学院发放": the temp cards of a class are made in one go
  and handed to the college;
* ISS-2 "以班为单位采集新生证件照片": smart cards are ordered per class, the vendor's print batch
  exported;
* ISS-4 "每班班长收集本班学生临时CPU卡和缴纳工本费票据，到智能卡中心统一更换领取智能卡": the class
  monitor brings the class's temp cards (a lost one is paid for, 30 yuan) and collects the
  smart cards.

Every operation returns a :class:`BatchReport` with one :class:`BatchLine` per holder (or per card
typed). Like the roster import it is all-or-nothing by default: when any line is refused, nothing
is written and the report says so (``applied`` is False). With ``partial`` (the CLI's
``--skip-bad``) the good lines are done and the refused ones listed. Either way it runs in one
transaction, checked under the registry's write lock, so the verdicts cannot go stale before the
writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gateway.services.base import Actor, Context
from gateway.services.common import (
    LIVE_STATES,
    PENDING_STATES,
    apply_event,
    card_uid_input,
    collect_fee,
    new_card,
    require_active_holder,
)
from gateway.services.massblock import CLASS_EXCHANGE, exchange_params, guard
from protocol.cards.clock import local
from protocol.cards.fees import FeeItem
from protocol.cards.lifecycle import CardEvent, transition
from protocol.cards.policy import require_complete
from protocol.errors import ErrorCode, InvalidInput, OnecardError, RuleViolation
from protocol.types import CardKind, CardState, HolderKind, Permission
from storage.ports import Tx
from storage.records import Card, Holder, Receipt

OK = "ok"
REFUSED = "refused"
#: exchange only: a student of the class whose temp card did not come back this time
NOT_HANDED_IN = "not_handed_in"


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One holder's (or one typed card's) result. ``detail`` is bilingual, zh-CN first."""

    status: str  # ok, refused, not_handed_in
    number: str | None = None
    name: str | None = None
    holder_id: int | None = None
    serial: str | None = None  # the card issued, ordered or handed over
    returned: str | None = None  # exchange: the temp card handed in (or as typed, if unknown)
    detail: str = ""
    rule: str | None = None


@dataclass
class BatchReport:
    operation: str  # issue_temp, order_smart, exchange
    college: str
    class_name: str
    partial: bool
    applied: bool = True  # False: refused as a whole, nothing written
    lines: list[BatchLine] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(1 for line in self.lines if line.status == OK and self.applied)

    @property
    def refused(self) -> list[BatchLine]:
        return [line for line in self.lines if line.status == REFUSED]


def _refusal(exc: OnecardError) -> tuple[str, str | None]:
    return f"{exc.message_zh} / {exc.message_en}", exc.rule


def _line(
    holder: Holder,
    status: str,
    *,
    serial: str | None = None,
    returned: str | None = None,
    detail: str = "",
    rule: str | None = None,
) -> BatchLine:
    return BatchLine(status, holder.number, holder.name, holder.id, serial, returned, detail, rule)


class ClassBatchService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def _class(self, tx: Tx, college: str, class_name: str, rule: str) -> list[Holder]:
        students = sorted(
            (
                h
                for h in await tx.holders_where(
                    college=college, class_name=class_name, kind=HolderKind.STUDENT.value
                )
                if h.status == "active"
            ),
            key=lambda h: (h.number or "", h.id),
        )
        if not students:
            raise OnecardError(
                f"{college} {class_name} 无在册学生",
                f"no active students in {college} {class_name}",
                code=ErrorCode.NOT_FOUND,
                rule=rule,
            )
        return students

    async def _cards(self, tx: Tx, holders: list[Holder]) -> dict[int, list[Card]]:
        by_holder: dict[int, list[Card]] = {h.id: [] for h in holders}
        for row in await tx.find_in("cards", "holder_id", list(by_holder)):
            by_holder[int(row["holder_id"])].append(Card.from_row(row))
        for cards in by_holder.values():
            cards.sort(key=lambda c: c.id)
        return by_holder

    # --- ISS-1: temp cards for a class -------------------------------------------------------
    async def issue_temp(
        self, actor: Actor, *, college: str, class_name: str, partial: bool = False
    ) -> BatchReport:
        """ISS-1: a temp CPU card for every student of the class without a card in use, valid
        until the e-student-ID validity set at import; handed to the college."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        report = BatchReport("issue_temp", college, class_name, partial)
        async with self.ctx.registry.transaction() as tx:
            students = await self._class(tx, college, class_name, "ISS-1")
            cards = await self._cards(tx, students)
            good: list[Holder] = []
            for student in students:
                live = [c for c in cards[student.id] if c.state in LIVE_STATES]
                if live:
                    report.lines.append(
                        _line(
                            student,
                            REFUSED,
                            serial=live[-1].serial,
                            detail=f"已有在用卡片 {live[-1].serial} / has a card in use",
                            rule="ISS-1",
                        )
                    )
                elif student.valid_until is None:
                    report.lines.append(
                        _line(
                            student,
                            REFUSED,
                            detail="未设置电子学生证有效期 / no e-student-ID validity set",
                            rule="ISS-1",
                        )
                    )
                else:
                    good.append(student)
            if report.refused and not partial:
                report.applied = False
                report.lines.extend(_line(s, OK) for s in good)
                return report
            for student in good:
                card = await new_card(
                    tx,
                    student,
                    CardKind.TEMP,
                    CardState.ACTIVE,
                    now=now,
                    actor=actor,
                    rule="ISS-1",
                    valid_until=student.valid_until,
                )
                report.lines.append(_line(student, OK, serial=card.serial))
            await self._audit(tx, now, actor, report)
        return report

    # --- ISS-2: smart cards ordered for a class ----------------------------------------------
    async def order_smart(
        self, actor: Actor, *, college: str, class_name: str, partial: bool = False
    ) -> BatchReport:
        """ISS-2: every student of the class (photos collected per class) goes into the vendor's
        print batch; a student without complete data (photo, ...) or with a smart card already
        made or being made is refused."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        report = BatchReport("order_smart", college, class_name, partial)
        async with self.ctx.registry.transaction() as tx:
            students = await self._class(tx, college, class_name, "ISS-2")
            cards = await self._cards(tx, students)
            good: list[Holder] = []
            for student in students:
                smart = [
                    c
                    for c in cards[student.id]
                    if c.kind is CardKind.SMART
                    and (c.state in LIVE_STATES or c.state in PENDING_STATES)
                ]
                if smart:
                    report.lines.append(
                        _line(
                            student,
                            REFUSED,
                            serial=smart[-1].serial,
                            detail=f"已有智能卡 {smart[-1].serial}（{smart[-1].state}） / "
                            f"has a smart card ({smart[-1].state})",
                            rule="ISS-2",
                        )
                    )
                    continue
                try:
                    require_complete(student.data, "ISS-2")
                except RuleViolation as exc:
                    detail, rule = _refusal(exc)
                    report.lines.append(_line(student, REFUSED, detail=detail, rule=rule))
                    continue
                good.append(student)
            if report.refused and not partial:
                report.applied = False
                report.lines.extend(_line(s, OK) for s in good)
                return report
            for student in good:
                card = await new_card(
                    tx,
                    student,
                    CardKind.SMART,
                    CardState.PRINTING,
                    now=now,
                    actor=actor,
                    rule="ISS-2",
                    valid_until=student.valid_until,
                )
                report.lines.append(_line(student, OK, serial=card.serial))
            await self._audit(tx, now, actor, report)
        return report

    # --- ISS-4: the class monitor exchanges the class's temp cards for smart cards -----------
    async def exchange(
        self,
        actor: Actor,
        *,
        college: str,
        class_name: str,
        returned: Sequence[str],
        temp_lost: Sequence[str] = (),
        collected_by: str,
        partial: bool = False,
        approval: str | None = None,
    ) -> BatchReport:
        """ISS-4: the temp cards handed in (serial or UID, as typed) are recovered and each
        student's ready smart card is handed over; a student whose temp card is lost (by number)
        pays the fee instead. ``collected_by`` is the class monitor who collects the smart cards.
        A replacement or exchange smart card is not handed over here (REP-4, EXC-5: one by one,
        against the receipt or the old card). Each smart card handed over is entered in the
        collection register (``hand_overs``) as collected by the monitor, with the temp card
        returned for it. More temp cards onto the deny list than the mass-block threshold need
        ``approval`` (:mod:`gateway.services.massblock`)."""
        actor.require(Permission.CARD_HANDLING)
        if not collected_by.strip():
            raise InvalidInput(
                "须登记领卡人（班长）姓名",
                "name the class monitor who collects the cards",
                rule="ISS-4",
            )
        if not returned and not temp_lost:
            raise InvalidInput(
                "须列出交回的临时卡或丢失临时卡的学生",
                "list the temp cards handed in or the students who lost theirs",
                rule="ISS-4",
            )
        now = self.ctx.clock.now()
        detail = f"class monitor {collected_by.strip()}"
        report = BatchReport("exchange", college, class_name, partial)
        params = exchange_params(
            college, class_name, list(returned), list(temp_lost), collected_by, partial
        )
        async with (
            self.ctx.registry.transaction() as tx,
            guard(tx, self.ctx, actor, action=CLASS_EXCHANGE, params=params, approval=approval),
        ):
            students = await self._class(tx, college, class_name, "ISS-4")
            by_id = {s.id: s for s in students}
            by_number = {s.number: s for s in students if s.number}
            cards = await self._cards(tx, students)
            plan: list[tuple[Holder, Card, Card, bool]] = []  # (student, temp, smart, lost)
            seen: set[int] = set()
            for typed in returned:
                found = await self._card(tx, typed)
                student = by_id.get(found.holder_id) if found is not None else None
                if found is None or student is None:
                    why = (
                        "未登记的卡 / unknown card"
                        if found is None
                        else "不是本班学生的卡 / not a card of this class"
                    )
                    report.lines.append(
                        BatchLine(REFUSED, returned=typed, detail=why, rule="ISS-4")
                    )
                    continue
                verdict = self._check(student, found, cards[student.id], seen, now)
                self._plan(report, plan, student, found, verdict, lost=False)
            for number in temp_lost:
                student = by_number.get(number.strip())
                if student is None:
                    report.lines.append(
                        BatchLine(
                            REFUSED,
                            number=number,
                            detail="不是本班学生 / not a student of this class",
                            rule="ISS-4",
                        )
                    )
                    continue
                temps = [
                    c
                    for c in cards[student.id]
                    if c.kind is CardKind.TEMP and c.state in LIVE_STATES
                ]
                if not temps:
                    report.lines.append(
                        _line(
                            student,
                            REFUSED,
                            detail="没有在用的临时卡 / no temp card in use",
                            rule="ISS-4",
                        )
                    )
                    continue
                verdict = self._check(student, temps[-1], cards[student.id], seen, now)
                self._plan(report, plan, student, temps[-1], verdict, lost=True)
            handled = {s.id for s, *_ in plan} | {
                line.holder_id for line in report.lines if line.holder_id is not None
            }
            waiting = [
                _line(
                    s,
                    NOT_HANDED_IN,
                    detail="临时卡未交回，本次未换卡 / temp card not handed in: not exchanged",
                    rule="ISS-4",
                )
                for s in students
                if s.id not in handled
            ]
            if report.refused and not partial:
                report.applied = False
                report.lines.extend(
                    _line(s, OK, serial=smart.serial, returned=temp.serial)
                    for s, temp, smart, _ in plan
                )
                report.lines.extend(waiting)
                return report
            for student, temp, smart, lost in plan:
                if lost:
                    receipt = await collect_fee(
                        tx, self.ctx, student, FeeItem.LOST_TEMP_CARD, now=now, actor=actor
                    )
                    report.receipts.extend([receipt] if receipt else [])
                    await apply_event(
                        tx,
                        temp,
                        CardEvent.TERMINATE,
                        now=now,
                        actor=actor,
                        rule="ISS-4",
                        detail="temp card lost, fee paid",
                    )
                else:
                    await apply_event(
                        tx, temp, CardEvent.RECOVER, now=now, actor=actor, detail=detail
                    )
                await apply_event(
                    tx, smart, CardEvent.HAND_OVER, now=now, actor=actor, detail=detail
                )
                await tx.insert(  # the collection register: the monitor collected it
                    "hand_overs",
                    {
                        "card_id": smart.id,
                        "rule": "ISS-4",
                        "at": now,
                        "actor": actor.name,
                        "collector_name": collected_by.strip(),
                        "collector_doc": None,
                        "collector_is_holder": False,
                        "signed": False,
                        "receipt_no": None,
                        "returned_card_id": None if lost else temp.id,
                    },
                )
                report.lines.append(
                    _line(
                        student,
                        OK,
                        serial=smart.serial,
                        returned=None if lost else temp.serial,
                        detail="临时卡丢失，已缴工本费 / lost temp card paid for" if lost else "",
                        rule="ISS-4",
                    )
                )
            report.lines.extend(waiting)
            await self._audit(tx, now, actor, report, collected_by=collected_by.strip())
        return report

    @staticmethod
    def _plan(
        report: BatchReport,
        plan: list[tuple[Holder, Card, Card, bool]],
        student: Holder,
        temp: Card,
        verdict: Card | BatchLine,
        *,
        lost: bool,
    ) -> None:
        if isinstance(verdict, BatchLine):
            report.lines.append(verdict)
        else:
            plan.append((student, temp, verdict, lost))

    def _check(
        self, student: Holder, temp: Card, cards: list[Card], seen: set[int], now: datetime
    ) -> Card | BatchLine:
        """The student's ready smart card for ``temp``, or the refused line."""

        def refuse(zh_en: str, rule: str | None = "ISS-4") -> BatchLine:
            return _line(student, REFUSED, returned=temp.serial, detail=zh_en, rule=rule)

        if student.id in seen:
            return refuse("同一学生重复列出 / the same student is listed twice")
        seen.add(student.id)
        try:
            require_active_holder(student)
        except RuleViolation as exc:
            return refuse(*_refusal(exc))
        if temp.kind is not CardKind.TEMP:
            return refuse("不是临时卡 / not a temp card")
        try:
            transition(temp.facts, CardEvent.RECOVER, now)
        except OnecardError as exc:
            return refuse(f"临时卡（{temp.state}）不能回收 / temp card {temp.state}: {exc}")
        ready = [c for c in cards if c.kind is CardKind.SMART and c.state is CardState.READY]
        if not ready:
            made = [c for c in cards if c.kind is CardKind.SMART and c.state in PENDING_STATES]
            if made:
                return refuse("智能卡尚未检验合格 / smart card not checked yet", "ISS-3")
            return refuse("没有待领取的智能卡 / no smart card waiting", "ISS-2")
        smart = ready[-1]
        if smart.replaces_card_id is not None:
            return refuse(
                "补办或换卡的智能卡须逐个凭票据或原卡领取 / a replacement or exchange card is "
                "collected one by one against the receipt or the old card",
                "EXC-5",
            )
        if smart.ready_on is not None and local(now).date() < smart.ready_on:
            return refuse(f"智能卡 {smart.ready_on} 起可领取 / ready on {smart.ready_on}", "ISS-4")
        return smart

    @staticmethod
    async def _card(tx: Tx, typed: str) -> Card | None:
        """A card as the clerk typed it: serial, or UID in any case / with separators."""
        value = typed.strip()
        rows = await tx.find("cards", serial=value)
        if rows:
            return Card.from_row(rows[0])
        try:
            uid = card_uid_input(value)
        except InvalidInput:
            return None
        return await tx.card_by_uid(uid) if uid else None

    @staticmethod
    async def _audit(
        tx: Tx, now: datetime, actor: Actor, report: BatchReport, **extra: str
    ) -> None:
        done = [line.serial for line in report.lines if line.status == OK]
        await tx.audit(
            now,
            actor.name,
            f"batch.{report.operation}",
            "class",
            f"{report.college}/{report.class_name}"[:64],
            None,
            {
                "done": len(done),
                "refused": len(report.refused),
                "partial": report.partial,
                **extra,
            },
        )
