"""``onecard card ...`` and ``onecard graduate``: card procedures at the counter (ISS, LOSS,
REP, EXC, REF, TERM, SCR)."""

from __future__ import annotations

import click

from gateway.cli.approvals import emit_graduation, refuse_pending
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
    run_as,
)
from gateway.services.base import Actor
from gateway.services.cards_base import GraduationReport
from gateway.services.center import CardCenter
from protocol.cards.fees import yuan
from protocol.types import CardKind
from storage.records import Card


@click.group()
def card() -> None:
    """柜台卡片业务 ISS、LOSS、REP、EXC、REF、TERM、SCR / card procedures at the counter."""


@card.command("issue-temp")
@click.argument("holder")
@click.option("--uid", help="卡片UID（读卡器读出的物理号） / card UID as the reader prints it")
@click.option("--valid-through", help="有效期至 YYYY-MM-DD / valid through YYYY-MM-DD")
@click.option(
    "--proof",
    "proof_ref",
    help=("ISS-6: 无工号教工的书面证明 / written proof for staff without a number"),
)
@pass_opts
def card_issue_temp(
    opts: Options, holder: str, uid: str | None, valid_through: str | None, proof_ref: str | None
) -> None:
    """发临时卡（ISS-1 学生、ISS-6 无工号教工凭证明、ISS-10 其他人员交押金） / issue a temp CPU
    card (ISS-1 students, ISS-6 staff without a number, ISS-10 others with a deposit).

    \b
    例 examples:
      onecard card issue-temp 2026000001
      onecard card issue-temp '#11' --uid 04A1B2C3D4E5F6
    """
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
    """ISS-2: 把持卡人的智能卡列入制卡批次 / put a smart card into the vendor's print batch.

    \b
    例 example:
      onecard card order-smart 2026000001
    """
    emit_card(opts, run_card(opts, lambda c, a: c.cards.order_smart(a, holder_ref(holder))))


@card.command("check-printed")
@click.argument("serial")
@click.option(
    "--pass/--fail",
    "passed",
    required=True,
    help="检验合格 --pass / 不合格 --fail / the check passed or failed",
)
@click.option("--uid", help="卡片UID / card UID")
@pass_opts
def card_check_printed(opts: Options, serial: str, passed: bool, uid: str | None) -> None:
    """ISS-3: 检验制好的卡（印刷、刷卡、射频） / a printed card checked (print, swipe, RFID).

    \b
    例 example:
      onecard card check-printed 1000000000 --pass --uid 04A1B2C3D4E5F6
    """
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
@click.option(
    "--temp-lost",
    is_flag=True,
    help=("ISS-4: 临时卡丢失，收工本费 / the temp card is lost; collect the fee"),
)
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
    original card; the person collecting shows an ID and signs.
    例 examples:
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
    """LOSS-1/2: 挂失，立即在所有终端拒绝 / report a card lost; refused everywhere at once.

    \b
    例 example:
      onecard card loss 2000000000 --id-doc 2026000001
    """
    emit_card(
        opts, run_card(opts, lambda c, a: c.cards.report_loss(a, serial, presented_id=presented_id))
    )


@card.command("unlock")
@click.argument("serial")
@ID_DOC
@pass_opts
def card_unlock(opts: Options, serial: str, presented_id: str | None) -> None:
    """LOSS-3: 解挂（只在柜台，凭有效证件） / lift a loss report (counter only, valid ID).

    \b
    例 example:
      onecard card unlock 2000000000 --id-doc 511502200703010107
    """
    emit_card(
        opts, run_card(opts, lambda c, a: c.cards.unlock(a, serial, presented_id=presented_id))
    )


@card.command("replace")
@click.argument("serial")
@click.option(
    "--kind",
    type=click.Choice([k.value for k in CardKind]),
    help="新卡类型：smart 智能卡 / temp 临时卡 / kind of the new card",
)
@click.option("--uid", help="新卡UID / the new card's UID")
@ID_DOC
@pass_opts
def card_replace(
    opts: Options, serial: str, kind: str | None, uid: str | None, presented_id: str | None
) -> None:
    """REP-1..5: 补办挂失的卡（挂失满 48 小时后；收补卡费） / replace a lost card (48 h after the
    loss report; fee).

    \b
    例 example:
      onecard card replace 2000000000 --id-doc 2026000001 --kind smart
    """
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

    只受理非人为损坏且不能修复的故障；检查结果都会记录。
    Only a fault the holder did not cause and that cannot be repaired is accepted; the finding
    is
    recorded either way.

    \b
    例 example:
      onecard card fault 2000000001 --id-doc 2026000002 --finding \\
          "芯片无响应，外观完好"
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
@click.option(
    "--kind",
    type=click.Choice([k.value for k in CardKind]),
    help="新卡类型：smart 智能卡 / temp 临时卡 / kind of the new card",
)
@click.option("--uid", help="新卡UID / the new card's UID")
@OLD_CARD_RETURNED
@pass_opts
def card_exchange(
    opts: Options, serial: str, kind: str | None, uid: str | None, old_card_returned: bool
) -> None:
    """EXC-3/5: 冻结 48 小时后完成故障卡换卡，余额转到新卡 / complete a faulty-card exchange after
    the 48 h freeze; the balance moves.

    \b
    例 examples:
      onecard card exchange 2000000001
      onecard card exchange 2000000001 --kind smart --old-card-returned
    """
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
    help=("人事、组织或教务文件编号 / HR, organisation or academic affairs document"),
)
@click.option("--set", "pairs", multiple=True, required=True, help="字段=值 / field=value")
@click.option(
    "--kind",
    type=click.Choice([k.value for k in CardKind]),
    help="新卡类型：smart 智能卡 / temp 临时卡 / kind of the new card",
)
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
    """EXC-4: 持卡人资料变更（凭人事、组织或教务文件），更新资料并同时换卡 / holder data changed:
    update the record and exchange at once.

    \b
    例 example:
      onecard card exchange-data 1000000000 --document "教务处 2026-12" --set \\
          class_name=计科2026-3班 --id-doc 2026000001
    """
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
@click.option(
    "--through",
    "valid_through",
    required=True,
    help="延期至 YYYY-MM-DD / extend through YYYY-MM-DD",
)
@pass_opts
def card_extend(opts: Options, serial: str, valid_through: str) -> None:
    """TERM-2/3: 临时卡延期（到期前后 3 个月内） / extend a temp card (within 3 months of expiry).

    \b
    例 example:
      onecard card extend 2000000003 --through 2027-12-31
    """
    emit_card(
        opts,
        run_card(
            opts, lambda c, a: c.cards.extend(a, serial, valid_through=parse_day(valid_through))
        ),
    )


