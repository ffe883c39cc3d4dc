"""``onecard money ...``: top-up and its same-day reversal, corrections, cash-out, balance (TOP,
REF-2, TERM-4). Every command shows whose card it is (name masked) and amounts in yuan."""

from __future__ import annotations

import os

import click

from gateway.cli.common import pass_opts
from gateway.cli.runtime import Options, emit, refuse, run_as
from gateway.services.money import MoneyResult
from gateway.services.search import HolderBrief
from protocol.cards.fees import parse_yuan, yuan

#: a top-up of at least this many yuan asks for confirmation (environment, default 500)
LARGE_TOPUP_ENV = "ONECARD_LARGE_TOPUP"
LARGE_TOPUP_DEFAULT = "500"
YES = click.option(
    "--yes", "-y", "assume_yes", is_flag=True, help="不再询问确认 / do not ask for confirmation"
)
POINT = click.option(
    "--point",
    default="counter",
    show_default=True,
    help="充值点（柜台 counter 或现金充值点编号） / the cash point",
)


@click.group()
def money() -> None:
    """充值、撤销、纠错、结清、余额 / top-up, reversal, correction, cash-out, balance (TOP-1,
    TOP-2, REF-2, TERM-4). 金额以元为单位，最多两位小数 / amounts in yuan, at most 2 decimals."""


def fen_of(amount: str) -> int:
    try:
        return parse_yuan(amount)
    except ValueError:
        raise click.BadParameter(
            f"金额须为元，最多两位小数，如 50 或 12.50 / an amount in yuan with at most 2"
            f" decimals, e.g. 50 or 12.50: {amount!r}",
            param_hint="AMOUNT",
        ) from None


def large_topup() -> int:
    """The confirmation threshold in fen (``ONECARD_LARGE_TOPUP`` yuan, default 500)."""
    text = os.environ.get(LARGE_TOPUP_ENV, LARGE_TOPUP_DEFAULT)
    try:
        return parse_yuan(text)
    except ValueError:
        raise click.UsageError(
            f"{LARGE_TOPUP_ENV} 须为元金额 / must be an amount in yuan: {text!r}"
        ) from None


def money_text(result: MoneyResult, what: str) -> str:
    owner = result.holder.text if result.holder is not None else ""
    return (
        f"{owner}\n{what} {yuan(result.amount)} 元 yuan，余额 balance {yuan(result.balance)} 元"
        f"（交易号 transfer {result.transfer_id}）"
    )


def money_data(result: MoneyResult) -> dict[str, object]:
    return {
        "transfer_id": result.transfer_id,
        "amount_fen": result.amount,
        "amount_yuan": yuan(result.amount),
        "balance_fen": result.balance,
        "balance_yuan": yuan(result.balance),
        "holder": result.holder,
    }


@money.command("topup")
@click.argument("serial")
@click.argument("amount")
@POINT
@YES
@pass_opts
def money_topup(opts: Options, serial: str, amount: str, point: str, assume_yes: bool) -> None:
    """充值 TOP-1: 按卡号为持卡人充值（元） / top up the holder's purse (yuan).

    \b
    大额充值（默认 500 元及以上，环境变量 ONECARD_LARGE_TOPUP）先显示持卡人并询问确认；
    --json 时须加 --yes。充错了可当天撤销：onecard money reverse 交易号 --reason 原因
    A large top-up (500 yuan or more by default, ONECARD_LARGE_TOPUP) shows whose card it is and
    asks first; with --json it needs --yes. A top-up made in error is reversed the same day with
    `onecard money reverse TRANSFER_ID --reason TEXT`.

    \b
    例 examples:
      onecard money topup 2000000000 50
      onecard money topup 2000000000 800 --yes
    """
    fen = fen_of(amount)
    if fen >= large_topup() and not assume_yes:
        _card, owner, balance = run_as(opts, lambda c, a: c.money.owner(a, serial))
        if opts.json:
            refuse(
                opts,
                f"大额充值 {yuan(fen)} 元须确认：核对持卡人后加 --yes",
                f"a large top-up of {yuan(fen)} yuan needs confirming: check the holder, add --yes",
                code="confirmation_required",
                data={"holder": owner, "amount_yuan": yuan(fen), "balance_yuan": yuan(balance)},
            )
        _ask(owner, f"充值 top up {yuan(fen)} 元 yuan 到卡 to card {serial}？")
    r = run_as(opts, lambda c, a: c.money.topup(a, serial, fen, point=point))
    emit(opts, money_data(r), money_text(r, "充值 top-up"))


