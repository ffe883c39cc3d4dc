"""``onecard find TEXT`` (also ``onecard holder find``): find holders and cards at the counter
(issue 10) by number, name, ID document, card serial or UID; deregistered holders included."""

from __future__ import annotations

import dataclasses

import click

from gateway.cli.common import last_valid_day, pass_opts
from gateway.cli.runtime import Options, emit, refuse, run_as
from gateway.logs import mask_id_docs
from gateway.services.search import LIMIT, MATCHED_NAMES, HolderHit, SearchResult, SearchService
from protocol.cards.lifecycle import STATE_NAMES_ZH
from protocol.errors import ErrorCode
from protocol.types import CardState

KIND_ZH = {"smart": "智能卡", "temp": "临时卡"}
STATUS_ZH = {"active": "在册 active", "deregistered": "已注销 deregistered"}


def hit_lines(hit: HolderHit) -> list[str]:
    """One holder as a short block that fits 80 columns (serials and dates never cut)."""
    where = " ".join(x for x in (hit.college or hit.department, hit.class_name) if x)
    head = f"#{hit.id} {hit.name} {hit.number or '—'} {where}".rstrip()
    doc = f"{hit.id_doc_name_zh} {hit.id_doc_masked}" if hit.id_doc_masked else "无证件 no ID"
    lines = [
        head,
        f"    {STATUS_ZH.get(hit.status, hit.status)} · {doc}"
        f" · 匹配 matched: {MATCHED_NAMES.get(hit.matched_by, hit.matched_by)}",
    ]
    for card in hit.cards:
        until = (
            f" 至 until {last_valid_day(card.valid_until)}" if card.valid_until is not None else ""
        )
        state = STATE_NAMES_ZH[CardState(card.state)]
        lines.append(
            f"    卡 card {card.serial} {KIND_ZH.get(card.kind, card.kind)} {state}"
            f" {card.state}{until}"
        )
        if card.uid:
            lines.append(f"      UID {card.uid}")  # up to 32 hex digits: a line of its own
    if not hit.cards:
        lines.append("    （无卡 no card）")
    return lines


@click.command("find")
@click.argument("text")
@pass_opts
def find(opts: Options, text: str) -> None:
    """查找持卡人和卡片 / find holders and cards.

    \b
    按学号/工号、姓名（部分即可，不用拼音）、完整的身份证号或护照等证件号（显示时遮盖）、
    卡号或卡片UID查找；已毕业、已注销的持卡人也能找到。
    By student/staff number, name (any part of it, no pinyin), a whole ID document number
    (resident ID, passport, permits; shown masked), card serial or card UID; graduated and
    deregistered holders are found too. #12 is holder id 12.

    \b
    例 examples:
      onecard find 2026000001
      onecard find 张
      onecard find 11010519491231002X
      onecard find 04A1B2C3D4E5F6
    """
    result: SearchResult = run_as(opts, lambda c, a: SearchService(c.ctx).find(a, text))
    if not result.hits:
        refuse(
            opts,
            f"未找到“{mask_id_docs(result.text)}”",
            f"nothing found for '{mask_id_docs(result.text)}'",
            code=ErrorCode.NOT_FOUND,
        )
    more = (
        f"\n只列出前 {LIMIT} 人，请输入更多内容 / only the first {LIMIT} shown: type more of it"
        if result.truncated
        else ""
    )
    emit(
        opts,
        dataclasses.replace(result, text=mask_id_docs(result.text)),  # echoed: an ID masked
        "\n".join(line for hit in result.hits for line in hit_lines(hit))
        + f"\n找到 found {len(result.hits)} 人{more}",
    )