@card.command("refund")
@click.argument("serial")
@click.option(
    "--damaged",
    is_flag=True,
    help=("REF-3: 卡片检验不合格，不退押金 / the card failed the check; no deposit refund"),
)
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
    """REF-1..4: 退临时卡，凭押金收据退押金，出具押金退款单交财务 / a temp card comes back with the
    deposit receipt; refund slip for finance.

    \b
    例 example:
      onecard card refund 2000000003 --receipt 1000003 --id-doc 11010519491231002X
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
    help=(
        "终止原因：graduation 毕业、dropout 退学、suspension 休学、transfer "
        "转学、resignation 辞职、dismissal 辞退、expiry 到期、other 其他 / "
        "why"
    ),
)
@ID_DOC
@pass_opts
def card_terminate(opts: Options, serial: str, reason: str, presented_id: str | None) -> None:
    """TERM-1/4/6: 终止卡片功能（所有终端）并注销持卡人 / end card function everywhere and
    deregister the holder.

    \b
    例 example:
      onecard card terminate 2000000000 --reason dropout --id-doc 2026000001
    """
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
    """SCR-1: 已收回中心的卡登记报废 / enter a card the center has back in the scrap register.

    \b
    例 example:
      onecard card scrap 2000000004
    """
    emit_card(opts, run_card(opts, lambda c, a: c.cards.scrap(a, serial)))


@card.command("hand-in")
@click.argument("serial")
@pass_opts
def card_hand_in(opts: Options, serial: str) -> None:
    """SCR-1: 登记交回中心的卡（补卡后找回的挂失卡、自动终止的临时卡等），之后可报废 / record a
    card brought back after its procedure (a found lost card after the replacement, an
    auto-terminated temp card); it may then be scrapped.

    \b
    例 example:
      onecard card hand-in 2000000000
    """
    emit_card(opts, run_card(opts, lambda c, a: c.cards.hand_in(a, serial)))


@card.command("dispose")
@click.argument("year", type=int)
@pass_opts
def card_dispose(opts: Options, year: int) -> None:
    """SCR-2: 报废登记表的年度处置 / the yearly disposal of the scrap register.

    \b
    例 example:
      onecard card dispose 2026
    """
    n = run_as(opts, lambda c, a: c.cards.dispose(a, year))
    emit(opts, {"disposed": n}, f"{year} 年处置 disposed {n} 张 cards")


@card.command("show")
@click.argument("serial")
@pass_opts
def card_show(opts: Options, serial: str) -> None:
    """显示一张卡的状态、类型和持卡人 / a card's state, kind and holder.

    \b
    例 example:
      onecard card show 2000000000
    """

    async def body(c: CardCenter, _a: Actor) -> Card:
        async with c.ctx.registry.read() as tx:
            return await tx.card_by_serial(serial)

    emit_card(opts, run_card(opts, body))


@click.command("graduate")
@click.option("--college", required=True, help="学院 / college")
@click.option("--class", "class_name", required=True, help="班级 / class")
@click.option(
    "--returned",
    default="",
    help=("班长交回的卡号（逗号分隔） / serials handed back by the monitor (comma list)"),
)
@click.option(
    "--missing-paid",
    default="",
    help=("缺卡已缴费的学号（逗号分隔） / student numbers who pay for a missing card (comma list)"),
)
@pass_opts
def graduate(
    opts: Options, college: str, class_name: str, returned: str, missing_paid: str
) -> None:
    """TERM-5: 班级毕业离校清卡，开具离校证明 / graduate a class and issue clearance certificates.

    \b
    例 example:
      onecard graduate --college 计算机科学与技术学院 --class 计科2026-2班 \\
          --returned 2000000004,2000000005 --missing-paid 2026000009
    """
    outcome = run_as(
        opts,
        lambda c, a: c.approvals.graduate_class(
            a,
            college=college,
            class_name=class_name,
            returned_serials=split_list(returned),
            missing_paid=split_list(missing_paid),
        ),
    )
    if outcome.pending is not None:
        refuse_pending(opts, outcome.pending)
    assert isinstance(outcome.report, GraduationReport)
    emit_graduation(opts, outcome.report)
