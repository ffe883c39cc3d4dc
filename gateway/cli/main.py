"""``onecard``: the card center's command line (zh-CN first, English beside it)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import click

from gateway.cli.batch import batch
from gateway.cli.ledger import ledger
from gateway.cli.runtime import (
    DEFAULT_DB,
    EXIT_REFUSED,
    Options,
    emit,
    emit_table,
    fail,
    read_secret,
    read_token,
    run,
    run_as,
    write_token,
)
from gateway.services.base import Actor
from gateway.services.cards import CardResult
from gateway.services.center import CardCenter
from gateway.services.reports import Table
from protocol.cards.clock import end_of_validity, local
from protocol.cards.fees import parse_yuan, yuan
from protocol.cards.identity import ID_DOC_NAMES_ZH, IdDocType, mask_id_doc
from protocol.cards.lifecycle import STATE_NAMES_ZH
from protocol.errors import OnecardError
from protocol.ledger import purse
from protocol.types import CardKind, HolderCategory, HolderKind, Permission
from protocol.wire import TerminalKind
from storage.records import Card, Holder, Transfer

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


@click.group()
@click.option(
    "--db",
    default=lambda: os.environ.get("ONECARD_DB", DEFAULT_DB),
    show_default="$ONECARD_DB or var/onecard.sqlite3",
    help="SQLite file or postgresql:// URL",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def cli(ctx: click.Context, db: str, as_json: bool) -> None:
    """onecard 校园一卡通 — card center counter tools and terminal gateway."""
    ctx.obj = Options(db=db, json=as_json)


# --- set-up and accounts (ACC) ---------------------------------------------------------------
@cli.command()
@click.option("--admin", "username", required=True, help="first account (section chief)")
@click.option("--name", "real_name", required=True, help="real name (ACC-2)")
@click.option("--password-stdin", is_flag=True)
@pass_opts
def init(opts: Options, username: str, real_name: str, password_stdin: bool) -> None:
    """Create/upgrade the registry and the first operator account (initial password, ACC-3)."""
    password = read_secret("initial password", password_stdin)
    op_id = run(opts, lambda c: c.operators.bootstrap(username, real_name, password), migrate=True)
    emit(
        opts,
        {"operator_id": op_id},
        f"已初始化 initialised {opts.db}; 首次登录须修改密码 change the password at first login",
    )


@cli.group()
def db() -> None:
    """Schema migrations."""


@db.command("upgrade")
@pass_opts
def db_upgrade(opts: Options) -> None:
    """Bring the schema to this version's head (refuses a newer schema)."""

    async def body(_: CardCenter) -> None:
        return None

    run(opts, body, migrate=True)
    emit(opts, {"upgraded": True}, "数据库已是最新 schema at head")


@cli.command()
@click.argument("username")
@click.option("--password-stdin", is_flag=True)
@pass_opts
def login(opts: Options, username: str, password_stdin: bool) -> None:
    """Log in; the session is kept (mode 600) for the following commands."""
    password = read_secret("password", password_stdin)
    session = run(opts, lambda c: c.operators.login(username, password))
    write_token(opts, session.token, username)
    note = (
        "；首次登录请先修改密码：onecard passwd / change your initial password first"
        if session.must_change_password
        else ""
    )
    emit(
        opts,
        {"user": username, "must_change_password": session.must_change_password},
        f"已登录 logged in as {username}{note}",
    )


@cli.command()
@pass_opts
def logout(opts: Options) -> None:
    token = read_token(opts)
    run(opts, lambda c: c.operators.logout(token))
    opts.session_file.unlink(missing_ok=True)
    emit(opts, {"logged_out": True}, "已退出 logged out")


@cli.command()
@click.option("--stdin", "from_stdin", is_flag=True, help="read old and new password as two lines")
@pass_opts
def passwd(opts: Options, from_stdin: bool) -> None:
    """Change your password (ACC-3: required at first use)."""
    token = read_token(opts)
    old = read_secret("current password", from_stdin)
    new = read_secret("new password", from_stdin)
    run(opts, lambda c: c.operators.change_password(token, old, new))
    emit(opts, {"changed": True}, "密码已修改 password changed")


@cli.command()
@pass_opts
def whoami(opts: Options) -> None:
    actor = run_as(opts, lambda _c, a: _actor(a))
    emit(opts, actor, f"{actor.name}: {', '.join(sorted(actor.permissions))}")


async def _actor(actor: Actor) -> Actor:
    return actor


@cli.group()
def operator() -> None:
    """Function accounts (ACC-1..3)."""


