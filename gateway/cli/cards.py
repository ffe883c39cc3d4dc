"""``onecard card ...`` and ``onecard graduate``: card procedures at the counter (ISS, LOSS,
REP, EXC, REF, TERM, SCR)."""

from __future__ import annotations

import click

from gateway.cli.common import (
    ID_DOC,
    OLD_CARD_RETURNED,
    card_line,
    emit_card,
    emit_owned,
    holder_ref,
    parse_day,
    pass_opts,
    run_card,
    split_list,
)
from gateway.cli.runtime import (
    Options,
    emit,
    emit_table,
    run_as,
)
from gateway.services.base import Actor
from gateway.services.center import CardCenter
from protocol.cards.fees import yuan
from protocol.types import CardKind
from storage.records import Card


@click.group()
def card() -> None:
    """Card procedures at the counter (ISS, LOSS, REP, EXC, REF, TERM, SCR)."""


@card.command("issue-temp")
@click.argument("holder")
@click.option("--uid")
@click.option("--valid-through")
@click.option("--proof", "proof_ref", help="ISS-6 written proof for staff without a number")
@pass_opts
def card_issue_temp(
    opts: Options, holder: str, uid: str | None, valid_through: str | None, proof_ref: str | None
) -> None:
    """Issue a temp CPU card (ISS-1 students, ISS-6 staff, ISS-10 others with deposit)."""
    until = parse_day(valid_through) if valid_through else None
    r = run_card(
        opts,
        lambda c, a: c.cards.issue_temp(
            a, holder_ref(holder), uid=uid, valid_through=until, proof_ref=proof_ref
        ),
    )
    emit_card(opts, r)


@card.command("order-smart")
@click.argument("holder")
@pass_opts
def card_order_smart(opts: Options, holder: str) -> None:
    """ISS-2: put a smart card into the vendor's print batch."""
    emit_card(opts, run_card(opts, lambda c, a: c.cards.order_smart(a, holder_ref(holder))))


@card.command("check-printed")
@click.argument("serial")
@click.option("--pass/--fail", "passed", required=True)
@click.option("--uid")
@pass_opts
def card_check_printed(opts: Options, serial: str, passed: bool, uid: str | None) -> None:
    """ISS-3: printed card checked (print, swipe, RFID)."""
    emit_card(
        opts, run_card(opts, lambda c, a: c.cards.check_printed(a, serial, passed=passed, uid=uid))
    )


@card.command("hand-over")
@click.argument("serial")
@click.option(
    "--temp-returned",
    "returned_temp_serial",
    help="ISS-4: 交回的临时卡（卡号或UID） / the temp card handed in (serial or UID)",
)
@click.option("--temp-lost", is_flag=True, help="ISS-4: the temp card is lost; collect the fee")
@click.option(
    "--receipt",
    "receipt_no",
    type=int,
    help="REP-4: 补卡费收费票据号 / receipt number of the replacement fee",
)
@click.option(
    "--old-card",
    "returned_card",
    help="EXC-5: 交回的原卡（卡号或UID） / the original card handed back (serial or UID)",
)
@click.option(
    "--collector",
    "collector_name",
    help="代领人姓名（证件不是持卡人本人的） / name of the person collecting, if not the holder",
)
@click.option(
    "--signed", is_flag=True, help="领卡人已签字 / the person collecting signed the register"
)
@click.option(
    "--id-doc",
    "presented_id",
    help="领卡人证件号（身份证号或学号/工号） / ID number shown by the person collecting",
)
@pass_opts
def card_hand_over(
    opts: Options,
    serial: str,
    returned_temp_serial: str | None,
    temp_lost: bool,
    receipt_no: int | None,
    returned_card: str | None,
    collector_name: str | None,
    signed: bool,
    presented_id: str | None,
) -> None:
    """ISS-4/ISS-7/REP-4/EXC-5: 发放待领取的卡并登记领卡人 / hand a ready card over and record
    who collected it.

    \b
    补办的智能卡凭补卡费票据、换卡的智能卡凭原卡，领卡人出示证件并签字领取：
    a replacement smart card is collected against the fee receipt, an exchanged one against the
    original card; the person collecting shows an ID and signs:
      onecard card hand-over 1000000000 --receipt 1000001 --id-doc 2026000001 --signed
      onecard card hand-over 1000000001 --old-card 1000000000 --id-doc 2026000002 --signed
    """
    r = run_card(
        opts,
        lambda c, a: c.cards.hand_over(
            a,
            serial,
            returned_temp_serial=returned_temp_serial,
            temp_card_lost=temp_lost,
            presented_id=presented_id,
            receipt_no=receipt_no,
            returned_card=returned_card,
            collector_name=collector_name,
            signed=signed,
        ),
    )
    emit_card(opts, r)


