"""``onecard money ...``: top-up, corrections, cash-out (TOP, REF-2, TERM-4)."""

from __future__ import annotations

import click

from gateway.cli.common import (
    pass_opts,
)
from gateway.cli.runtime import (
    Options,
    emit,
    run_as,
)
from gateway.services.base import Actor
from gateway.services.center import CardCenter
from protocol.cards.fees import parse_yuan, yuan
from protocol.ledger import purse
from protocol.types import Permission


@click.group()
def money() -> None:
    """Top-up, corrections, cash-out (TOP-1, TOP-2, REF-2, TERM-4)."""


@money.command("topup")
@click.argument("serial")
@click.argument("amount")
@click.option("--point", default="counter")
@pass_opts
def money_topup(opts: Options, serial: str, amount: str, point: str) -> None:
    """TOP-1: top up (amount in yuan, e.g. 50 or 12.50)."""
    fen = _fen(amount)
    r = run_as(opts, lambda c, a: c.money.topup(a, serial, fen, point=point))
    emit(
        opts,
        r,
        f"充值 {yuan(fen)} 元，余额 balance {yuan(r.balance)} 元 (transfer {r.transfer_id})",
    )


def _fen(amount: str) -> int:
    try:
        return parse_yuan(amount)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@money.command("correct")
@click.argument("transfer_id", type=int)
@click.argument("amount")
@click.option("--reason", required=True)
@pass_opts
def money_correct(opts: Options, transfer_id: int, amount: str, reason: str) -> None:
    """TOP-2: give back an over-deduction of a POS sale."""
    fen = _fen(amount)
    r = run_as(opts, lambda c, a: c.money.correct(a, transfer_id, fen, reason=reason))
    emit(opts, r, f"纠错 {yuan(fen)} 元，余额 balance {yuan(r.balance)} 元")


@money.command("cashout")
@click.argument("serial")
@click.option("--point", default="counter")
@pass_opts
def money_cashout(opts: Options, serial: str, point: str) -> None:
    """REF-2/TERM-4: settle the whole balance in cash."""
    r = run_as(opts, lambda c, a: c.money.cash_out(a, serial, point=point))
    emit(opts, r, f"已结清 settled (transfer {r.transfer_id})")


@money.command("balance")
@click.argument("serial")
@pass_opts
def money_balance(opts: Options, serial: str) -> None:
    async def body(c: CardCenter, a: Actor) -> int:
        a.require(Permission.REPORTS)
        async with c.ctx.registry.read() as tx:
            card_ = await tx.card_by_serial(serial)
            return await tx.balance(purse(card_.holder_id))

    fen = run_as(opts, body)
    emit(opts, {"balance_fen": fen}, f"余额 balance {yuan(fen)} 元")
