"""``onecard holder ...``: roster import, temporary holders, holder data (ISS, REP-3)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import click

from gateway.cli.common import (
    card_line,
    holder_ref,
    last_valid_day,
    parse_day,
    pass_opts,
    refuse_bad_rows,
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
from protocol.cards.identity import ID_DOC_NAMES_ZH, IdDocType, mask_id_doc
from protocol.types import HolderCategory, HolderKind
from storage.records import Card, Holder


@click.group()
def holder() -> None:
    """持卡人：名单导入（ISS-1、ISS-6）、其他人员登记（ISS-8..11）、查找、资料 / holders: roster
    import, temporary holders, find, data.
    """


@holder.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["student", "staff"]),
    required=True,
    help="名单类型：student 学生 / staff 教职工 / roster kind",
)
@click.option(
    "--valid-through",
    "valid_through",
    help="默认有效期至（YYYY-MM-DD） / default validity (YYYY-MM-DD)",
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help=("只导入无误的行，列出错误行 / import the good rows and list the bad ones"),
)
@pass_opts
def holder_import(
    opts: Options, path: Path, kind: str, valid_through: str | None, skip_bad: bool
) -> None:
    """导入名单（XLSX 或 CSV，中文表头，UTF-8 或 GBK）；有错误行时一行也不导入，除非 --skip-bad /
    import a roster (XLSX or CSV, Chinese headers, UTF-8 or GBK); nothing is imported if a row
    is bad, unless --skip-bad.

    \b
    例 example:
      onecard holder import docs/samples/students-2026.csv --kind student \\
          --valid-through 2030-07-31
    """
    from rich.progress import Progress

    from gateway.rosterio import read_roster

    with Progress(disable=opts.json, transient=True) as progress:
        task = progress.add_task("读取 reading", total=None)

        def tick(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        result = read_roster(path, "student" if kind == "student" else "staff", progress=tick)
    bad = [(e.row_number, e.column or "", e.reason) for e in result.errors]
    if bad and (not skip_bad or any(e.row_number <= 1 for e in result.errors)):
        refuse_bad_rows(
            opts, bad, rule="ISS-1" if kind == "student" else "ISS-6", skip_hint=not skip_bad
        )
    until = parse_day(valid_through) if valid_through else None
    report = run_as(
        opts,
        lambda c, a: c.holders.import_roster(
            a, HolderKind(kind), result.rows, default_valid_through=until
        ),
    )
    if bad:
        emit_table(opts, "已跳过 / skipped rows", ["行 / row", "列 / column", "原因 / reason"], bad)
    emit(
        opts,
        {"imported": report.imported, "skipped": len(bad)},
        f"导入 imported {report.imported} 人，跳过 skipped {len({b[0] for b in bad})} 行",
    )


@holder.command("register-temp")
@click.option("--name", required=True, help="姓名 / name")
@click.option(
    "--id-type",
    "id_type",
    type=click.Choice([t.value for t in IdDocType]),
    help="证件类型 ID document: resident_id 居民身份证 (default), passport 护照, hk_macau_permit"
    " 港澳居民来往内地通行证, taiwan_permit 台湾居民来往大陆通行证, permanent_residence"
    " 外国人永久居留身份证",
)
@click.option("--id-no", "id_no", help="证件号码 the document's number (ISS-11)")
@click.option("--national-id", help="身份证号 a resident ID (same as --id-no with resident_id)")
@click.option(
    "--category",
    type=click.Choice([c.value for c in HolderCategory if c.value not in ("student", "staff")]),
    required=True,
    help="人员类别（ISS-8） / category of person (ISS-8)",
)
@click.option(
    "--valid-through",
    required=True,
    help="有效期至 YYYY-MM-DD（ISS-11） / valid through YYYY-MM-DD (ISS-11)",
)
@click.option(
    "--application",
    "application_ref",
    required=True,
    help="已签字的申请表编号（ISS-9） / signed application form (ISS-9)",
)
@pass_opts
def holder_register_temp(
    opts: Options,
    name: str,
    id_type: str | None,
    id_no: str | None,
    national_id: str | None,
    category: str,
    valid_through: str,
    application_ref: str,
) -> None:
    """登记其他人员 ISS-8/9/11: register a person eligible for a temp card, with the ID document
    shown (work number and default password: its last 6 characters).

    例 example: onecard holder register-temp --name "Anna Schmidt" --id-type passport
    --id-no C01X00T47 --category foreign_teacher --valid-through 2027-06-30
    --application "外事处 2026-118"
    """
    if (id_no is None) == (national_id is None):
        raise click.UsageError("给出 --id-no 或 --national-id 之一 / give --id-no or --national-id")
    if national_id is not None and id_type not in (None, IdDocType.RESIDENT_ID.value):
        raise click.UsageError(
            "--national-id 只用于居民身份证，其他证件用 --id-no / "
            "--national-id is for resident IDs: use --id-no with --id-type"
        )
    doc_type = IdDocType(id_type or IdDocType.RESIDENT_ID.value)
    number = id_no if id_no is not None else national_id
    assert number is not None
    h = run_as(
        opts,
        lambda c, a: c.cards.register_temporary_holder(
            a,
            name=name,
            national_id=number,
            id_doc_type=doc_type,
            category=HolderCategory(category),
            valid_through=parse_day(valid_through),
            application_ref=application_ref,
        ),
    )
    emit(
        opts,
        {"holder_id": h.id, "number": h.number, "id_doc_type": h.id_doc_type.value},
        f"已登记 registered holder #{h.id}, 工号 work number {h.number}"
        f"（{ID_DOC_NAMES_ZH[h.id_doc_type]} {mask_id_doc(h.national_id or '')}）",
    )


@dataclass
class HolderView:
    holder: Holder
    cards: list[Card]
    balance: int


@holder.command("show")
@click.argument("ref")
@pass_opts
def holder_show(opts: Options, ref: str) -> None:
    """持卡人资料、卡片和余额（学号/工号，或 #编号）；证件号码遮盖显示 / a holder, their cards and
    balance (number, or #id); ID documents masked.

    \b
    例 examples:
      onecard holder show 2026000001
      onecard holder show '#12'
    """

    async def body(c: CardCenter, a: Actor) -> HolderView:
        h = await c.cards.holder(holder_ref(ref))
        # no transactions here: the history is `onecard privacy history`, audited (issue 15)
        balance, _ = await c.money.statement(a, h, 0)
        async with c.ctx.registry.read() as tx:
            cards = await tx.cards_of_holder(h.id)
        return HolderView(replace(h, national_id=mask_id_doc(h.national_id or "")), cards, balance)

    view = run_as(opts, body)
    h = view.holder
    lines = [
        f"#{h.id} {h.name} {h.number or '—'} {h.kind.value}/{h.category.value} "
        f"{ID_DOC_NAMES_ZH[h.id_doc_type]} {h.id_doc_type.value} {h.national_id}",
        f"  {h.college or h.department or ''} {h.class_name or ''} 状态 {h.status.value} "
        f"有效期至 valid through {last_valid_day(h.valid_until) if h.valid_until else '—'}",
        f"  余额 balance: {yuan(view.balance)} 元",
        *("  " + card_line(x) for x in view.cards),
    ]
    emit(opts, view, "\n".join(lines))


@holder.command("update")
@click.argument("ref")
@click.option(
    "--set",
    "pairs",
    multiple=True,
    required=True,
    help=("字段=值（name, college, class_name, department, photo_ref, number） / field=value"),
)
@click.option("--reason", required=True, help="依据 the document or notice (audited)")
@click.option(
    "--correct",
    "correction",
    is_flag=True,
    help="更正已登记的学号/工号 correct a number recorded wrongly (ISS-6, audited)",
)
@pass_opts
def holder_update(
    opts: Options, ref: str, pairs: tuple[str, ...], reason: str, correction: bool
) -> None:
    """补充持卡人信息 REP-3: complete missing holder data. ISS-6: add the staff number HR assigned
    (once, while empty); changing a recorded number needs --correct.

    例 example: onecard holder update '#12' --set number=T2026051 --reason "人事处通知 2026-45"
    """
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise click.UsageError(f"须为 字段=值 / expected field=value: {bad[0]}")
    changes = dict(p.split("=", 1) for p in pairs)

    async def body(c: CardCenter, a: Actor) -> object:
        h = await c.cards.holder(holder_ref(ref))
        return await c.holders.update(a, h.id, changes, reason=reason, correction=correction)

    run_as(opts, body)
    emit(opts, changes, "已更新 updated")