@operator.command("add")
@click.argument("username")
@click.option("--name", "real_name", required=True)
@click.option("--department", required=True)
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    required=True,
    type=click.Choice([p.value for p in Permission]),
)
@click.option("--approved-by", required=True, help="center head who approved (ACC-2)")
@click.option(
    "--application", "application_ref", required=True, help="written application reference"
)
@click.option("--password-stdin", is_flag=True)
@pass_opts
def operator_add(
    opts: Options,
    username: str,
    real_name: str,
    department: str,
    permissions: tuple[str, ...],
    approved_by: str,
    application_ref: str,
    password_stdin: bool,
) -> None:
    """ACC-2: a real-name account with the approved permissions."""
    initial = read_secret("initial password", password_stdin)
    op_id = run_as(
        opts,
        lambda c, a: c.operators.create(
            a,
            username=username,
            real_name=real_name,
            department=department,
            permissions=[Permission(p) for p in permissions],
            approved_by=approved_by,
            application_ref=application_ref,
            initial_password=initial,
        ),
    )
    emit(opts, {"operator_id": op_id}, f"账号已创建 account {username} created (id {op_id})")


@operator.command("list")
@pass_opts
def operator_list(opts: Options) -> None:
    rows = run_as(opts, lambda c, a: c.operators.list(a))
    emit_table(
        opts,
        "功能户登记表 / function accounts",
        [
            "账号 / username",
            "姓名 / real_name",
            "部门 / department",
            "权限 / permissions",
            "停用 / disabled",
            "审批 / approved_by",
        ],
        [
            [
                r["username"],
                r["real_name"],
                r["department"],
                r["permissions"],
                r["disabled"],
                r["approved_by"],
            ]
            for r in rows
        ],
    )


@operator.command("disable")
@click.argument("username")
@pass_opts
def operator_disable(opts: Options, username: str) -> None:
    run_as(opts, lambda c, a: c.operators.set_disabled(a, username, True))
    emit(opts, {"disabled": username}, f"账号已停用 {username} disabled")


APPROVED_BY = click.option(
    "--approved-by",
    required=True,
    help="审批人（网管中心负责人） / center head who approved (ACC-2)",
)


@operator.command("unlock")
@click.argument("username")
@APPROVED_BY
@click.option("--application", "application_ref", help="书面申请编号 / written application")
@pass_opts
def operator_unlock(
    opts: Options, username: str, approved_by: str, application_ref: str | None
) -> None:
    """ACC-2: 解除密码错误锁定 / lift a lockout after wrong passwords (audited)."""
    run_as(
        opts,
        lambda c, a: c.operators.unlock(
            a, username, approved_by=approved_by, application_ref=application_ref
        ),
    )
    emit(opts, {"unlocked": username}, f"账号已解锁 {username} unlocked")


@operator.command("enable")
@click.argument("username")
@APPROVED_BY
@click.option("--application", "application_ref", help="书面申请编号 / written application")
@pass_opts
def operator_enable(
    opts: Options, username: str, approved_by: str, application_ref: str | None
) -> None:
    """ACC-2: 重新启用停用的账号 / re-enable a disabled account (audited)."""
    run_as(
        opts,
        lambda c, a: c.operators.enable(
            a, username, approved_by=approved_by, application_ref=application_ref
        ),
    )
    emit(opts, {"enabled": username}, f"账号已启用 {username} enabled")


@operator.command("reset-password")
@click.argument("username")
@APPROVED_BY
@click.option("--application", "application_ref", help="书面申请编号 / written application")
@click.option("--password-stdin", is_flag=True)
@pass_opts
def operator_reset_password(
    opts: Options,
    username: str,
    approved_by: str,
    application_ref: str | None,
    password_stdin: bool,
) -> None:
    """ACC-3: 重置为新的初始密码，下次登录须修改 / a new initial password, changed at the next
    login; the account's sessions end (audited)."""
    initial = read_secret("new initial password", password_stdin)
    run_as(
        opts,
        lambda c, a: c.operators.reset_password(
            a, username, initial, approved_by=approved_by, application_ref=application_ref
        ),
    )
    emit(
        opts,
        {"reset": username, "must_change_password": True},
        f"密码已重置 {username}: 下次登录须修改 must change it at the next login",
    )


@operator.command("permissions")
@click.argument("username")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    required=True,
    type=click.Choice([p.value for p in Permission]),
    help="授予的全部权限（可重复） / every permission the account keeps (repeat)",
)
@APPROVED_BY
@click.option(
    "--application", "application_ref", required=True, help="书面申请编号 / written application"
)
@pass_opts
def operator_permissions(
    opts: Options,
    username: str,
    permissions: tuple[str, ...],
    approved_by: str,
    application_ref: str,
) -> None:
    """ACC-1/2: 变更账号权限（书面申请，负责人审批） / set an account's permissions (audited)."""
    perms = [Permission(p) for p in permissions]
    run_as(
        opts,
        lambda c, a: c.operators.set_permissions(
            a, username, perms, approved_by=approved_by, application_ref=application_ref
        ),
    )
    emit(
        opts,
        {"username": username, "permissions": sorted(permissions)},
        f"权限已变更 {username}: {', '.join(sorted(permissions))}",
    )


