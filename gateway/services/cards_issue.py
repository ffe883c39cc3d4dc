"""Issuing and handing over cards (ISS-1..12) and the collection of replacement and exchanged
smart cards (REP-4, EXC-5)."""

from __future__ import annotations

from datetime import date, datetime

from gateway.services.base import Actor
from gateway.services.cards_base import CardProcedures, CardResult, _names_card
from gateway.services.common import (
    LIVE_STATES,
    allocate_serials,
    apply_event,
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
from protocol.cards.clock import end_of_validity, local
from protocol.cards.fees import FeeItem
from protocol.cards.identity import IdDocType, validate_id_doc, work_number
from protocol.cards.lifecycle import CardEvent
from protocol.cards.policy import require_complete
from protocol.carduid import normalise_card_uid
from protocol.errors import Duplicate, ErrorCode, InvalidInput, OnecardError, RuleViolation
from protocol.ledger import deposit, deposit_in
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


class IssueProcedures(CardProcedures):
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


async def _free_uid(tx: Tx, uid: str, card: Card) -> str:
    """The canonical form of a UID read at the print check, refused if another card has it."""
    canonical = normalise_card_uid(uid)
    other = await tx.card_by_uid(canonical)
    if other is not None and other.id != card.id:
        raise Duplicate(
            "该卡片物理号(UID)已登记在另一张卡上", "this card UID is already registered"
        )
    return canonical
