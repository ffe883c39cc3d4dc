"""What several command groups share: the option decorators, how a card or a result is shown,
how a holder or a day is typed."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import NoReturn, TypeVar

import click

from gateway.cli.runtime import Options, emit, emit_table, refuse, run_as, to_jsonable
from gateway.services.base import Actor
from gateway.services.cards import CardResult
from gateway.services.center import CardCenter
from gateway.services.search import HolderBrief, owner_brief
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


T = TypeVar("T")


def run_card(
    opts: Options, body: Callable[[CardCenter, Actor], Awaitable[T]]
) -> tuple[T, HolderBrief | None]:
    """Run a card procedure and, in the same registry session, find whose card it was."""

    async def both(center: CardCenter, actor: Actor) -> tuple[T, HolderBrief | None]:
        result = await body(center, actor)
        card = result if isinstance(result, Card) else getattr(result, "card", None)
        if not isinstance(card, Card):
            return result, None
        async with center.ctx.registry.read() as tx:
            holder = await tx.get_holder(card.holder_id)
        return result, owner_brief(holder)

    return run_as(opts, both)


def emit_card(
    opts: Options, shown: tuple[CardResult | Card, HolderBrief | None], extra: str = ""
) -> None:
    """A card procedure's result: whose card (name masked, number, college and class), the card
    and any receipts; ``holder`` beside the result in JSON."""
    result, owner = shown
    text = card_line(result) if isinstance(result, Card) else result_text(result)
    emit_owned(opts, result, owner, text + extra)


def emit_owned(opts: Options, result: object, owner: HolderBrief | None, text: str) -> None:
    data = to_jsonable(result)
    if isinstance(data, dict) and owner is not None:
        data = {**data, "holder": to_jsonable(owner)}
    emit(opts, data, f"{owner.text}\n{text}" if owner is not None else text)


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


BAD_ROW_HEADERS = ["行 / row", "列 / column", "原因 / reason"]


def refuse_bad_rows(
    opts: Options, rows: list[tuple[int, str, str]], *, rule: str, skip_hint: bool
) -> NoReturn:
    """An import refused for its bad rows: the rows (a table, or ``data.rows`` in JSON), then
    the refusal citing the rule; nothing was imported."""
    if not opts.json:
        emit_table(opts, "错误行 / bad rows (nothing imported)", BAD_ROW_HEADERS, rows)
    hint_zh = "；改正后重试，或用 --skip-bad 只导入无误的行" if skip_hint else "；改正后重试"
    hint_en = ": fix them, or use --skip-bad to import the others" if skip_hint else ": fix them"
    refuse(
        opts,
        f"{len({r[0] for r in rows})} 行有误，未导入任何一行{hint_zh}",
        f"{len({r[0] for r in rows})} bad rows, nothing imported{hint_en}",
        rule=rule,
        data={"rows": [{"row": r[0], "column": r[1], "reason": r[2]} for r in rows]},
    )


class OutFile(click.ParamType[Path, object]):
    """``--out FILE``: a .xlsx or .csv in a directory that exists and can be written, checked
    before anything is done (a batch must not be applied and then fail to write its list)."""

    name = "FILE.xlsx|FILE.csv"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Path:
        path = Path(str(value)).expanduser()
        if path.suffix.lower() not in {".xlsx", ".csv"}:
            self.fail(f"须为 .xlsx 或 .csv 文件 / must end in .xlsx or .csv: {value}", param, ctx)
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            self.fail(f"目录不存在 / no such directory: {parent}", param, ctx)
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            self.fail(f"无写入权限 / cannot write: {path}", param, ctx)
        if path.is_dir():
            self.fail(f"是目录 / is a directory: {path}", param, ctx)
        return path