def _ask(owner: HolderBrief, question: str) -> None:
    click.echo(owner.text, err=True)
    click.confirm(f"{question} / confirm?", default=False, abort=True, err=True)


@money.command("reverse")
@click.argument("transfer_id", type=int)
@click.option("--reason", required=True, help="撤销原因（记入审计） / why (audited)")
@YES
@pass_opts
def money_reverse(opts: Options, transfer_id: int, reason: str, assume_yes: bool) -> None:
    """撤销充错的充值 TOP-1: 当天、柜台或现金充值点的充值，写明原因 / reverse a cash top-up
    made in error, the same campus day, with a reason.

    \b
    撤销是一笔新的记账（账本只增不改），指向原充值，记入审计；已消费的部分不能撤销。
    The reversal is its own recorded movement referring to the top-up (the ledger is never
    edited), audited; what was already spent cannot be reversed. The cash comes back to the
    counter: give it back, or top up the right card.

    \b
    例 example: onecard money reverse 12 --reason "充错卡号，应为 2000000001"
    """
    if not assume_yes and not opts.json:
        click.confirm(
            f"撤销充值交易 {transfer_id}？ / reverse top-up transfer {transfer_id}?",
            default=False,
            abort=True,
            err=True,
        )
    r = run_as(opts, lambda c, a: c.money.reverse_topup(a, transfer_id, reason=reason))
    emit(
        opts,
        {**money_data(r), "reversed_transfer_id": transfer_id},
        money_text(r, f"已撤销充值 reversed top-up {transfer_id}:")
        + f"\n柜台现金退回 {yuan(r.amount)} 元：退还交款人或充到正确的卡 / {yuan(r.amount)} yuan"
        " back in the counter's cash: give it back or top up the right card",
    )


@money.command("correct")
@click.argument("transfer_id", type=int)
@click.argument("amount")
@click.option("--reason", required=True, help="纠错原因（记入审计） / why (audited)")
@pass_opts
def money_correct(opts: Options, transfer_id: int, amount: str, reason: str) -> None:
    """消费纠错 TOP-2: 退还后勤管理处POS多扣的款（元） / give back an over-deduction of a POS
    sale run by the logistics department (yuan).

    \b
    例 example: onecard money correct 345 3.50 --reason "食堂重复扣款"
    """
    fen = fen_of(amount)
    r = run_as(opts, lambda c, a: c.money.correct(a, transfer_id, fen, reason=reason))
    emit(opts, money_data(r), money_text(r, "纠错退还 corrected"))


@money.command("cashout")
@click.argument("serial")
@POINT
@pass_opts
def money_cashout(opts: Options, serial: str, point: str) -> None:
    """结清余额 REF-2/TERM-4: 余额全部以现金支付 / pay the whole balance out in cash.

    \b
    例 example: onecard money cashout 2000000000
    """
    r = run_as(opts, lambda c, a: c.money.cash_out(a, serial, point=point))
    emit(
        opts,
        money_data(r),
        money_text(r, "结清 settled") + f"\n请支付现金 pay out in cash: {yuan(r.amount)} 元 yuan",
    )


@money.command("balance")
@click.argument("serial")
@pass_opts
def money_balance(opts: Options, serial: str) -> None:
    """查询余额 / the purse balance of a card's holder.

    \b
    例 example: onecard money balance 2000000000
    """
    _card, owner, fen = run_as(opts, lambda c, a: c.money.owner(a, serial))
    emit(
        opts,
        {"balance_fen": fen, "balance_yuan": yuan(fen), "holder": owner},
        f"{owner.text}\n余额 balance {yuan(fen)} 元 yuan",
    )