@card.command("loss")
@click.argument("serial")
@ID_DOC
@pass_opts
def card_loss(opts: Options, serial: str, presented_id: str | None) -> None:
    """LOSS-1/2: report a card lost; refused everywhere at once."""
    emit_card(
        opts, run_card(opts, lambda c, a: c.cards.report_loss(a, serial, presented_id=presented_id))
    )


@card.command("unlock")
@click.argument("serial")
@ID_DOC
@pass_opts
def card_unlock(opts: Options, serial: str, presented_id: str | None) -> None:
    """LOSS-3: lift a loss report (counter only, valid ID)."""
    emit_card(
        opts, run_card(opts, lambda c, a: c.cards.unlock(a, serial, presented_id=presented_id))
    )


@card.command("replace")
@click.argument("serial")
@click.option("--kind", type=click.Choice([k.value for k in CardKind]))
@click.option("--uid")
@ID_DOC
@pass_opts
def card_replace(
    opts: Options, serial: str, kind: str | None, uid: str | None, presented_id: str | None
) -> None:
    """REP-1..5: replace a lost card (48 h after the loss report)."""
    k = CardKind(kind) if kind else None
    emit_card(
        opts,
        run_card(
            opts,
            lambda c, a: c.cards.replace(a, serial, presented_id=presented_id, kind=k, uid=uid),
        ),
    )


@card.command("fault")
@click.argument("serial")
@click.option(
    "--finding",
    required=True,
    help="EXC-3: 检查结果（故障现象） / the finding of the card check",
)
@click.option(
    "--holder-damaged",
    is_flag=True,
    help="人为损坏：按补卡收费办理 / damaged by the holder: goes the paid route (REP)",
)
@click.option("--repairable", is_flag=True, help="可以修复：不换卡 / can be repaired: no exchange")
@ID_DOC
@pass_opts
def card_fault(
    opts: Options,
    serial: str,
    finding: str,
    holder_damaged: bool,
    repairable: bool,
    presented_id: str | None,
) -> None:
    """EXC-3: 故障卡登记，余额冻结48小时 / a faulty card: balance frozen for 48 hours.

    Only a fault the holder did not cause and that cannot be repaired is accepted; the finding
    is recorded either way.
    """
    emit_card(
        opts,
        run_card(
            opts,
            lambda c, a: c.cards.report_fault(
                a,
                serial,
                presented_id=presented_id,
                finding=finding,
                holder_damaged=holder_damaged,
                repairable=repairable,
            ),
        ),
    )


@card.command("exchange")
@click.argument("serial")
@click.option("--kind", type=click.Choice([k.value for k in CardKind]))
@click.option("--uid")
@OLD_CARD_RETURNED
@pass_opts
def card_exchange(
    opts: Options, serial: str, kind: str | None, uid: str | None, old_card_returned: bool
) -> None:
    """EXC-3/5: complete a faulty-card exchange after the 48 h freeze."""
    k = CardKind(kind) if kind else None
    emit_card(
        opts,
        run_card(
            opts,
            lambda c, a: c.cards.complete_faulty_exchange(
                a, serial, kind=k, uid=uid, old_card_returned=old_card_returned
            ),
        ),
    )


@card.command("exchange-data")
@click.argument("serial")
@click.option(
    "--document",
    "document_ref",
    required=True,
    help="HR / organisation / academic affairs document",
)
@click.option("--set", "pairs", multiple=True, required=True, help="field=value")
@click.option("--kind", type=click.Choice([k.value for k in CardKind]))
@OLD_CARD_RETURNED
@ID_DOC
@pass_opts
def card_exchange_data(
    opts: Options,
    serial: str,
    document_ref: str,
    pairs: tuple[str, ...],
    kind: str | None,
    old_card_returned: bool,
    presented_id: str | None,
) -> None:
    """EXC-4: holder data changed: update the record and exchange at once."""
    changes = dict(p.split("=", 1) for p in pairs)
    k = CardKind(kind) if kind else None
    emit_card(
        opts,
        run_card(
            opts,
            lambda c, a: c.cards.exchange_for_changed_data(
                a,
                serial,
                presented_id=presented_id,
                document_ref=document_ref,
                changes=changes,
                kind=k,
                old_card_returned=old_card_returned,
            ),
        ),
    )


