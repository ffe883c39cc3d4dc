"""The console's forms for the remaining counter procedures (issue 11): faulty-card report and
exchange (EXC-3/5), data-change exchange (EXC-4), refund with the deposit receipt and its slip
(REF), termination (TERM), hand-over against the receipt or the original card (REP-4/EXC-5) and
scrapping a card in custody (SCR-1), a temp card's extension (TERM-2/3), a card handed back in
(SCR-1 custody), the yearly scrap disposal (SCR-2) and a temp card's issuance (ISS-1/6/10).

Each GET shows whose card it is and what will happen (fee, money moved, the time guard) before
the clerk confirms; each POST calls the same service the CLI calls (gateway/cli/cards.py) with
the operator's Actor, once per rendered form. The services check permissions and rules; the
page only hides what the clerk cannot do. A refusal is the console's error page (zh + en, rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from gateway.web.console.forms import BadRequest, form_text, optional_int
from protocol.cards.clock import FAULTY_FREEZE, fmt_local, local
from protocol.cards.fees import FeeItem, yuan
from protocol.cards.identity import mask_card
from protocol.cards.lifecycle import faulty_release_at
from protocol.ledger.postings import deposit, hold, purse
from protocol.types import CardKind, CardState, HolderKind, Permission

if TYPE_CHECKING:
    from gateway.services.base import Actor
    from gateway.web.console.app import Console
    from storage.records import Card, Holder

#: TERM reasons as the CLI offers them (gateway/cli/cards.py), zh first.
TERM_REASONS = [
    ("graduation", "毕业"),
    ("dropout", "退学"),
    ("suspension", "休学"),
    ("transfer", "转学"),
    ("resignation", "辞职"),
    ("dismissal", "辞退"),
    ("expiry", "到期"),
    ("other", "其他"),
]
#: EXC-4: the holder fields a change document may change (CardService allows these).
DATA_FIELDS = [
    ("name", "姓名"),
    ("college", "学院"),
    ("class_name", "班级"),
    ("department", "部门"),
    ("number", "学号/工号"),
    ("photo_ref", "照片"),
]
KINDS = [(CardKind.SMART.value, "智能卡"), (CardKind.TEMP.value, "临时卡")]
ENDED_STATES = frozenset(
    {
        CardState.REPLACED,
        CardState.EXCHANGED,
        CardState.RECOVERED,
        CardState.REFUNDED,
        CardState.TERMINATED,
    }
)


@dataclass(frozen=True, slots=True)
class Field:
    """One input of a procedure form."""

    name: str
    zh: str
    en: str
    kind: str = "text"  # text, textarea, checkbox, select
    required: bool = False
    options: tuple[tuple[str, str], ...] = ()
    value: str = ""


ID_FIELD = Field(
    "presented_id", "核验证件号（本人有效证件）", "ID presented (checked)", required=True
)


class CounterForms:
    def __init__(self, console: Console) -> None:
        self.c = console

    async def _open(self, request: Request) -> tuple[Actor, Card, Holder]:
        """The operator (with card handling, ACC-1) and the card of the URL with its holder."""
        actor = self.c.me(request)
        actor.require(Permission.CARD_HANDLING)
        card, holder = await self.c._card_and_holder(str(request.path_params["serial"]))
        return actor, card, holder

    def _page(
        self,
        request: Request,
        *,
        card: Card | None,
        holder: Holder | None,
        rule: str,
        title: tuple[str, str],
        facts: list[tuple[str, str, str, str]],
        notes: list[tuple[str, str]],
        fields: list[Field],
        button: tuple[str, str],
        guard: tuple[str, str] | None = None,
    ) -> Response:
        return self.c.render(
            request,
            "console_procedure.html",
            card=card,
            holder=holder,
            rule=rule,
            title=title,
            facts=facts,
            notes=notes,
            fields=fields,
            button=button,
            guard=guard,
        )

    async def _balances(self, holder_id: int) -> tuple[int, int, int]:
        """(purse, frozen, deposit) in fen."""
        async with self.c.services.center.ctx.registry.read() as tx:
            return (
                await tx.balance(purse(holder_id)),
                await tx.balance(hold(holder_id)),
                await tx.balance(deposit(holder_id)),
            )

    # --- EXC-3: a faulty card -------------------------------------------------------------
    async def fault(self, request: Request, form: FormData | None) -> Response:
        actor, card, holder = await self._open(request)
        center = self.c.services.center
        if form is None:
            balance, _, _ = await self._balances(holder.id)
            release = center.ctx.clock.now() + FAULTY_FREEZE
            return self._page(
                request,
                card=card,
                holder=holder,
                rule="EXC-3",
                title=("故障卡登记", "Faulty card"),
                facts=[
                    ("冻结余额", "Balance to freeze", f"¥{yuan(balance)}", "frozen-amount"),
                    ("可换卡时间", "Exchange possible from", _when(release), "release-at"),
                ],
                notes=[
                    (
                        "只受理非人为损坏且不能修复的故障：余额冻结 48 小时后换卡，转到新卡。"
                        "检查结果都会记录。",
                        "only a fault the holder did not cause and that cannot be repaired: the "
                        "balance is frozen 48 h, then moves to the new card. The finding is "
                        "recorded either way.",
                    )
                ],
                fields=[
                    Field("finding", "检查结果（故障现象）", "Finding", "textarea", True),
                    Field(
                        "holder_damaged",
                        "人为损坏（按补卡收费办理）",
                        "Damaged by the holder",
                        "checkbox",
                    ),
                    Field(
                        "repairable", "可以修复（不换卡）", "Repairable (no exchange)", "checkbox"
                    ),
                    ID_FIELD,
                ],
                button=("登记故障并冻结余额", "Record the fault and freeze"),
            )

        async def act() -> str:
            await center.cards.report_fault(
                actor,
                card.serial,
                presented_id=form_text(form, "presented_id") or None,
                finding=form_text(form, "finding")[:500],
                holder_damaged=form_text(form, "holder_damaged") == "1",
                repairable=form_text(form, "repairable") == "1",
            )
            return _done(
                request,
                holder.id,
                f"卡片 {mask_card(card.serial)} 已登记故障，余额冻结 48 小时 (EXC-3)",
                "faulty card recorded: balance frozen for 48 hours (EXC-3)",
            )

        return await self.c._once(request, form, act)

    # --- EXC-5: the exchange after the freeze ---------------------------------------------
    async def exchange(self, request: Request, form: FormData | None) -> Response:
        actor, card, holder = await self._open(request)
        center = self.c.services.center
        if form is None:
            _, frozen, _ = await self._balances(holder.id)
            release = faulty_release_at(card.facts)
            fee = (
                center.ctx.fees.amount(FeeItem.EXCHANGE) if holder.kind is HolderKind.STUDENT else 0
            )
            early = release is None or center.ctx.clock.now() < release
            return self._page(
                request,
                card=card,
                holder=holder,
                rule="EXC-3/5",
                title=("故障卡换卡", "Faulty-card exchange"),
                facts=[
                    ("可换卡时间", "Possible from", _when(release), "possible-from"),
                    ("换卡工本费", "Exchange fee", f"¥{yuan(fee)}", "fee"),
                    (
                        "转入新卡的余额",
                        "Balance moved to the new card",
                        f"¥{yuan(frozen)}",
                        "moved",
                    ),
                ],
                guard=(
                    f"故障卡余额冻结48小时后方可换卡，可换卡时间：{_when(release)}",
                    f"the balance stays frozen 48 h: exchange possible from {_when(release)}",
                )
                if early
                else None,
                notes=[
                    (
                        "故障卡交回中心（新临时卡当即交回；新智能卡可在领卡时交回）(EXC-5)。",
                        "the faulty card comes back to the center (now for a new temp card; "
                        "for a smart card now or at collection).",
                    )
                ],
                fields=[
                    Field(
                        "kind",
                        "新卡类型",
                        "New card kind",
                        "select",
                        options=tuple(KINDS),
                        value=card.kind.value,
                    ),
                    Field("old_card_returned", "原卡已交回", "Old card handed back", "checkbox"),
                ],
                button=(f"收费 ¥{yuan(fee)} 并换卡", "Collect the fee and exchange"),
            )

        async def act() -> str:
            result = await center.cards.complete_faulty_exchange(
                actor,
                card.serial,
                kind=_kind(form),
                old_card_returned=form_text(form, "old_card_returned") == "1",
            )
            return _after(request, result, holder.id, "已换卡", "exchanged")

        return await self.c._once(request, form, act)

    # --- EXC-4: holder data changed -------------------------------------------------------
    async def exchange_data(self, request: Request, form: FormData | None) -> Response:
        actor, card, holder = await self._open(request)
        center = self.c.services.center
        fee = center.ctx.fees.amount(FeeItem.EXCHANGE) if holder.kind is HolderKind.STUDENT else 0
        if form is None:
            balance, _, _ = await self._balances(holder.id)
            return self._page(
                request,
                card=card,
                holder=holder,
                rule="EXC-4",
                title=("资料变更换卡", "Data change exchange"),
                facts=[
                    ("换卡工本费", "Exchange fee", f"¥{yuan(fee)}", "fee"),
                    (
                        "余额（随持卡人转到新卡）",
                        "Balance (follows the holder)",
                        f"¥{yuan(balance)}",
                        "moved",
                    ),
                ],
                notes=[
                    (
                        "凭人事处、组织部或教务处的变更文件更新资料并同时换卡；原卡交回后方可领取新卡。",
                        "the official document changes the record and the card is exchanged at "
                        "once; the old card comes back before the new one is collected.",
                    )
                ],
                fields=[
                    Field("document_ref", "变更文件编号", "Change document", required=True),
                    Field("field", "变更项目", "Field", "select", options=tuple(DATA_FIELDS)),
                    Field("value", "新值", "New value", required=True),
                    Field(
                        "kind",
                        "新卡类型",
                        "New card kind",
                        "select",
                        options=tuple(KINDS),
                        value=card.kind.value,
                    ),
                    Field("old_card_returned", "原卡已交回", "Old card handed back", "checkbox"),
                    ID_FIELD,
                ],
                button=(f"收费 ¥{yuan(fee)}，更新资料并换卡", "Collect, update and exchange"),
            )
        field = form_text(form, "field")
        if field not in dict(DATA_FIELDS):
            raise BadRequest("变更项目有误", "unknown field")

        async def act() -> str:
            result = await center.cards.exchange_for_changed_data(
                actor,
                card.serial,
                presented_id=form_text(form, "presented_id") or None,
                document_ref=form_text(form, "document_ref")[:128],
                changes={field: form_text(form, "value")[:128]},
                kind=_kind(form),
                old_card_returned=form_text(form, "old_card_returned") == "1",
            )
            return _after(request, result, holder.id, "资料已更新并换卡", "updated and exchanged")

        return await self.c._once(request, form, act)

    # --- REF: refund of a temp card ------------------------------------------------------
    async def refund(self, request: Request, form: FormData | None) -> Response:
        actor, card, holder = await self._open(request)
        center = self.c.services.center
        if form is None:
            balance, _, held = await self._balances(holder.id)
            return self._page(
                request,
                card=card,
                holder=holder,
                rule="REF-1..4",
                title=("退卡退押金", "Refund"),
                facts=[
                    ("退还押金", "Deposit refunded", f"¥{yuan(held)}", "deposit"),
                    (
                        "卡内余额（须先结清）",
                        "Balance (settled first)",
                        f"¥{yuan(balance)}",
                        "balance",
                    ),
                ],
                guard=(
                    f"卡内余额 ¥{yuan(balance)} 须先结清 (REF-2)",
                    f"the balance ¥{yuan(balance)} must be settled first (REF-2)",
                )
                if balance
                else None,
                notes=[
                    (
                        "凭押金收据（原始凭证）退押金；卡片检验不合格不退押金。出具押金退款单交财务，"
                        "持卡人资料存档后注销。",
                        "the deposit comes back against its original receipt (a damaged card "
                        "forfeits it); the refund slip goes to finance; the holder is archived "
                        "and deregistered.",
                    )
                ],
                fields=[
                    Field("receipt_no", "押金收据号", "Deposit receipt No."),
                    Field(
                        "damaged", "卡片检验不合格（不退押金）", "Card failed the check", "checkbox"
                    ),
                    ID_FIELD,
                ],
                button=(f"退卡并退押金 ¥{yuan(held)}", "Take the card back and refund"),
            )
        receipt_no = optional_int(form, "receipt_no", "押金收据号", "the receipt number")

        async def act() -> str:
            slip = await center.cards.refund(
                actor,
                card.serial,
                card_ok=form_text(form, "damaged") != "1",
                presented_id=form_text(form, "presented_id") or None,
                receipt_no=receipt_no,
            )
            if slip.slip_no:
                slips = request.state.session.stash.setdefault("refund_receipts", {})
                slips[slip.slip_no] = slip.deposit_receipt_no
                return f"/refund-slips/{slip.slip_no}?new=1"
            return _done(
                request,
                holder.id,
                "已退卡，押金不予退还（卡片损坏）",
                "refunded: deposit forfeited (damaged)",
            )

        return await self.c._once(request, form, act)

    async def refund_slip(self, request: Request, _form: None) -> Response:
        """REF-3's deposit refund slip, printable on A5 or an 80 mm roll like the receipts."""
        actor = self.c.me(request)
        slip_no = int(request.path_params["slip_no"])
        slip, at, cashier = await self.c.services.views.refund_slip(actor, slip_no)
        shown = request.state.session.stash.get("refund_receipts", {}).get(slip_no)
        fmt = "a5" if request.query_params.get("paper") == "a5" else "80mm"
        return self.c.render(
            request,
            "console_refund_slip.html",
            s=slip,
            at=at,
            cashier=cashier,
            deposit_receipt_no=shown or slip.deposit_receipt_no,
            paper=fmt,
        )

    # --- TERM ---------------------------------------------------------------------------
    async def terminate(self, request: Request, form: FormData | None) -> Response:
        actor, card, holder = await self._open(request)
        center = self.c.services.center
        if form is None:
            balance, frozen, _ = await self._balances(holder.id)
            owed = balance + frozen
            return self._page(
                request,
                card=card,
                holder=holder,
                rule="TERM-1/4/6",
                title=("终止卡片", "Termination"),
                facts=[
                    ("卡内余额（须先结清）", "Balance (settled first)", f"¥{yuan(owed)}", "balance")
                ],
                guard=(
                    f"卡内余额 ¥{yuan(owed)} 须先结清 (TERM-4)",
                    f"the balance ¥{yuan(owed)} must be settled first (TERM-4)",
                )
                if owed
                else None,
                notes=[
                    (
                        "卡片交回，所有终端立即拒绝该卡；持卡人资料存档后注销。",
                        "the card comes back and is refused at every terminal at once; the "
                        "holder's data is archived and the holder deregistered.",
                    )
                ],
                fields=[
                    Field("reason", "终止原因", "Reason", "select", options=tuple(TERM_REASONS)),
                    ID_FIELD,
                ],
                button=("确认终止", "Confirm termination"),
            )
        reason = form_text(form, "reason")
        if reason not in dict(TERM_REASONS):
            raise BadRequest("终止原因有误", "unknown reason")

        async def act() -> str:
            await center.cards.terminate(
                actor,
                card.serial,
                reason=reason,
                presented_id=form_text(form, "presented_id") or None,
            )
            return _done(
                request,
                holder.id,
                f"卡片 {mask_card(card.serial)} 已终止，持卡人已注销",
                "card terminated, holder deregistered",
            )

        return await self.c._once(request, form, act)

    # --- REP-4 / EXC-5 / ISS: hand a ready card over --------------------------------------
    async def hand_over(self, request: Request, form: FormData | None) -> Response:
        actor, card, holder = await self._open(request)
        center = self.c.services.center
        if form is None:
            previous = None
            if card.replaces_card_id is not None:
                async with center.ctx.registry.read() as tx:
                    previous = await tx.get_card(card.replaces_card_id)
            today = center.ctx.clock.now()
            early = card.ready_on is not None and _day(today) < card.ready_on
            return self._page(
                request,
                card=card,
                holder=holder,
                rule="REP-4/EXC-5",
                title=("领卡", "Hand-over"),
                facts=[
                    ("可领取日期", "Collect from", str(card.ready_on or "—"), "ready-on"),
                    (
                        "原卡",
                        "Original card",
                        previous.serial if previous is not None else "—",
                        "original",
                    ),
                ],
                guard=(
                    f"智能卡须两个工作日后领取，可领取日期：{card.ready_on}",
                    f"the smart card can be collected from {card.ready_on}",
                )
                if early
                else None,
                notes=[
                    (
                        "补办的卡凭补卡费收据领取 (REP-4)，换卡的卡凭原卡领取 (EXC-5)；"
                        "领卡人出示证件并签字，代领的登记代领人姓名。",
                        "a replacement is collected against the fee receipt (REP-4), an exchanged "
                        "card against the original card (EXC-5); the collector shows an ID and "
                        "signs; someone collecting for the holder is named.",
                    )
                ],
                fields=[
                    Field("receipt_no", "补卡费收据号 (REP-4)", "Fee receipt No. (REP-4)"),
                    Field(
                        "returned_card",
                        "交回的原卡（卡号或UID，EXC-5）",
                        "Original card handed back (EXC-5)",
                    ),
                    Field("returned_temp", "交回的临时卡（卡号或UID）", "Temp card handed in"),
                    Field(
                        "collector_name",
                        "代领人姓名（本人领取不填）",
                        "Collected by (if not the holder)",
                    ),
                    Field("presented_id", "领卡人证件号", "Collector's ID", required=True),
                    Field("signed", "领卡人已签字", "The collector signed", "checkbox"),
                ],
                button=("登记并发卡", "Record and hand over"),
            )
        receipt_no = optional_int(form, "receipt_no", "收据号", "the receipt number")

        async def act() -> str:
            await center.cards.hand_over(
                actor,
                card.serial,
                returned_temp_serial=form_text(form, "returned_temp")[:32] or None,
                presented_id=form_text(form, "presented_id") or None,
                receipt_no=receipt_no,
                returned_card=form_text(form, "returned_card")[:32] or None,
                collector_name=form_text(form, "collector_name")[:64] or None,
                signed=form_text(form, "signed") == "1",
            )
            return _done(
                request, holder.id, f"卡片 {mask_card(card.serial)} 已发放", "card handed over"
            )

        return await self.c._once(request, form, act)

    # --- SCR-1 ----------------------------------------------------------------------------
    async def scrap(self, request: Request, form: FormData | None) -> Response:
        actor, card, holder = await self._open(request)
        center = self.c.services.center
        if form is None:
            custody = "已收回中心 in custody" if card.in_custody else "未收回 still out"
            return self._page(
                request,
                card=card,
                holder=holder,
                rule="SCR-1",
                title=("报废登记", "Scrap"),
                facts=[("卡片保管", "Custody", custody, "custody")],
                guard=None
                if card.in_custody
                else (
                    "只有已收回中心的卡才能报废（挂失或持卡人仍持有的卡不能报废）",
                    "only a card the center has back can be scrapped",
                ),
                notes=[
                    (
                        "报废的卡一卡一登记，年底统一处置 (SCR-2)。",
                        "each scrapped card is entered in the register, disposed of yearly.",
                    )
                ],
                fields=[],
                button=("登记报废", "Enter in the scrap register"),
            )

        async def act() -> str:
            await center.cards.scrap(actor, card.serial)
            return _done(
                request,
                holder.id,
                f"卡片 {mask_card(card.serial)} 已登记报废",
                "card scrapped (SCR-1)",
            )

        return await self.c._once(request, form, act)

    # --- TERM-2/3: extend a temp card -----------------------------------------------------
    async def extend(self, request: Request, form: FormData | None) -> Response:
        actor, card, holder = await self._open(request)
        center = self.c.services.center
        if form is None:
            return self._page(
                request,
                card=card,
                holder=holder,
                rule="TERM-2/3",
                title=("临时卡延期", "Extend a temp card"),
                facts=[
                    ("现有效期至", "Valid through", _last_day(card.valid_until), "valid-until"),
                    ("费用", "Fee", "¥0.00", "fee"),
                ],
                notes=[
                    (
                        "到期前或到期后 3 个月内可延期；过期超过 3 个月的卡已自动终止 (TERM-3)。",
                        "a temp card is extended before it expires or within 3 months after; "
                        "past that it is terminated (TERM-3).",
                    )
                ],
                fields=[
                    Field(
                        "valid_through",
                        "延期至（YYYY-MM-DD）",
                        "Extend through (YYYY-MM-DD)",
                        required=True,
                    )
                ],
                button=("确认延期", "Confirm the extension"),
            )
        through = _day_field(form, "valid_through")

        async def act() -> str:
            await center.cards.extend(actor, card.serial, valid_through=through)
            return _done(
                request,
                holder.id,
                f"卡片 {mask_card(card.serial)} 已延期至 {through}",
                f"card extended through {through}",
            )

        return await self.c._once(request, form, act)

    # --- SCR-1: a card brought back to the center ----------------------------------------
    async def hand_in(self, request: Request, form: FormData | None) -> Response:
        actor, card, holder = await self._open(request)
        center = self.c.services.center
        if form is None:
            custody = "已收回中心 in custody" if card.in_custody else "未收回 still out"
            return self._page(
                request,
                card=card,
                holder=holder,
                rule="SCR-1",
                title=("卡片交回登记", "Card handed in"),
                facts=[
                    ("卡片保管", "Custody", custody, "custody"),
                    ("费用", "Fee", "¥0.00", "fee"),
                ],
                guard=(
                    "该卡片已在智能卡中心",
                    "the center has this card already",
                )
                if card.in_custody
                else None,
                notes=[
                    (
                        "已办结手续但仍在外的卡（补卡后找回的挂失卡、换卡或终止的卡）交回中心登记，之后可报废。",
                        "a card still out after its procedure (a found lost card after the "
                        "replacement, an exchanged or terminated card) is recorded as back; it "
                        "may then be scrapped.",
                    )
                ],
                fields=[],
                button=("登记交回", "Record the hand-in"),
            )

        async def act() -> str:
            await center.cards.hand_in(actor, card.serial)
            return _done(
                request,
                holder.id,
                f"卡片 {mask_card(card.serial)} 已交回中心",
                "card handed in (SCR-1)",
            )

        return await self.c._once(request, form, act)

    # --- SCR-2: the yearly disposal -------------------------------------------------------
    async def dispose(self, request: Request, form: FormData | None) -> Response:
        actor = self.c.me(request)
        actor.require(Permission.CARD_HANDLING)
        center = self.c.services.center
        year = _day(center.ctx.clock.now()).year
        if form is None:
            return self._page(
                request,
                card=None,
                holder=None,
                rule="SCR-2",
                title=("报废卡年度处置", "Yearly scrap disposal"),
                facts=[("处置年度", "Year", str(year), "year")],
                notes=[
                    (
                        "报废登记表中尚未处置的卡全部按年度统一处置，每年一次。",
                        "everything on the scrap register not yet disposed of is disposed of "
                        "together, once a year.",
                    )
                ],
                fields=[Field("year", "处置年度", "Year", required=True, value=str(year))],
                button=("确认处置", "Confirm the disposal"),
            )
        chosen = optional_int(form, "year", "处置年度", "the year")
        if chosen is None or not 2000 <= chosen <= 2999:
            raise BadRequest("处置年度有误", "bad year")

        async def act() -> str:
            n = await center.cards.dispose(actor, chosen)
            request.state.session.flash(
                "ok", f"{chosen} 年已处置 {n} 张报废卡 (SCR-2)", f"{chosen}: {n} cards disposed of"
            )
            return "/reports?name=scrap"

        return await self.c._once(request, form, act)

    # --- ISS-1/6/10: a temp card for a holder without one ---------------------------------
    async def issue_temp(self, request: Request, form: FormData | None) -> Response:
        actor = self.c.me(request)
        actor.require(Permission.CARD_HANDLING)
        center = self.c.services.center
        async with center.ctx.registry.read() as tx:
            holder = await tx.get_holder(int(request.path_params["holder_id"]))
        if holder.kind is HolderKind.STUDENT:
            rule, fee = "ISS-1", 0
        elif holder.kind is HolderKind.STAFF:
            rule, fee = "ISS-6", 0
        else:
            rule, fee = "ISS-10", center.ctx.fees.deposit
        if form is None:
            return self._page(
                request,
                card=None,
                holder=holder,
                rule=rule,
                title=("发临时卡", "Issue a temp card"),
                facts=[
                    ("收取押金", "Deposit collected", f"¥{yuan(fee)}", "deposit"),
                    ("有效期至", "Valid through", _last_day(holder.valid_until), "valid-until"),
                ],
                notes=[
                    (
                        "学生免费 (ISS-1)；无工号教工凭部门书面证明 (ISS-6)；"
                        "其他人员交押金并开收据 (ISS-10/12)。持卡人已有在用卡片的不再发卡。",
                        "students free (ISS-1); staff without a number on written proof "
                        "(ISS-6); others pay a deposit against a receipt (ISS-10/12). No second "
                        "card in use.",
                    )
                ],
                fields=[
                    Field("uid", "卡片UID（读卡器读出）", "Card UID (from the reader)"),
                    Field("valid_through", "有效期至（YYYY-MM-DD，可不填）", "Valid through"),
                    Field("proof_ref", "书面证明编号 (ISS-6)", "Written proof (ISS-6)"),
                ],
                button=(f"收取 ¥{yuan(fee)} 并发卡", "Collect and issue"),
            )
        until = _day_field(form, "valid_through") if form_text(form, "valid_through") else None
        uid = form_text(form, "uid")[:32] or None

        async def act() -> str:
            result = await center.cards.issue_temp(
                actor,
                holder.id,
                uid=uid,
                valid_through=until,
                proof_ref=form_text(form, "proof_ref")[:128] or None,
            )
            return _after(request, result, holder.id, "已发临时卡", "temp card issued")

        return await self.c._once(request, form, act)


