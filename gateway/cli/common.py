"""What several command groups share: the option decorators, how a card or a result is shown,
how a holder or a day is typed."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import click

from gateway.cli.runtime import (
    Options,
    emit,
)
from gateway.services.cards import CardResult
from protocol.cards.clock import local
from protocol.cards.fees import yuan
from protocol.cards.lifecycle import STATE_NAMES_ZH
from storage.records import Card

pass_opts = click.make_pass_decorator(Options)


def holder_ref(text: str) -> str | int:
    """``#12`` is holder id 12; anything else is a student/staff number."""
    return int(text[1:]) if text.startswith("#") and text[1:].isdigit() else text


def last_valid_day(valid_until: datetime) -> date:
    """The end of validity is the campus midnight after the last valid day (TERM-2)."""
    return local(valid_until - timedelta(microseconds=1)).date()


def card_line(card: Card) -> str:
    state = f"{STATE_NAMES_ZH[card.state]} {card.state.value}"
    extra = (
        f"，可领取 ready on {card.ready_on}"
        if card.ready_on and card.state.value == "ready"
        else ""
    )
    return f"卡号 card {card.serial}（{card.kind.value}）状态 state: {state}{extra}"


def result_text(result: CardResult) -> str:
    lines = [card_line(result.card)]
    if result.old_card is not None:
        lines.append("原卡 old " + card_line(result.old_card))
    lines.extend(
        f"收据 receipt No.{r.receipt_no}: {r.item} {yuan(r.amount)} 元 yuan"
        for r in result.receipts
    )
    if result.note:
        lines.append(result.note)
    return "\n".join(lines)


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"expected YYYY-MM-DD, got {text!r}") from None


def emit_card(opts: Options, result: CardResult | Card) -> None:
    if isinstance(result, Card):
        emit(opts, result, card_line(result))
    else:
        emit(opts, result, result_text(result))


ID_DOC = click.option(
    "--id-doc",
    "presented_id",
    help="证件号码（身份证、护照、通行证、永居证）或学号/工号 the ID document or student/staff"
    " number shown",
)


OLD_CARD_RETURNED = click.option(
    "--old-card-returned",
    is_flag=True,
    help="EXC-5: 原卡已交回中心（新智能卡领取时不再凭原卡） / the center takes the old card now",
)


def split_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]