# --- stock (INV), receipts (FEE), merchants ----------------------------------------------------
@cli.group()
def stock() -> None:
    """Blank-card stock (INV-1, INV-2)."""


@stock.command("purchase")
@click.argument("kind", type=click.Choice([k.value for k in CardKind]))
@click.argument("count", type=int)
@click.option("--year", "academic_year", required=True)
@pass_opts
def stock_purchase(opts: Options, kind: str, count: int, academic_year: str) -> None:
    """INV-1: cards bought this academic year, held by the section chief."""
    run_as(opts, lambda c, a: c.stock.purchase(a, CardKind(kind), count, academic_year))
    emit(opts, {"kind": kind, "count": count}, f"入库 {count} 张 {kind} cards received")


@stock.command("requisition")
@click.argument("kind", type=click.Choice([k.value for k in CardKind]))
@click.argument("count", type=int)
@click.option("--issued-by", required=True, help="section chief who hands out the cards")
@click.option("--usage", "usage_note", required=True, help="current card usage (INV-2)")
@pass_opts
def stock_requisition(
    opts: Options, kind: str, count: int, issued_by: str, usage_note: str
) -> None:
    """INV-2: the counter takes blank cards; the register records the serial range."""
    row = run_as(
        opts,
        lambda c, a: c.stock.requisition(
            a, CardKind(kind), count, issued_by=issued_by, usage_note=usage_note
        ),
    )
    emit(opts, row, f"领用 {count} 张，卡号 serials {row['serial_from']}–{row['serial_to']}")


@stock.command("show")
@pass_opts
def stock_show(opts: Options) -> None:
    levels = run_as(opts, lambda c, _a: c.stock.levels())
    emit_table(
        opts,
        "卡片库存 / card stock",
        [
            "类型 / kind",
            "采购 / bought",
            "领用 / requisitioned",
            "科长库存 / central_stock",
            "已用 / used",
            "柜台库存 / counter_stock",
        ],
        [
            [k, v["bought"], v["requisitioned"], v["central_stock"], v["used"], v["counter_stock"]]
            for k, v in levels.items()
        ],
    )


@cli.group()
def receipts() -> None:
    """Receipt books and reconciliation (FEE-2..4)."""


@receipts.command("add-book")
@click.argument("book_no")
@click.argument("first_no", type=int)
@click.argument("last_no", type=int)
@pass_opts
def receipts_add_book(opts: Options, book_no: str, first_no: int, last_no: int) -> None:
    """FEE-2: register a receipt book received from finance."""
    run_as(opts, lambda c, a: c.receipts.add_book(a, book_no, first_no, last_no))
    emit(opts, {"book_no": book_no}, f"收据本 {book_no}（{first_no}–{last_no}）已登记 registered")


@receipts.command("reconcile")
@click.option("--partial", is_flag=True, help="fewer than 10 used-up books")
@pass_opts
def receipts_reconcile(opts: Options, partial: bool) -> None:
    """FEE-4: hand the money and 10 used-up books back to finance."""
    summary = run_as(opts, lambda c, a: c.receipts.reconcile(a, allow_partial=partial))
    emit(
        opts,
        summary,
        f"核对 reconciled {len(summary['books'])} books, {summary['receipts']} receipts, "
        f"{yuan(summary['total'])} 元",
    )


@cli.group()
def merchant() -> None:
    """Merchants (canteens, shops, water rooms)."""


@merchant.command("add")
@click.argument("merchant_id")
@click.argument("name")
@click.option("--dept", default="后勤管理处", show_default=True)
@pass_opts
def merchant_add(opts: Options, merchant_id: str, name: str, dept: str) -> None:
    run_as(opts, lambda c, a: c.merchants.add(a, merchant_id, name, dept))
    emit(opts, {"merchant": merchant_id}, f"商户 {name} 已登记 merchant added")


# --- holders -------------------------------------------------------------------------------
@cli.group()
def holder() -> None:
    """Holders: roster import (ISS-1, ISS-6), temporary holders (ISS-8..11), data."""