@card.command("extend")
@click.argument("serial")
@click.option("--through", "valid_through", required=True)
@pass_opts
def card_extend(opts: Options, serial: str, valid_through: str) -> None:
    """TERM-2/3: extend a temp card (within 3 months of expiry)."""
    emit_card(
        opts,
        run_card(
            opts, lambda c, a: c.cards.extend(a, serial, valid_through=parse_day(valid_through))
        ),
    )


@card.command("refund")
@click.argument("serial")
@click.option("--damaged", is_flag=True, help="REF-3: the card failed the check; no deposit refund")
@click.option(
    "--receipt",
    "receipt_no",
    type=int,
    help="REF-3: 押金收费票据号（原始凭证） / number of the original deposit receipt",
)
@ID_DOC
@pass_opts
def card_refund(
    opts: Options, serial: str, damaged: bool, receipt_no: int | None, presented_id: str | None
) -> None:
    """REF-1..4: a temp card comes back with the deposit receipt; refund slip for finance.

    \b
    例 example: onecard card refund 2000000003 --receipt 1000003 --id-doc 11010519491231002X
    """
    slip, owner = run_card(
        opts,
        lambda c, a: c.cards.refund(
            a, serial, card_ok=not damaged, presented_id=presented_id, receipt_no=receipt_no
        ),
    )
    text = card_line(slip.card) + (
        f"\n押金退款单 deposit refund slip No.{slip.slip_no}: {yuan(slip.amount)} 元"
        if slip.amount
        else "\n押金不予退还 deposit not refunded (damaged card)"
    )
    emit_owned(opts, slip, owner, text)


@card.command("terminate")
@click.argument("serial")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(
        [
            "graduation",
            "dropout",
            "suspension",
            "transfer",
            "resignation",
            "dismissal",
            "expiry",
            "other",
        ]
    ),
)
@ID_DOC
@pass_opts
def card_terminate(opts: Options, serial: str, reason: str, presented_id: str | None) -> None:
    """TERM-1/4/6: end card function everywhere and deregister the holder."""
    emit_card(
        opts,
        run_card(
            opts,
            lambda c, a: c.cards.terminate(a, serial, reason=reason, presented_id=presented_id),
        ),
    )


@card.command("scrap")
@click.argument("serial")
@pass_opts
def card_scrap(opts: Options, serial: str) -> None:
    """SCR-1: enter a recovered card in the scrap register."""
    emit_card(opts, run_card(opts, lambda c, a: c.cards.scrap(a, serial)))


@card.command("hand-in")
@click.argument("serial")
@pass_opts
def card_hand_in(opts: Options, serial: str) -> None:
    """SCR-1: 登记交回中心的卡（补卡后找回的挂失卡、自动终止的临时卡等） / record a card brought
    back after its procedure (a found lost card after the replacement, an auto-terminated temp
    card, an exchanged card); it may then be scrapped."""
    emit_card(opts, run_card(opts, lambda c, a: c.cards.hand_in(a, serial)))


@card.command("dispose")
@click.argument("year", type=int)
@pass_opts
def card_dispose(opts: Options, year: int) -> None:
    """SCR-2: the yearly disposal of the scrap register."""
    n = run_as(opts, lambda c, a: c.cards.dispose(a, year))
    emit(opts, {"disposed": n}, f"{year} 年处置 disposed {n} 张 cards")


@card.command("show")
@click.argument("serial")
@pass_opts
def card_show(opts: Options, serial: str) -> None:
    async def body(c: CardCenter, _a: Actor) -> Card:
        async with c.ctx.registry.read() as tx:
            return await tx.card_by_serial(serial)

    emit_card(opts, run_card(opts, body))


@click.command("graduate")
@click.option("--college", required=True)
@click.option("--class", "class_name", required=True)
@click.option("--returned", default="", help="comma-separated serials handed back by the monitor")
@click.option(
    "--missing-paid", default="", help="comma-separated student numbers who pay for a missing card"
)
@pass_opts
def graduate(
    opts: Options, college: str, class_name: str, returned: str, missing_paid: str
) -> None:
    """TERM-5: graduate a class and issue clearance certificates."""
    report = run_as(
        opts,
        lambda c, a: c.cards.graduate_class(
            a,
            college=college,
            class_name=class_name,
            returned_serials=split_list(returned),
            missing_paid=split_list(missing_paid),
        ),
    )
    if opts.json:
        emit(opts, report)
        return
    emit_table(
        opts,
        f"离校清卡 / clearance {college} {class_name}",
        ["学号 / number", "离校证明 / certificate"],
        report.cleared,
    )
    if report.blocked:
        emit_table(opts, "未能办理 / blocked", ["学号 / number", "原因 / reason"], report.blocked)
    print(f"交回 returned {report.returned}，缴费 paid for missing {report.missing_paid}")
