"""The counter's card procedures: issue, loss, unlock, replace, exchange, extend, refund,
terminate, graduate, scrap (ISS, LOSS, REP, EXC, REF, TERM, SCR)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from gateway.services.base import Actor, Context
from gateway.services.common import (
    LIVE_STATES,
    PENDING_STATES,
    allocate_serials,
    apply_event,
    archive_and_deregister,
    cashier_name,
    collect_fee,
    default_uid,
    live_card,
    new_card,
    pending_card,
    record_hand_in,
    require_active_holder,
    verify_identity,
)
from protocol.cards.clock import SMART_CARD_WORKING_DAYS, add_working_days, end_of_validity, local
from protocol.cards.fees import FeeItem
from protocol.cards.identity import IdDocType, validate_id_doc, work_number
from protocol.cards.lifecycle import CardEvent, ExchangeReason, auto_termination_at
from protocol.cards.policy import require_complete, require_refund_eligible, require_settled
from protocol.carduid import canonical_card_uid, normalise_card_uid
from protocol.errors import Duplicate, ErrorCode, InvalidInput, OnecardError, RuleViolation
from protocol.ledger import (
    TransferKind,
    TransferSpec,
    deposit,
    deposit_in,
    deposit_out,
    fee_income,
    freeze,
    hold,
    purse,
    release,
)
from protocol.types import (
    TEMPORARY_CATEGORIES,
    CardKind,
    CardState,
    HolderCategory,
    HolderKind,
    Permission,
)
from storage.ports import Tx
from storage.records import Card, Holder, Receipt


@dataclass(frozen=True, slots=True)
class CardResult:
    card: Card
    receipts: list[Receipt] = field(default_factory=list)
    old_card: Card | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class RefundSlip:
    """REF-3: the deposit refund slip handed to finance."""

    card: Card
    slip_no: int  # the deposit_out transfer id
    amount: int
    holder_name: str
    deposit_receipt_no: int | None = None  # REF-3: the original receipt, to finance with the slip


@dataclass
class GraduationReport:
    college: str
    class_name: str
    cleared: list[tuple[str, str]] = field(default_factory=list)  # (number, certificate)
    blocked: list[tuple[str, str]] = field(default_factory=list)  # (number, reason)
    receipts: list[Receipt] = field(default_factory=list)
    returned: int = 0
    missing_paid: int = 0


class CardService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- helpers ---------------------------------------------------------------------------
    def _smart_ready_on(self, now: datetime) -> date:
        """REP-4 / EXC-5: a smart card is handed over after two working days."""
        return add_working_days(local(now).date(), SMART_CARD_WORKING_DAYS, self.ctx.holidays)

    async def _holder_by_ref(self, tx: Tx, ref: str | int) -> Holder:
        if isinstance(ref, int):
            return await tx.get_holder(ref)
        holders = [h for h in await tx.holders_by_number(ref) if h.status == "active"]
        if len(holders) != 1:
            if not holders:
                raise OnecardError(
                    f"无此学号/工号 {ref}", f"no holder with number {ref}", code=ErrorCode.NOT_FOUND
                )
            raise OnecardError(
                f"工号 {ref} 对应多人，请用持卡人编号",
                f"number {ref} is ambiguous: use the holder id",
                code=ErrorCode.INVALID_INPUT,
            )
        return holders[0]

    async def holder(self, ref: str | int) -> Holder:
        async with self.ctx.registry.read() as tx:
            return await self._holder_by_ref(tx, ref)

    # --- issuing (ISS) ---------------------------------------------------------------------
    async def register_temporary_holder(
        self,
        actor: Actor,
        *,
        name: str,
        national_id: str,
        category: HolderCategory,
        valid_through: date,
        application_ref: str,
        id_doc_type: IdDocType = IdDocType.RESIDENT_ID,
    ) -> Holder:
        """ISS-8/9/11: a person eligible for a temp card only; work number = last 6 of the ID.

        ``national_id`` is the number of the document of ``id_doc_type`` the applicant shows
        (foreign teachers and exchange students hold passports; see
        :mod:`protocol.cards.identity` for each document's format and its "last 6")."""
        actor.require(Permission.CARD_HANDLING)
        if category not in TEMPORARY_CATEGORIES:
            raise RuleViolation(
                "学生和在职教职工不办理其他人员临时卡",
                "students and staff are not issued visitor temp cards",
                rule="ISS-8",
            )
        if not application_ref.strip():
            raise RuleViolation(
                "须提交归口管理部门签字盖章的申请表",
                "the signed and stamped application form is required",
                code=ErrorCode.INVALID_INPUT,
                rule="ISS-9",
            )
        if not name.strip():
            raise InvalidInput("姓名不能为空", "name is required", rule="ISS-11")
        try:
            nid = validate_id_doc(id_doc_type, national_id)
        except InvalidInput as exc:
            raise InvalidInput(exc.message_zh, exc.message_en, rule="ISS-11") from None
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            for other in await tx.holders_where(national_id=nid, status="active"):
                if other.id_doc_type is not id_doc_type:
                    continue
                raise OnecardError(
                    f"该证件号码已登记（持卡人 {other.id}）",
                    f"this ID document is registered already (holder {other.id})",
                    code=ErrorCode.DUPLICATE,
                    rule="ISS-11",
                )
            holder_id = await tx.insert(
                "holders",
                {
                    "kind": HolderKind.TEMPORARY.value,
                    "category": category.value,
                    "number": work_number(nid, id_doc_type),
                    "name": name.strip(),
                    "national_id": nid,
                    "id_doc_type": id_doc_type.value,
                    "valid_until": end_of_validity(valid_through),
                    "password_hash": None,  # default: last 6 of the ID document (LOSS-1)
                    "created_at": now,
                    "application_ref": application_ref.strip(),
                },
            )
            await tx.audit(
                now,
                actor.name,
                "holder.register",
                "holder",
                holder_id,
                None,
                {
                    "kind": "temporary",
                    "category": category.value,
                    "id_doc_type": id_doc_type.value,
                },
            )
            return await tx.get_holder(holder_id)

    async def issue_temp(
        self,
        actor: Actor,
        holder_ref: str | int,
        *,
        uid: str | None = None,
        valid_through: date | None = None,
        proof_ref: str | None = None,
    ) -> CardResult:
        """Issue a temp CPU card, usable at once.

        Students: ISS-1 (free, handed out per college). Staff without a number yet: ISS-6 (on
        written proof). Others: ISS-10 deposit, collected with a receipt (ISS-12).
        """
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await self._holder_by_ref(tx, holder_ref)
            require_active_holder(holder)
            cards = await tx.cards_of_holder(holder.id)
            current = live_card(cards)
            if current is not None:
                raise RuleViolation(
                    f"持卡人已有在用卡片（{current.serial}，{current.state}）",
                    f"the holder already has a card in use ({current.serial}, {current.state})",
                    code=ErrorCode.DUPLICATE,
                    rule="ISS-1",
                )
            receipts: list[Receipt] = []
            valid_until = end_of_validity(valid_through) if valid_through else holder.valid_until
            if holder.kind is HolderKind.STUDENT:
                rule = "ISS-1"
            elif holder.kind is HolderKind.STAFF:
                rule = "ISS-6"
                if not (proof_ref or holder.application_ref):
                    raise RuleViolation(
                        "无职工号的教职工办理临时卡须提供部门书面证明",
                        "staff without a number need the department's written proof",
                        code=ErrorCode.INVALID_INPUT,
                        rule="ISS-6",
                    )
            else:
                rule = "ISS-10"
                if valid_until is None:
                    raise RuleViolation(
                        "须录入使用有效期",
                        "a validity period is required",
                        code=ErrorCode.INVALID_INPUT,
                        rule="ISS-11",
                    )
                await tx.post(
                    deposit_in(holder.id, self.ctx.fees.deposit),
                    at=now,
                    actor=actor.name,
                    holder_id=holder.id,
                )
                receipt = await tx.issue_receipt(
                    holder_id=holder.id,
                    payer=holder.name,
                    item="临时卡押金 / deposit",
                    amount=self.ctx.fees.deposit,
                    at=now,
                    cashier=await cashier_name(tx, actor),
                    transfer_id=(await tx.transfers_of(deposit(holder.id), 1))[0].id,
                )
                receipts.append(receipt)
            card = await new_card(
                tx,
                holder,
                CardKind.TEMP,
                CardState.ACTIVE,
                now=now,
                actor=actor,
                rule=rule,
                valid_until=valid_until,
                uid=uid,
            )
            return CardResult(card=card, receipts=receipts)

    async def issue_temp_batch(self, actor: Actor, holder_ids: list[int]) -> list[Card]:
        """ISS-1: the temp cards of a whole intake (handed out per college), in one transaction.

        For students and numbered staff only (no deposit); every holder must be without a card.
        Returns the cards in the order of ``holder_ids``.
        """
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holders = {
                int(r["id"]): Holder.from_row(r)
                for r in await tx.find_in("holders", "id", holder_ids)
            }
            for holder_id in holder_ids:
                holder = holders.get(holder_id)
                if holder is None:
                    raise OnecardError(
                        f"无此持卡人 {holder_id}",
                        f"no holder {holder_id}",
                        code=ErrorCode.NOT_FOUND,
                    )
                require_active_holder(holder)
                if holder.kind is HolderKind.TEMPORARY:
                    raise RuleViolation(
                        "其他人员须逐个办理并缴纳押金",
                        "other people are issued one by one, with a deposit",
                        rule="ISS-10",
                    )
            live = [
                c
                for c in await tx.find_in("cards", "holder_id", holder_ids)
                if CardState(c["state"]) in LIVE_STATES
            ]
            if live:
                raise RuleViolation(
                    f"持卡人 #{live[0]['holder_id']} 已有在用卡片",
                    f"holder #{live[0]['holder_id']} already has a card in use",
                    code=ErrorCode.DUPLICATE,
                    rule="ISS-1",
                )
            serials = await allocate_serials(tx, CardKind.TEMP, len(holder_ids))
            await tx.insert_many(
                "cards",
                [
                    {
                        "serial": serial,
                        "uid": default_uid(serial),
                        "kind": CardKind.TEMP.value,
                        "holder_id": holder_id,
                        "state": CardState.ACTIVE.value,
                        "valid_until": holders[holder_id].valid_until,
                        "created_at": now,
                        "handed_over_at": now,
                        "updated_at": now,
                    }
                    for serial, holder_id in zip(serials, holder_ids, strict=True)
                ],
            )
            cards = {
                r["serial"]: Card.from_row(r) for r in await tx.find_in("cards", "serial", serials)
            }
            issued = [cards[serial] for serial in serials]
            await tx.insert_many(
                "card_events",
                [
                    {
                        "card_id": card.id,
                        "event": "issue",
                        "from_state": None,
                        "to_state": CardState.ACTIVE.value,
                        "rule": "ISS-1"
                        if holders[card.holder_id].kind is HolderKind.STUDENT
                        else "ISS-6",
                        "at": now,
                        "actor": actor.name,
                        "channel": actor.channel,
                        "detail": "batch",
                    }
                    for card in issued
                ],
            )
            await tx.audit(
                now,
                actor.name,
                "card.issue_batch",
                "cards",
                len(issued),
                None,
                {"count": len(issued)},
            )
            return issued

    async def order_smart(self, actor: Actor, holder_ref: str | int) -> CardResult:
        """ISS-2 / ISS-6: a smart card goes into the vendor's print batch (needs a photo)."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await self._holder_by_ref(tx, holder_ref)
            require_active_holder(holder)
            if holder.kind is HolderKind.TEMPORARY:
                raise RuleViolation(
                    "其他人员只办理临时卡", "other people get temp cards only", rule="ISS-8"
                )
            if holder.kind is HolderKind.STAFF and not holder.number:
                raise RuleViolation(
                    "待人事处确定职工号后再办理智能卡",
                    "a smart card is made once HR assigns the staff number",
                    code=ErrorCode.HOLDER_DATA_INCOMPLETE,
                    rule="ISS-6",
                )
            require_complete(holder.data, "ISS-2")
            if pending_card(await tx.cards_of_holder(holder.id)) is not None:
                raise RuleViolation(
                    "已有制作中的智能卡",
                    "a smart card is already being made",
                    code=ErrorCode.DUPLICATE,
                    rule="ISS-2",
                )
            card = await new_card(
                tx,
                holder,
                CardKind.SMART,
                CardState.PRINTING,
                now=now,
                actor=actor,
                rule="ISS-2",
                valid_until=holder.valid_until,
            )
            return CardResult(card=card)

    async def check_printed(
        self, actor: Actor, serial: str, *, passed: bool, uid: str | None = None
    ) -> Card:
        """ISS-3: a printed card passed (print, swipe, RFID) or goes back for a reprint."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            if passed:
                return await apply_event(
                    tx,
                    card,
                    CardEvent.PRINTED,
                    now=now,
                    actor=actor,
                    extra={"uid": await _free_uid(tx, uid, card)} if uid else None,
                )
            return await apply_event(
                tx, card, CardEvent.REPRINT, now=now, actor=actor, detail="check failed"
            )

    async def hand_over(
        self,
        actor: Actor,
        serial: str,
        *,
        returned_temp_serial: str | None = None,
        temp_card_lost: bool = False,
        presented_id: str | None = None,
        receipt_no: int | None = None,
        returned_card: str | None = None,
        collector_name: str | None = None,
        signed: bool = False,
    ) -> CardResult:
        """Hand a ready card to whoever collects it, and record who did (签字领取).

        ISS-4: a student hands in the temp card (or pays for a lost one); ISS-6: staff likewise;
        ISS-7: staff collect in person with their national ID. REP-4: a replacement smart card
        after two working days, against the receipt of the replacement fee (``receipt_no``);
        EXC-5: an exchanged smart card after two working days, against the original card
        (``returned_card``, serial or UID, unless the center took it at the exchange). For both
        the collector shows an ID (``presented_id``: the holder's, or a named ``collector_name``'s)
        and signs the collection register (``signed``).
        """
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            require_active_holder(holder)
            previous = await tx.get_card(card.replaces_card_id) if card.replaces_card_id else None
            rule = await _successor_rule(tx, card)
            if card.ready_on is not None and local(now).date() < card.ready_on:
                raise RuleViolation(
                    f"智能卡须两个工作日后领取，可领取日期：{card.ready_on}",
                    f"the smart card can be collected from {card.ready_on} (two working days)",
                    code=ErrorCode.TOO_EARLY,
                    rule=rule or "EXC-5",
                )
            if holder.kind is HolderKind.STAFF:
                verify_identity(holder, presented_id, "ISS-7")
            if rule == "REP-4":
                receipt_no = await self._check_replacement_receipt(tx, card, receipt_no)
            elif rule is not None and previous is not None:
                previous = await self._take_back_original(tx, previous, returned_card, now, actor)
            collector = _collector(
                holder, presented_id, collector_name, signed, rule or "ISS-4", strict=bool(rule)
            )
            receipts: list[Receipt] = []
            temp = live_card(await tx.cards_of_holder(holder.id))
            note = ""
            returned_id = previous.id if rule is not None and previous is not None else None
            if temp is not None and temp.kind is CardKind.TEMP and temp.id != card.id:
                if returned_temp_serial is not None:
                    if not _names_card(returned_temp_serial, temp):
                        raise RuleViolation(
                            "交回的临时卡不是该持卡人的卡",
                            "the temp card handed in is not this holder's",
                            code=ErrorCode.INVALID_INPUT,
                            rule="ISS-4",
                        )
                    await apply_event(tx, temp, CardEvent.RECOVER, now=now, actor=actor)
                    note = "temp card recovered"
                    returned_id = temp.id
                elif temp_card_lost:
                    receipt = await collect_fee(
                        tx, self.ctx, holder, FeeItem.LOST_TEMP_CARD, now=now, actor=actor
                    )
                    receipts.extend([receipt] if receipt else [])
                    await apply_event(
                        tx,
                        temp,
                        CardEvent.TERMINATE,
                        now=now,
                        actor=actor,
                        rule="ISS-4",
                        detail="temp card lost, fee paid",
                    )
                    note = "lost temp card paid"
                else:
                    raise RuleViolation(
                        "须凭临时卡换取智能卡；临时卡丢失须缴纳工本费",
                        "hand in the temp card (or pay for a lost one) to collect the smart card",
                        rule="ISS-4",
                    )
            elif temp is not None and temp.id != card.id:
                raise RuleViolation(
                    f"持卡人已有在用卡片（{temp.serial}）",
                    f"the holder already has a card in use ({temp.serial})",
                    code=ErrorCode.DUPLICATE,
                    rule="EXC-5",
                )
            updated = await apply_event(tx, card, CardEvent.HAND_OVER, now=now, actor=actor)
            await tx.insert(
                "hand_overs",
                {
                    "card_id": card.id,
                    "rule": rule or ("ISS-7" if holder.kind is HolderKind.STAFF else "ISS-4"),
                    "at": now,
                    "actor": actor.name,
                    "collector_name": collector[0],
                    "collector_doc": collector[1],
                    "collector_is_holder": collector[2],
                    "signed": signed,
                    "receipt_no": receipt_no,
                    "returned_card_id": returned_id,
                },
            )
            if not collector[2]:
                note = "；".join(x for x in (note, f"代领 collected by {collector[0]}") if x)
            return CardResult(card=updated, receipts=receipts, old_card=temp, note=note)

    async def _check_replacement_receipt(
        self, tx: Tx, card: Card, receipt_no: int | None
    ) -> int | None:
        """REP-4 "凭收费票据": the receipt shown is the one issued for this card's replacement
        fee (none is asked for when the fee was waived)."""
        item = f"/ {FeeItem.REPLACEMENT_SMART.value}"
        paid = [
            r
            for r in await tx.find("receipts", holder_id=card.holder_id, order_by="id")
            if r["at"] == card.created_at and str(r["item"]).endswith(item)
        ]
        if not paid:
            return None
        if receipt_no is None:
            raise RuleViolation(
                "补办的智能卡须凭补卡费收费票据领取，请输入票据号",
                "a replacement smart card is collected against the replacement fee receipt: "
                "give the receipt number",
                code=ErrorCode.INVALID_INPUT,
                rule="REP-4",
            )
        if int(paid[-1]["receipt_no"]) != receipt_no:
            raise RuleViolation(
                f"票据号 {receipt_no} 不是这张补办卡的补卡费票据",
                f"receipt No. {receipt_no} is not the replacement fee receipt of this card",
                code=ErrorCode.INVALID_INPUT,
                rule="REP-4",
            )
        return receipt_no

    async def _take_back_original(
        self, tx: Tx, original: Card, returned: str | None, now: datetime, actor: Actor
    ) -> Card:
        """EXC-5 "申请人退回原卡后，方可领取新卡": the original card comes back (serial or UID as
        read), unless the center took it at the exchange already."""
        if original.in_custody:
            if returned is not None and not _names_card(returned, original):
                raise RuleViolation(
                    f"交回的卡 {returned} 不是换卡前的原卡",
                    f"card {returned} is not the card this one was exchanged for",
                    code=ErrorCode.INVALID_INPUT,
                    rule="EXC-5",
                )
            return original
        if returned is None:
            raise RuleViolation(
                f"须先交回原卡（{original.serial}）方可领取新卡",
                f"the original card ({original.serial}) must be handed back before the new one "
                "is handed over",
                code=ErrorCode.NOT_ELIGIBLE,
                rule="EXC-5",
            )
        if not _names_card(returned, original):
            raise RuleViolation(
                f"交回的卡 {returned} 不是换卡前的原卡（{original.serial}）",
                f"card {returned} is not the original card ({original.serial})",
                code=ErrorCode.INVALID_INPUT,
                rule="EXC-5",
            )
        return await record_hand_in(
            tx, original, now=now, actor=actor, rule="EXC-5", detail="original card returned"
        )

    # --- loss and unlock (LOSS) -------------------------------------------------------------
    async def report_loss(
        self, actor: Actor, serial: str, *, presented_id: str | None = None
    ) -> Card:
        """LOSS-1/2: at the counter the operator verifies identity; kiosk/web actors are the
        holder (authenticated by number + password) and may report only their own card."""
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            self._check_holder_or_counter(actor, holder, presented_id, "LOSS-1")
            return await apply_event(tx, card, CardEvent.REPORT_LOSS, now=now, actor=actor)

    async def report_loss_of_holder(self, actor: Actor, holder_id: int) -> Card:
        """LOSS-1 self-service: the holder's card in use, whatever its serial."""
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            holder = await tx.get_holder(holder_id)
            self._check_holder_or_counter(actor, holder, None, "LOSS-1")
            card = live_card(await tx.cards_of_holder(holder.id))
            if card is None:
                raise OnecardError(
                    "没有在用的卡片", "no card in use", code=ErrorCode.NOT_FOUND, rule="LOSS-1"
                )
            return await apply_event(tx, card, CardEvent.REPORT_LOSS, now=now, actor=actor)

    def _check_holder_or_counter(
        self, actor: Actor, holder: Holder, presented_id: str | None, rule: str
    ) -> None:
        if actor.channel == "counter":
            actor.require(Permission.CARD_HANDLING)
            verify_identity(holder, presented_id, rule)
        elif actor.holder_id != holder.id:
            raise RuleViolation(
                "只能挂失本人的卡",
                "only the holder's own card",
                code=ErrorCode.PERMISSION_DENIED,
                rule=rule,
            )

    async def unlock(self, actor: Actor, serial: str, *, presented_id: str | None) -> Card:
        """LOSS-3: only at the counter, with a valid ID; LOSS-4: never after a replacement."""
        if actor.channel != "counter":
            raise RuleViolation(
                "解挂只能持本人有效证件到智能卡中心办理，不接受网站或自助终端解挂",
                "unlock only at the counter with a valid ID; never on the web or at a kiosk",
                code=ErrorCode.PERMISSION_DENIED,
                rule="LOSS-3",
            )
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            verify_identity(holder, presented_id, "LOSS-3")
            return await apply_event(tx, card, CardEvent.UNLOCK, now=now, actor=actor)

    # --- replacement (REP) ------------------------------------------------------------------
    async def replace(
        self,
        actor: Actor,
        lost_serial: str,
        *,
        presented_id: str | None,
        kind: CardKind | None = None,
        uid: str | None = None,
    ) -> CardResult:
        """REP-1..5: 48 h after the loss report, fee with receipt, complete data, new card
        (temp at once, smart after two working days); the balance stays with the holder."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            old = await tx.card_by_serial(lost_serial)
            holder = await tx.get_holder(old.holder_id)
            require_active_holder(holder)
            verify_identity(holder, presented_id, "REP-1")
            new_kind = kind or old.kind
            if new_kind is CardKind.SMART and holder.kind is HolderKind.TEMPORARY:
                raise RuleViolation(
                    "其他人员只办理临时卡", "other people get temp cards only", rule="ISS-8"
                )
            old = await apply_event(tx, old, CardEvent.REPLACE, now=now, actor=actor)
            require_complete(holder.data, "REP-3")
            receipt = await collect_fee(
                tx, self.ctx, holder, self.ctx.fees.replacement(new_kind), now=now, actor=actor
            )
            card = await self._successor(
                tx, holder, old, new_kind, now=now, actor=actor, rule="REP-4", uid=uid
            )
            return CardResult(card=card, receipts=[receipt] if receipt else [], old_card=old)

    async def _successor(
        self,
        tx: Tx,
        holder: Holder,
        old: Card,
        kind: CardKind,
        *,
        now: datetime,
        actor: Actor,
        rule: str,
        uid: str | None,
    ) -> Card:
        if kind is CardKind.TEMP:
            return await new_card(
                tx,
                holder,
                kind,
                CardState.ACTIVE,
                now=now,
                actor=actor,
                rule=rule,
                valid_until=old.valid_until or holder.valid_until,
                uid=uid,
                replaces=old,
                type_group=old.type_group,
            )
        return await new_card(
            tx,
            holder,
            kind,
            CardState.READY,
            now=now,
            actor=actor,
            rule=rule,
            valid_until=holder.valid_until,
            uid=uid,
            replaces=old,
            ready_on=self._smart_ready_on(now),
            type_group=old.type_group,
        )

    # --- exchange (EXC) ---------------------------------------------------------------------
    async def report_fault(
        self,
        actor: Actor,
        serial: str,
        *,
        presented_id: str | None,
        finding: str,
        holder_damaged: bool = False,
        repairable: bool = False,
    ) -> Card:
        """EXC-3: the clerk checks the card and records the finding; only a fault the holder did
        not cause and that cannot be repaired is accepted: its balance is frozen for 48 hours.
        A repairable card is repaired; a card the holder damaged goes the paid route (loss
        report, then replacement with the fee, REP-1/2). The inspection is recorded (audited)
        whatever the outcome."""
        actor.require(Permission.CARD_HANDLING)
        if not finding.strip():
            raise RuleViolation(
                "须登记卡片检查结果（故障现象、是否人为损坏、能否修复）",
                "record the finding of the card check (the fault, whether the holder damaged it, "
                "whether it can be repaired)",
                code=ErrorCode.INVALID_INPUT,
                rule="EXC-3",
            )
        now = self.ctx.clock.now()
        refusal: RuleViolation | None = None
        if repairable:
            refusal = RuleViolation(
                "卡片故障可以修复：修复后交还持卡人，不办理换卡",
                "the fault can be repaired: repair the card and give it back; no exchange",
                code=ErrorCode.NOT_ELIGIBLE,
                rule="EXC-3",
            )
        elif holder_damaged:
            refusal = RuleViolation(
                "人为损坏的卡不按故障换卡办理：请按补卡流程挂失，满48小时后缴纳补卡费补卡",
                "a card damaged by the holder is not a faulty-card exchange: it goes the paid "
                "route: report it lost, then replace it after 48 hours with the fee (REP-1/2)",
                code=ErrorCode.NOT_ELIGIBLE,
                rule="EXC-3",
            )
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            verify_identity(holder, presented_id, "EXC-3")
            await tx.audit(
                now,
                actor.name,
                "card.fault_inspection",
                "card",
                card.id,
                None,
                {
                    "finding": finding.strip(),
                    "holder_damaged": holder_damaged,
                    "repairable": repairable,
                    "accepted": refusal is None,
                },
            )
            if refusal is None:
                card = await apply_event(
                    tx,
                    card,
                    CardEvent.REPORT_FAULT,
                    now=now,
                    actor=actor,
                    detail=f"finding: {finding.strip()}"[:500],
                )
                balance = await tx.balance(purse(holder.id))
                if balance > 0:
                    await tx.post(
                        freeze(holder.id, balance),
                        at=now,
                        actor=actor.name,
                        card_id=card.id,
                        holder_id=holder.id,
                    )
        if refusal is not None:
            raise refusal  # after the commit: the inspection stays recorded
        return card

    async def complete_faulty_exchange(
        self,
        actor: Actor,
        serial: str,
        *,
        kind: CardKind | None = None,
        uid: str | None = None,
        old_card_returned: bool = False,
    ) -> CardResult:
        """EXC-3/5: after the 48 h freeze the exchange is done and the frozen balance moves to
        the new card. The faulty card comes back to the center (for the vendor, EXC-6): at once
        for a new temp card, else now (``old_card_returned``) or when the smart card is
        collected."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            old = await tx.card_by_serial(serial)
            holder = await tx.get_holder(old.holder_id)
            require_active_holder(holder)
            new_kind = kind or old.kind
            old = await apply_event(
                tx,
                old,
                CardEvent.EXCHANGE,
                now=now,
                actor=actor,
                card_returned=new_kind is CardKind.TEMP or old_card_returned,
            )
            require_complete(holder.data, "EXC-5")
            receipts = await self._exchange_fee(tx, holder, now, actor)
            held = await tx.balance(hold(holder.id))
            if held > 0:
                await tx.post(
                    release(holder.id, held),
                    at=now,
                    actor=actor.name,
                    card_id=old.id,
                    holder_id=holder.id,
                )
            card = await self._successor(
                tx, holder, old, new_kind, now=now, actor=actor, rule="EXC-5", uid=uid
            )
            return CardResult(card=card, receipts=receipts, old_card=old)

    async def _exchange_fee(
        self, tx: Tx, holder: Holder, now: datetime, actor: Actor
    ) -> list[Receipt]:
        """EXC-2 and the Chinese text's step (6): a student pays the exchange fee."""
        if holder.kind is not HolderKind.STUDENT:
            return []
        receipt = await collect_fee(tx, self.ctx, holder, FeeItem.EXCHANGE, now=now, actor=actor)
        return [receipt] if receipt else []

    async def exchange_for_changed_data(
        self,
        actor: Actor,
        serial: str,
        *,
        presented_id: str | None,
        document_ref: str,
        changes: dict[str, str],
        kind: CardKind | None = None,
        uid: str | None = None,
        old_card_returned: bool = False,
    ) -> CardResult:
        """EXC-4: the operator checks the official documents, updates the holder record and
        exchanges at once; EXC-5: the old card is handed back first (at once for a new temp
        card; for a smart card now, ``old_card_returned``, or when the new card is collected)."""
        actor.require(Permission.CARD_HANDLING)
        allowed = {"name", "college", "class_name", "department", "photo_ref", "number"}
        if not document_ref.strip():
            raise RuleViolation(
                "须核对人事处、组织部或教务处的变更文件",
                "the official change document is required",
                code=ErrorCode.INVALID_INPUT,
                rule="EXC-4",
            )
        unknown = set(changes) - allowed
        if unknown or not changes:
            raise InvalidInput(
                f"可变更的信息：{', '.join(sorted(allowed))}",
                f"changes must be some of: {', '.join(sorted(allowed))}",
                rule="EXC-4",
            )
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            old = await tx.card_by_serial(serial)
            holder = await tx.get_holder(old.holder_id)
            require_active_holder(holder)
            verify_identity(holder, presented_id, "EXC-4")
            before = {k: getattr(holder, k) for k in changes}
            await tx.update("holders", holder.id, changes)
            await tx.audit(
                now,
                actor.name,
                "holder.update",
                "holder",
                holder.id,
                before,
                {**changes, "document": document_ref},
            )
            holder = await tx.get_holder(holder.id)
            new_kind = kind or old.kind
            old = await apply_event(
                tx,
                old,
                CardEvent.EXCHANGE,
                now=now,
                actor=actor,
                exchange_reason=ExchangeReason.DATA_CHANGE,
                card_returned=new_kind is CardKind.TEMP or old_card_returned,
            )
            require_complete(holder.data, "EXC-4")
            receipts = await self._exchange_fee(tx, holder, now, actor)
            card = await self._successor(
                tx, holder, old, new_kind, now=now, actor=actor, rule="EXC-4", uid=uid
            )
            return CardResult(card=card, receipts=receipts, old_card=old)

    # --- validity (TERM-2/3) -----------------------------------------------------------------
    async def extend(self, actor: Actor, serial: str, *, valid_through: date) -> Card:
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            new_until = end_of_validity(valid_through)
            card = await apply_event(
                tx, card, CardEvent.EXTEND, now=now, actor=actor, new_valid_until=new_until
            )
            await tx.update("holders", card.holder_id, {"valid_until": new_until})
            return card

    async def run_due(self, actor: Actor) -> list[Card]:
        """The scheduler's pass: expire temp cards whose validity ended (TERM-2) and terminate
        those expired more than 3 months ago (TERM-3). Returns the cards changed.

        Candidates come from an indexed range query in a read transaction; the write
        transaction (which holds the registry's write lock) opens only when something is due.
        """
        now = self.ctx.clock.now()
        temp = CardKind.TEMP.value
        async with self.ctx.registry.read() as tx:
            expiring = await tx.cards_valid_until_before(
                temp, [CardState.ACTIVE.value, CardState.SUSPENDED.value], now
            )
            # 3 calendar months are at least 89 days: narrow by date, decide exactly below
            ending = await tx.cards_valid_until_before(
                temp, [CardState.EXPIRED.value], now - timedelta(days=89)
            )
        ending = [
            c for c in ending if (due := auto_termination_at(c.facts)) is not None and due <= now
        ]
        if not expiring and not ending:
            return []
        changed: list[Card] = []
        async with self.ctx.registry.transaction() as tx:
            for event, cards in ((CardEvent.EXPIRE, expiring), (CardEvent.AUTO_TERMINATE, ending)):
                for candidate in cards:
                    card = await tx.get_card(candidate.id)  # re-read under the write lock
                    if card.state is not candidate.state:
                        continue
                    changed.append(await apply_event(tx, card, event, now=now, actor=actor))
        return changed

    # --- refund (REF) ------------------------------------------------------------------------
    async def refund(
        self,
        actor: Actor,
        serial: str,
        *,
        card_ok: bool,
        presented_id: str | None,
        receipt_no: int | None = None,
    ) -> RefundSlip:
        """REF-1..4: temp cards of other people; balance settled first; the card and the
        original deposit receipt (``receipt_no``) come back; if the card passes the check the
        deposit is refunded (a damaged card forfeits it); the holder's data is archived and the
        holder deregistered."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            verify_identity(holder, presented_id, "REF-3")
            require_refund_eligible(holder.kind)
            if card.kind is not CardKind.TEMP:
                raise RuleViolation(
                    "只有临时卡可以退卡", "only temp cards are refunded", rule="REF-1"
                )
            require_settled(await tx.balance(purse(holder.id)), "REF-2")
            await _check_deposit_receipt(tx, holder, receipt_no)
            card = await apply_event(
                tx,
                card,
                CardEvent.REFUND,
                now=now,
                actor=actor,
                detail="card ok" if card_ok else "card damaged",
            )
            held = await tx.balance(deposit(holder.id))
            slip_no, refunded = 0, 0
            if held > 0 and card_ok:
                slip_no = await tx.post(
                    deposit_out(holder.id, held),
                    at=now,
                    actor=actor.name,
                    card_id=card.id,
                    holder_id=holder.id,
                )
                refunded = held
            elif held > 0:
                await tx.post(
                    TransferSpec(
                        TransferKind.FEE,
                        deposit(holder.id),
                        fee_income(),
                        held,
                        memo="deposit forfeited: damaged card",
                    ),
                    at=now,
                    actor=actor.name,
                    card_id=card.id,
                    holder_id=holder.id,
                )
            if not [
                c
                for c in await tx.cards_of_holder(holder.id)
                if c.state in PENDING_STATES or c.state in {CardState.ACTIVE, CardState.LOST}
            ]:
                await archive_and_deregister(tx, holder, reason="refund", now=now, actor=actor)
            return RefundSlip(
                card=card,
                slip_no=slip_no,
                amount=refunded,
                holder_name=holder.name,
                deposit_receipt_no=receipt_no,
            )

    # --- termination (TERM) -------------------------------------------------------------------
    async def terminate(
        self, actor: Actor, serial: str, *, reason: str, presented_id: str | None
    ) -> Card:
        """TERM-1/4/6: the card comes back, card function ends everywhere, the holder's data is
        archived and the holder deregistered. The balance is settled first; a lost card goes
        through replacement first."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            holder = await tx.get_holder(card.holder_id)
            require_active_holder(holder)
            verify_identity(holder, presented_id, "TERM-1")
            if card.state is CardState.LOST:
                raise RuleViolation(
                    "挂失的卡须先办理补卡，再退回卡片",
                    "a lost card goes through replacement first, then comes back",
                    code=ErrorCode.TRANSITION_NOT_ALLOWED,
                    rule="TERM-4",
                )
            require_settled(
                await tx.balance(purse(holder.id)) + await tx.balance(hold(holder.id)), "TERM-4"
            )
            card = await apply_event(
                tx,
                card,
                CardEvent.TERMINATE,
                now=now,
                actor=actor,
                detail=reason,
                card_returned=True,  # TERM-1: the holder hands the card back
            )
            await self._end_holder(tx, holder, reason=reason, now=now, actor=actor)
            return card

    async def _end_holder(
        self, tx: Tx, holder: Holder, *, reason: str, now: datetime, actor: Actor
    ) -> None:
        for other in await tx.cards_of_holder(holder.id):
            if other.state in PENDING_STATES or other.state in {
                CardState.ACTIVE,
                CardState.SUSPENDED,
                CardState.EXPIRED,
                CardState.FROZEN,
            }:
                await apply_event(
                    tx, other, CardEvent.TERMINATE, now=now, actor=actor, detail=reason
                )
        held = await tx.balance(deposit(holder.id))
        if held > 0:
            await tx.post(
                deposit_out(holder.id, held), at=now, actor=actor.name, holder_id=holder.id
            )
        await archive_and_deregister(tx, holder, reason=reason, now=now, actor=actor)

    async def graduate_class(
        self,
        actor: Actor,
        *,
        college: str,
        class_name: str,
        returned_serials: list[str],
        missing_paid: list[str],
    ) -> GraduationReport:
        """TERM-5: per class: balances settled, the monitor returns the cards, a missing card costs
        the fee; the center checks roster, returned count and receipts, then issues a clearance
        certificate per student. Students who cannot be cleared are listed with the reason."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        report = GraduationReport(college=college, class_name=class_name)
        returned = set(returned_serials)
        paid = set(missing_paid)
        async with self.ctx.registry.transaction() as tx:
            students = [
                h
                for h in await tx.holders_where(
                    college=college, class_name=class_name, kind=HolderKind.STUDENT.value
                )
                if h.status == "active"
            ]
            if not students:
                raise OnecardError(
                    f"{college} {class_name} 无在册学生",
                    f"no active students in {college} {class_name}",
                    code=ErrorCode.NOT_FOUND,
                    rule="TERM-5",
                )
            roster_serials: set[str] = set()
            for student in students:
                number = student.number or str(student.id)
                cards = await tx.cards_of_holder(student.id)
                roster_serials.update(c.serial for c in cards)
                card = live_card(cards)
                balance = await tx.balance(purse(student.id)) + await tx.balance(hold(student.id))
                if balance:
                    report.blocked.append(
                        (number, f"余额未结清 {balance} 分 / balance not settled ({balance} fen)")
                    )
                    continue
                receipt_no: int | None = None
                if card is not None and card.serial in returned:
                    report.returned += 1
                    card_back = True
                elif number in paid or (card is not None and card.serial in paid):
                    receipt = await collect_fee(
                        tx, self.ctx, student, FeeItem.MISSING_CARD, now=now, actor=actor
                    )
                    if receipt:
                        report.receipts.append(receipt)
                        receipt_no = receipt.receipt_no
                    report.missing_paid += 1
                    card_back = False
                else:
                    report.blocked.append(
                        (number, "未交卡也未缴纳工本费 / card neither returned nor paid for")
                    )
                    continue
                if card is not None:
                    await apply_event(
                        tx,
                        card,
                        CardEvent.TERMINATE,
                        now=now,
                        actor=actor,
                        rule="TERM-5",
                        detail="graduation",
                        card_returned=card_back,
                    )
                await self._end_holder(tx, student, reason="graduation", now=now, actor=actor)
                certificate = f"GC{local(now):%Y}-{student.id:06d}"
                await tx.insert(
                    "clearances",
                    {
                        "holder_id": student.id,
                        "college": college,
                        "class_name": class_name,
                        "certificate_no": certificate,
                        "card_returned": card_back,
                        "receipt_no": receipt_no,
                        "at": now,
                        "actor": actor.name,
                    },
                )
                report.cleared.append((number, certificate))
            stray = returned - roster_serials
            if stray:
                raise RuleViolation(
                    f"交回的卡不属于本班：{', '.join(sorted(stray))}",
                    f"returned cards not on this class's roster: {', '.join(sorted(stray))}",
                    code=ErrorCode.INVALID_INPUT,
                    rule="TERM-5",
                )
        return report

    # --- scrapping (SCR) ----------------------------------------------------------------------
    async def scrap(self, actor: Actor, serial: str) -> Card:
        """SCR-1/2: cards the center has back, recovered by refund, termination or data-change
        exchange (and temp cards handed in, ISS-4; lost cards found and handed in), enter the
        scrap register one to one; a card still out (lost, or ended while the holder keeps it)
        is refused. Faulty cards go back to the vendor under warranty instead (EXC-6)."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            reason = card.state.value
            card = await apply_event(tx, card, CardEvent.SCRAP, now=now, actor=actor)
            await tx.insert(
                "scrap_register",
                {
                    "card_id": card.id,
                    "serial": card.serial,
                    "card_kind": card.kind.value,
                    "reason": reason,
                    "at": now,
                    "actor": actor.name,
                },
            )
            return card

    async def hand_in(self, actor: Actor, serial: str) -> Card:
        """SCR-1: a card still out after its procedure is brought to the counter (a lost card
        found after the replacement, an auto-terminated temp card, an exchanged card): the center
        has it now, and it may go to the scrap register."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            card = await tx.card_by_serial(serial)
            return await record_hand_in(tx, card, now=now, actor=actor, rule="SCR-1")

    async def dispose(self, actor: Actor, year: int) -> int:
        """SCR-2: the yearly disposal of everything on the scrap register not yet disposed."""
        actor.require(Permission.CARD_HANDLING)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            if await tx.find("disposals", year=year):
                raise RuleViolation(
                    f"{year} 年已处置",
                    f"the {year} disposal was done already",
                    code=ErrorCode.DUPLICATE,
                    rule="SCR-2",
                )
            previous = await tx.find("disposals", order_by="id")
            after_id = max((int(d["last_scrap_id"]) for d in previous), default=0)
            rows = [
                r for r in await tx.find("scrap_register", order_by="id") if int(r["id"]) > after_id
            ]
            if not rows:
                raise RuleViolation(
                    "报废登记表中没有待处置的卡",
                    "nothing on the scrap register to dispose of",
                    code=ErrorCode.NOT_FOUND,
                    rule="SCR-2",
                )
            await tx.insert(
                "disposals",
                {
                    "year": year,
                    "at": now,
                    "actor": actor.name,
                    "first_scrap_id": rows[0]["id"],
                    "last_scrap_id": rows[-1]["id"],
                    "count": len(rows),
                },
            )
            await tx.audit(
                now, actor.name, "scrap.dispose", "disposal", year, None, {"count": len(rows)}
            )
            return len(rows)


async def _check_deposit_receipt(tx: Tx, holder: Holder, receipt_no: int | None) -> None:
    """REF-3 "检查收费原始凭证": the receipt shown is the holder's deposit receipt (ISS-10)."""
    deposits = {
        int(r["receipt_no"])
        for r in await tx.find("receipts", holder_id=holder.id)
        if str(r["item"]).endswith(f"/ {FeeItem.DEPOSIT.value}")
    }
    if not deposits:
        return  # no deposit was taken (a waived deposit): nothing to show
    if receipt_no is None:
        raise RuleViolation(
            "退卡须交回押金收费票据（原始凭证），请输入票据号",
            "a refund needs the original deposit receipt: give its number",
            code=ErrorCode.INVALID_INPUT,
            rule="REF-3",
        )
    if receipt_no not in deposits:
        raise RuleViolation(
            f"票据号 {receipt_no} 不是该持卡人的押金收费票据",
            f"receipt No. {receipt_no} is not this holder's deposit receipt",
            code=ErrorCode.INVALID_INPUT,
            rule="REF-3",
        )


async def _successor_rule(tx: Tx, card: Card) -> str | None:
    """REP-4 for a replacement, EXC-5 for an exchanged card, None for a first card (ISS)."""
    if card.replaces_card_id is None:
        return None
    issued = await tx.find("card_events", card_id=card.id, event="issue", limit=1)
    return "REP-4" if issued and issued[0]["rule"] == "REP-4" else "EXC-5"


def _collector(
    holder: Holder,
    presented_id: str | None,
    collector_name: str | None,
    signed: bool,
    rule: str,
    *,
    strict: bool,
) -> tuple[str, str | None, bool]:
    """Who collects the card: (name, document number shown, whether it is the holder).

    ``strict`` (REP-4 / EXC-5, "签字领取"): an ID is shown and the register signed; someone
    other than the holder gives a name too. Otherwise the holder is taken to collect.
    """
    doc = (presented_id or "").strip() or None
    own = {x.upper() for x in (holder.national_id, holder.number) if x}
    is_holder = doc is None or doc.upper() in own
    name = (collector_name or "").strip()
    if strict:
        if doc is None:
            raise RuleViolation(
                "领卡人须出示有效证件（身份证号或学号/工号）",
                "the person collecting shows a valid ID: give its number",
                code=ErrorCode.AUTH_FAILED,
                rule=rule,
            )
        if not signed:
            raise RuleViolation(
                "领卡人须在领卡登记上签字",
                "the person collecting signs the collection register",
                code=ErrorCode.INVALID_INPUT,
                rule=rule,
            )
        if not is_holder and not name:
            raise RuleViolation(
                "证件不是持卡人本人的：代领须登记代领人姓名",
                "the ID shown is not the holder's: give the name of the person collecting",
                code=ErrorCode.INVALID_INPUT,
                rule=rule,
            )
    if is_holder and name and name != holder.name:
        raise RuleViolation(
            "证件号是持卡人本人的，姓名却不是",
            "the ID shown is the holder's but the name given is not",
            code=ErrorCode.INVALID_INPUT,
            rule=rule,
        )
    return (holder.name if is_holder else name or "—"), doc, is_holder


def _names_card(typed: str, card: Card) -> bool:
    """Whether what the clerk typed (serial, or UID in any case/with separators) is ``card``."""
    value = typed.strip()
    return value == card.serial or (card.uid is not None and canonical_card_uid(value) == card.uid)


async def _free_uid(tx: Tx, uid: str, card: Card) -> str:
    """The canonical form of a UID read at the print check, refused if another card has it."""
    canonical = normalise_card_uid(uid)
    other = await tx.card_by_uid(canonical)
    if other is not None and other.id != card.id:
        raise Duplicate(
            "该卡片物理号(UID)已登记在另一张卡上", "this card UID is already registered"
        )
    return canonical