def _done(request: Request, holder_id: int, zh: str, en: str) -> str:
    """Done: say so on the holder's page."""
    request.state.session.flash("ok", zh, en)
    return f"/holders/{holder_id}"


def _kind(form: FormData) -> CardKind | None:
    text = form_text(form, "kind")
    if not text:
        return None
    if text not in {k.value for k in CardKind}:
        raise BadRequest("卡片类型有误", "unknown card kind")
    return CardKind(text)


def _after(request: Request, result: Any, holder_id: int, zh: str, en: str) -> str:
    """After an exchange: its receipt to print, or the holder page."""
    if result.receipts:
        return f"/receipts/{result.receipts[0].receipt_no}?new=1"
    serial = result.card.serial
    request.state.session.flash("ok", f"{zh}：新卡 {serial}", f"{en}: new card {serial}")
    return f"/holders/{holder_id}"


def _when(moment: datetime | None) -> str:
    return fmt_local(moment) if moment is not None else "—"


def _last_day(valid_until: datetime | None) -> str:
    """The last valid day: the end of validity is the campus midnight after it (TERM-2)."""
    if valid_until is None:
        return "—"
    return str(local(valid_until - timedelta(microseconds=1)).date())


def _day_field(form: FormData, name: str) -> date:
    try:
        return date.fromisoformat(form_text(form, name)[:10])
    except ValueError:
        raise BadRequest("日期格式应为 YYYY-MM-DD", "the date must be YYYY-MM-DD") from None


def _day(moment: datetime) -> date:
    return local(moment).date()