@holder.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["student", "staff"]), required=True)
@click.option("--valid-through", "valid_through", help="default e-ID validity (YYYY-MM-DD)")
@click.option("--skip-bad", is_flag=True, help="import the good rows and report the bad ones")
@pass_opts
def holder_import(
    opts: Options, path: Path, kind: str, valid_through: str | None, skip_bad: bool
) -> None:
    """Import a roster (XLSX or CSV, Chinese headers, UTF-8 or GBK). Nothing is imported if a
    row is bad, unless --skip-bad."""
    from rich.progress import Progress

    from gateway.rosterio import read_roster

    with Progress(disable=opts.json, transient=True) as progress:
        task = progress.add_task("读取 reading", total=None)

        def tick(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        result = read_roster(path, "student" if kind == "student" else "staff", progress=tick)
    bad = [(e.row_number, e.column or "", e.reason) for e in result.errors]
    if bad and (not skip_bad or any(e.row_number <= 1 for e in result.errors)):
        emit_table(
            opts,
            "错误行 / bad rows (nothing imported)",
            ["行 / row", "列 / column", "原因 / reason"],
            bad,
        )
        raise SystemExit(EXIT_REFUSED)
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
@click.option("--name", required=True)
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
)
@click.option("--valid-through", required=True, help="YYYY-MM-DD (ISS-11)")
@click.option(
    "--application", "application_ref", required=True, help="signed application form (ISS-9)"
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

    Example: onecard holder register-temp --name "Anna Schmidt" --id-type passport
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
    recent: list[Transfer]


@holder.command("show")
@click.argument("ref")
@pass_opts
def holder_show(opts: Options, ref: str) -> None:
    """A holder, their cards and balance (number, or #id). National IDs are masked."""

    async def body(c: CardCenter, a: Actor) -> HolderView:
        h = await c.cards.holder(holder_ref(ref))
        balance, recent = await c.money.statement(a, h, 10)
        async with c.ctx.registry.read() as tx:
            cards = await tx.cards_of_holder(h.id)
        return HolderView(
            replace(h, national_id=mask_id_doc(h.national_id or "")), cards, balance, recent
        )

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
    help="field=value (name, college, class_name, department, photo_ref, number)",
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

    Example: onecard holder update '#12' --set number=T2026051 --reason "人事处通知 2026-45"
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


# --- cards -----------------------------------------------------------------------------------
@cli.group()
def card() -> None:
    """Card procedures at the counter (ISS, LOSS, REP, EXC, REF, TERM, SCR)."""


def _emit_card(opts: Options, result: CardResult | Card) -> None:
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
    r = run_as(
        opts,
        lambda c, a: c.cards.issue_temp(
            a, holder_ref(holder), uid=uid, valid_through=until, proof_ref=proof_ref
        ),
    )
    _emit_card(opts, r)


@card.command("order-smart")
@click.argument("holder")
@pass_opts
def card_order_smart(opts: Options, holder: str) -> None:
    """ISS-2: put a smart card into the vendor's print batch."""
    _emit_card(opts, run_as(opts, lambda c, a: c.cards.order_smart(a, holder_ref(holder))))


@card.command("check-printed")
@click.argument("serial")
@click.option("--pass/--fail", "passed", required=True)
@click.option("--uid")
@pass_opts
def card_check_printed(opts: Options, serial: str, passed: bool, uid: str | None) -> None:
    """ISS-3: printed card checked (print, swipe, RFID)."""
    _emit_card(
        opts, run_as(opts, lambda c, a: c.cards.check_printed(a, serial, passed=passed, uid=uid))
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
    r = run_as(
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
    _emit_card(opts, r)


@card.command("loss")
@click.argument("serial")
@ID_DOC
@pass_opts
def card_loss(opts: Options, serial: str, presented_id: str | None) -> None:
    """LOSS-1/2: report a card lost; refused everywhere at once."""
    _emit_card(
        opts, run_as(opts, lambda c, a: c.cards.report_loss(a, serial, presented_id=presented_id))
    )


@card.command("unlock")
@click.argument("serial")
@ID_DOC
@pass_opts
def card_unlock(opts: Options, serial: str, presented_id: str | None) -> None:
    """LOSS-3: lift a loss report (counter only, valid ID)."""
    _emit_card(
        opts, run_as(opts, lambda c, a: c.cards.unlock(a, serial, presented_id=presented_id))
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
    _emit_card(
        opts,
        run_as(
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
    _emit_card(
        opts,
        run_as(
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


OLD_CARD_RETURNED = click.option(
    "--old-card-returned",
    is_flag=True,
    help="EXC-5: 原卡已交回中心（新智能卡领取时不再凭原卡） / the center takes the old card now",
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
    _emit_card(
        opts,
        run_as(
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
    _emit_card(
        opts,
        run_as(
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
    _emit_card(
        opts,
        run_as(
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
    slip = run_as(
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
    emit(opts, slip, text)


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
    _emit_card(
        opts,
        run_as(
            opts,
            lambda c, a: c.cards.terminate(a, serial, reason=reason, presented_id=presented_id),
        ),
    )


@card.command("scrap")
@click.argument("serial")
@pass_opts
def card_scrap(opts: Options, serial: str) -> None:
    """SCR-1: enter a recovered card in the scrap register."""
    _emit_card(opts, run_as(opts, lambda c, a: c.cards.scrap(a, serial)))


@card.command("hand-in")
@click.argument("serial")
@pass_opts
def card_hand_in(opts: Options, serial: str) -> None:
    """SCR-1: 登记交回中心的卡（补卡后找回的挂失卡、自动终止的临时卡等） / record a card brought
    back after its procedure (a found lost card after the replacement, an auto-terminated temp
    card, an exchanged card); it may then be scrapped."""
    _emit_card(opts, run_as(opts, lambda c, a: c.cards.hand_in(a, serial)))


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

    _emit_card(opts, run_as(opts, body))


@cli.command("graduate")
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
            returned_serials=_split(returned),
            missing_paid=_split(missing_paid),
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


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# --- money (TOP) ------------------------------------------------------------------------------
@cli.group()
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


# --- meal subsidy (MEAL) ------------------------------------------------------------------------
@cli.group()
def meal() -> None:
    """Staff meal subsidy (MEAL-1..4)."""


@meal.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_opts
def meal_import(opts: Options, path: Path) -> None:
    """MEAL-1/2: HR's list (工号, 用餐次数)."""
    from gateway.rosterio import read_roster

    result = read_roster(path, "meal")
    if result.errors:
        emit_table(
            opts,
            "错误行 / bad rows (nothing imported)",
            ["行 / row", "列 / column", "原因 / reason"],
            [(e.row_number, e.column or "", e.reason) for e in result.errors],
        )
        raise SystemExit(EXIT_REFUSED)
    report = run_as(opts, lambda c, a: c.meal.import_quotas(a, result.rows, source=path.name))
    emit(opts, {"updated": report.updated}, f"已更新 updated {report.updated}")


@meal.command("enable")
@click.argument("staff_number")
@pass_opts
def meal_enable(opts: Options, staff_number: str) -> None:
    """MEAL-3: into group 1; written back onto the card at the reader."""
    _emit_card(opts, run_as(opts, lambda c, a: c.meal.enable(a, staff_number)))


@meal.command("disable")
@click.argument("staff_number")
@pass_opts
def meal_disable(opts: Options, staff_number: str) -> None:
    """MEAL-4: suspend the card until the holder brings it in."""
    _emit_card(opts, run_as(opts, lambda c, a: c.meal.disable(a, staff_number)))


@meal.command("brought-in")
@click.argument("serial")
@pass_opts
def meal_brought_in(opts: Options, serial: str) -> None:
    """MEAL-4: re-enable, out of the group, written back onto the card."""
    _emit_card(opts, run_as(opts, lambda c, a: c.meal.card_brought_in(a, serial)))


# --- reports --------------------------------------------------------------------------------
@cli.group()
def report() -> None:
    """Registers and reports, on screen or as XLSX/CSV (--out FILE)."""


OUT = click.option(
    "--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="write .xlsx or .csv"
)


def _show(opts: Options, table: Table, out: Path | None) -> None:
    if out is not None:
        from gateway.rosterio import write_table

        n = write_table(out, table.headers, table.rows)
        emit(opts, {"file": str(out), "rows": n}, f"已导出 wrote {n} rows to {out}")
        return
    emit_table(opts, table.title, table.headers, table.rows)


def _period(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    start = (
        end_of_validity(parse_day(since)) - timedelta(days=1)
        if since
        else datetime(2000, 1, 1, tzinfo=UTC)
    )
    end = end_of_validity(parse_day(until)) if until else datetime(2100, 1, 1, tzinfo=UTC)
    return start, end


@report.command("print-batch")
@click.option("--college")
@click.option("--class", "class_name")
@OUT
@pass_opts
def report_print_batch(
    opts: Options, college: str | None, class_name: str | None, out: Path | None
) -> None:
    """ISS-2: smart cards to print, for the vendor."""
    _show(
        opts,
        run_as(opts, lambda c, a: c.reports.print_batch(a, college=college, class_name=class_name)),
        out,
    )


@report.command("issuance")
@click.option("--since")
@click.option("--until")
@OUT
@pass_opts
def report_issuance(opts: Options, since: str | None, until: str | None, out: Path | None) -> None:
    """ISS-5/7: smart cards handed over and temp cards recovered (campus dates, inclusive)."""
    start, end = _period(since, until)
    _show(opts, run_as(opts, lambda c, a: c.reports.issuance(a, start, end)), out)


@report.command("temp-monthly")
@click.argument("year", type=int)
@click.argument("month", type=int)
@OUT
@pass_opts
def report_temp_monthly(opts: Options, year: int, month: int, out: Path | None) -> None:
    """ISS-12: temp cards issued in a month."""
    _show(opts, run_as(opts, lambda c, a: c.reports.temp_monthly(a, year, month)), out)


@report.command("receipts")
@click.option("--since")
@click.option("--until")
@OUT
@pass_opts
def report_receipts(opts: Options, since: str | None, until: str | None, out: Path | None) -> None:
    """FEE-3: the electronic receipt ledger."""
    start, end = _period(since, until)
    _show(opts, run_as(opts, lambda c, a: c.reports.receipts(a, start, end)), out)


@report.command("books")
@OUT
@pass_opts
def report_books(opts: Options, out: Path | None) -> None:
    """FEE-4: receipt books, used numbers and reconciliation."""
    _show(opts, run_as(opts, lambda c, a: c.reports.receipt_books(a)), out)


@report.command("scrap")
@click.option("--year", type=int)
@OUT
@pass_opts
def report_scrap(opts: Options, year: int | None, out: Path | None) -> None:
    """SCR-2: the scrap register, one row per card."""
    _show(opts, run_as(opts, lambda c, a: c.reports.scrap_register(a, year=year)), out)


@report.command("hand-overs")
@click.option("--year", type=int)
@OUT
@pass_opts
def report_hand_overs(opts: Options, year: int | None, out: Path | None) -> None:
    """REP-4/EXC-5: 领卡登记表 / the hand-over register: who collected each card, signed."""
    _show(opts, run_as(opts, lambda c, a: c.reports.hand_overs(a, year=year)), out)


@report.command("clearances")
@click.option("--college", required=True)
@click.option("--class", "class_name", required=True)
@OUT
@pass_opts
def report_clearances(opts: Options, college: str, class_name: str, out: Path | None) -> None:
    """TERM-5: clearance certificates of a class."""
    _show(opts, run_as(opts, lambda c, a: c.reports.clearances(a, college, class_name)), out)


@report.command("settlement")
@click.argument("day")
@OUT
@pass_opts
def report_settlement(opts: Options, day: str, out: Path | None) -> None:
    """Daily settlement per merchant (campus day)."""
    _show(opts, run_as(opts, lambda c, a: c.reports.daily_settlement(a, parse_day(day))), out)


@report.command("offline")
@click.option("--since")
@click.option("--until")
@OUT
@pass_opts
def report_offline(opts: Options, since: str | None, until: str | None, out: Path | None) -> None:
    """Refused and disputed offline sales, by upload date (terminal contract §8.3)."""
    start, end = _period(since, until)
    _show(opts, run_as(opts, lambda c, a: c.reports.offline_disputes(a, start, end)), out)


@report.command("stock")
@OUT
@pass_opts
def report_stock(opts: Options, out: Path | None) -> None:
    """INV-1/2: card stock."""
    _show(opts, run_as(opts, lambda c, a: c.reports.stock(a)), out)


@report.command("requisitions")
@OUT
@pass_opts
def report_requisitions(opts: Options, out: Path | None) -> None:
    """INV-2: the requisition register (新卡领用登记表)."""
    _show(opts, run_as(opts, lambda c, a: c.reports.requisitions(a)), out)


@report.command("warranty")
@OUT
@pass_opts
def report_warranty(opts: Options, out: Path | None) -> None:
    """EXC-6: faulty cards in lots of 100 for the vendor."""
    _show(opts, run_as(opts, lambda c, a: c.reports.warranty_lots(a)), out)


@report.command("audit")
@click.option("--entity")
@click.option("--limit", type=int, default=100, show_default=True)
@OUT
@pass_opts
def report_audit(opts: Options, entity: str | None, limit: int, out: Path | None) -> None:
    """The audit log (who, what, when, before/after), newest first."""
    _show(opts, run_as(opts, lambda c, a: c.reports.audit(a, entity=entity, limit=limit)), out)


@report.command("topup-reconcile")
@click.option("--date", "day", required=True, help="campus day YYYY-MM-DD")
@click.option(
    "--statement",
    "statement",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the provider's statement CSV of that day",
)
@click.option("--provider", default="sandbox", show_default=True)
@OUT
@pass_opts
def report_topup_reconcile(
    opts: Options, day: str, statement: Path, provider: str, out: Path | None
) -> None:
    """TOP-1: online top-ups credited on a day against the provider's statement; lists every
    difference (missing on our side, missing on theirs, amount or trade id mismatch)."""
    from gateway.services.payments import parse_statement, reconcile

    raw = statement.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("gb18030")
    try:
        lines = parse_statement(text)
    except OnecardError as exc:
        fail(opts, exc)
    when = parse_day(day)
    _show(opts, run_as(opts, lambda c, a: reconcile(c.ctx, a, when, lines, provider=provider)), out)


# --- terminals, broker, gateway ---------------------------------------------------------------
@cli.group()
def terminal() -> None:
    """Terminal provisioning (POS, kiosks, door readers, water controllers)."""


@terminal.command("add")
@click.argument("terminal_id")
@click.option("--kind", type=click.Choice([k.value for k in TerminalKind]), required=True)
@click.option("--merchant", "merchant_id")
@click.option("--location", default="")
@click.option(
    "--password-stdin", is_flag=True, help="read the broker password instead of generating one"
)
@pass_opts
def terminal_add(
    opts: Options,
    terminal_id: str,
    kind: str,
    merchant_id: str | None,
    location: str,
    password_stdin: bool,
) -> None:
    """Register a terminal; prints its broker password once (only the hash is kept)."""
    from gateway.mqtt.broker_files import mosquitto_password_hash, new_password

    password = read_secret("terminal password", True) if password_stdin else new_password()
    digest = mosquitto_password_hash(password)
    run_as(
        opts,
        lambda c, a: c.terminals.add(
            a,
            terminal_id,
            TerminalKind(kind),
            password_hash=digest,
            merchant_id=merchant_id,
            location=location,
        ),
    )
    shown = None if password_stdin else password
    emit(
        opts,
        {"terminal_id": terminal_id, "password": shown},
        f"终端已登记 terminal {terminal_id} registered"
        + (
            ""
            if password_stdin
            else f"\n  MQTT 用户名 username: {terminal_id}"
            f"\n  密码 password (只显示一次 shown once): {password}"
        )
        + "\n  请运行 onecard broker render 并重载 mosquitto"
        " / then run `onecard broker render` and reload mosquitto",
    )


@terminal.command("disable")
@click.argument("terminal_id")
@pass_opts
def terminal_disable(opts: Options, terminal_id: str) -> None:
    """Refuse the terminal at once (every request checks the registry)."""
    run_as(opts, lambda c, a: c.terminals.set_enabled(a, terminal_id, False))
    emit(opts, {"disabled": terminal_id}, f"终端已停用 terminal {terminal_id} disabled")


@terminal.command("enable")
@click.argument("terminal_id")
@pass_opts
def terminal_enable(opts: Options, terminal_id: str) -> None:
    run_as(opts, lambda c, a: c.terminals.set_enabled(a, terminal_id, True))
    emit(opts, {"enabled": terminal_id}, f"终端已启用 terminal {terminal_id} enabled")


@terminal.command("list")
@pass_opts
def terminal_list(opts: Options) -> None:
    rows = run_as(opts, lambda c, a: c.terminals.list(a))
    emit_table(
        opts,
        "终端 / terminals",
        [
            "编号 / id",
            "类型 / kind",
            "商户 / merchant",
            "位置 / location",
            "启用 / enabled",
            "黑名单版本 / denylist_version",
            "最近 / last_seen_at",
        ],
        [
            [
                r["id"],
                r["kind"],
                r["merchant_id"],
                r["location"],
                bool(r["enabled"]),
                r["denylist_version"],
                r["last_seen_at"],
            ]
            for r in rows
        ],
    )


@cli.group()
def broker() -> None:
    """Mosquitto files generated from the terminal registry."""


@broker.command("render")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--port", type=int, default=1883, show_default=True)
@click.option("--bind", default="127.0.0.1", show_default=True)
@click.option("--gateway-user", default="gateway", show_default=True)
@click.option("--gateway-password-stdin", is_flag=True, help="set the gateway account's password")
@click.option("--no-persistence", is_flag=True)
@click.option(
    "--tls-port", type=int, help="a TLS listener for terminals on the campus network (e.g. 8883)"
)
@click.option("--tls-bind", help="address of the TLS listener (default: all)")
@click.option("--certfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keyfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cafile", type=click.Path(dir_okay=False, path_type=Path))
@pass_opts
def broker_render(
    opts: Options,
    directory: Path,
    port: int,
    bind: str,
    gateway_user: str,
    gateway_password_stdin: bool,
    no_persistence: bool,
    tls_port: int | None,
    tls_bind: str | None,
    certfile: Path | None,
    keyfile: Path | None,
    cafile: Path | None,
) -> None:
    """Write mosquitto.conf, the password file and the ACL; then `kill -HUP` mosquitto."""
    from gateway.mqtt import broker_files as bf

    existing: dict[str, str] = {}
    pw_file = directory / bf.PASSWORD_NAME
    if pw_file.exists():
        for line in pw_file.read_text().splitlines():
            name, _, digest = line.partition(":")
            existing[name] = digest
    if gateway_password_stdin:
        existing[gateway_user] = bf.mosquitto_password_hash(read_secret("gateway password", True))
    if gateway_user not in existing:
        raise click.UsageError("no gateway password yet: pass --gateway-password-stdin once")
    tls = None
    if tls_port is not None:
        if certfile is None or keyfile is None:
            raise click.UsageError("--tls-port needs --certfile and --keyfile")
        tls = bf.TlsListener(
            port=tls_port,
            certfile=certfile.resolve(),
            keyfile=keyfile.resolve(),
            bind=tls_bind,
            cafile=cafile.resolve() if cafile else None,
        )
    rows = run_as(opts, lambda c, a: c.terminals.list(a))
    terminals = [_TerminalRow(r["id"], bool(r["enabled"]), r["mqtt_password_hash"]) for r in rows]
    entries = bf.password_entries(terminals, {gateway_user: existing[gateway_user]})
    files = bf.write_broker_files(
        directory,
        entries=entries,
        gateway_users=[gateway_user],
        port=port,
        bind=bind,
        persistence=not no_persistence,
        persistence_dir=None if no_persistence else Path("/var/lib/mosquitto"),
        tls=tls,
    )
    emit(
        opts,
        {"conf": str(files.conf), "accounts": len(entries)},
        f"已生成 wrote {files.conf} ({len(entries)} accounts); 请 kill -HUP mosquitto",
    )


@dataclass(frozen=True)
class _TerminalRow:
    id: str
    enabled: bool
    mqtt_password_hash: str


@cli.command()
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--migrate", is_flag=True, help="bring the schema to head first")
@pass_opts
def serve(opts: Options, config_path: Path | None, migrate: bool) -> None:
    """Run the terminal gateway (MQTT) with /metrics, /livez and /readyz."""
    import asyncio
    import signal

    from gateway.bootstrap import open_gateway
    from gateway.config import load_settings
    from gateway.logs import setup_logging

    overrides = {} if "ONECARD_DB" not in os.environ and config_path else {"db": opts.db}
    settings = load_settings(config_path, **overrides)
    setup_logging(settings.log_level)

    async def main() -> None:
        async with open_gateway(settings, migrate=migrate) as gateway:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, gateway.stop.set)
            await gateway.run()

    runner = asyncio.run
    if settings.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            logging.getLogger("onecard.gateway").info("uvloop not installed: asyncio loop")
        else:
            runner = uvloop.run
    try:
        runner(main())
    except OnecardError as exc:
        fail(opts, exc)


@cli.command()
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@pass_opts
def web(opts: Options, config_path: Path | None) -> None:
    """Run the cardholder web platform (uvicorn; the [web] section of the config)."""
    import uvicorn

    from gateway.bootstrap import web_app
    from gateway.config import load_settings
    from gateway.logs import setup_logging
    from gateway.web.app import server_logging

    overrides = {} if "ONECARD_DB" not in os.environ and config_path else {"db": opts.db}
    settings = load_settings(config_path, **overrides)
    setup_logging(settings.log_level)
    server_logging()
    w = settings.web
    scheme = "https" if w.cookie_secure else "http"
    click.echo(f"持卡人自助服务 cardholder portal: {scheme}://{w.host}:{w.port}/")
    uvicorn.run(
        web_app(settings),
        host=w.host,
        port=w.port,
        proxy_headers=w.proxy_headers,
        forwarded_allow_ips=w.forwarded_allow_ips,
        server_header=False,
        log_config=None,
        access_log=False,
    )


@cli.group()
def demo() -> None:
    """The demo: broker + gateway on SQLite + simulated fleet (make demo)."""


@demo.command("run")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default="var/demo-live",
    show_default=True,
)
@click.option("--students", type=int, default=20_000, show_default=True)
@click.option("--staff", type=int, default=2_000, show_default=True)
@click.option("--visitors", type=int, default=200, show_default=True)
@click.option("--terminals", type=int, default=200, show_default=True)
@click.option("--duration", type=float, help="seconds; default: until Ctrl-C")
@click.option("--no-dashboard", is_flag=True, help="plain log lines instead of the live dashboard")
def demo_run(
    directory: Path,
    students: int,
    staff: int,
    visitors: int,
    terminals: int,
    duration: float | None,
    no_dashboard: bool,
) -> None:
    """Seed a synthetic campus, start mosquitto, the gateway and the fleet; Ctrl-C stops all."""
    from gateway.demo.launcher import DemoSize, run_demo

    size = DemoSize(students=students, staff=staff, visitors=visitors, terminals=terminals)
    raise SystemExit(run_demo(directory, size, duration=duration, dashboard=not no_dashboard))


# --- scheduler ------------------------------------------------------------------------------
@cli.group()
def scheduler() -> None:
    """Due time rules."""


@scheduler.command("run-due")
@pass_opts
def scheduler_run_due(opts: Options) -> None:
    """TERM-2/3: expire temp cards past validity, terminate those expired 3 months ago."""
    changed = run_as(opts, lambda c, a: c.cards.run_due(a))
    emit(
        opts,
        changed,
        f"处理 changed {len(changed)} 张 cards" + "".join(f"\n  {card_line(x)}" for x in changed),
    )


cli.add_command(ledger)
cli.add_command(batch)


def main() -> None:
    cli(prog_name="onecard")


if __name__ == "__main__":
    main()
