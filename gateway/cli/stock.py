"""``onecard stock|receipts|merchant``: blank-card stock (INV), receipt books (FEE), merchants."""

from __future__ import annotations

import click

from gateway.cli.common import (
    pass_opts,
)
from gateway.cli.runtime import (
    Options,
    emit,
    emit_table,
    run_as,
)
from protocol.cards.fees import yuan
from protocol.types import CardKind


@click.group()
def stock() -> None:
    """空白卡库存 INV-1/2 / blank-card stock."""


@stock.command("purchase")
@click.argument("kind", type=click.Choice([k.value for k in CardKind]))
@click.argument("count", type=int)
@click.option(
    "--year",
    "academic_year",
    required=True,
    help="学年，如 2026-2027 / academic year, e.g. 2026-2027",
)
@pass_opts
def stock_purchase(opts: Options, kind: str, count: int, academic_year: str) -> None:
    """INV-1: 登记本学年采购入库的卡（由科长保管） / cards bought this academic year, held by the
    section chief.

    \b
    例 example:
      onecard stock purchase temp 1000 --year 2026-2027
    """
    run_as(opts, lambda c, a: c.stock.purchase(a, CardKind(kind), count, academic_year))
    emit(opts, {"kind": kind, "count": count}, f"入库 {count} 张 {kind} cards received")


@stock.command("requisition")
@click.argument("kind", type=click.Choice([k.value for k in CardKind]))
@click.argument("count", type=int)
@click.option(
    "--issued-by", required=True, help="发卡的科长 / section chief who hands out the cards"
)
@click.option(
    "--usage",
    "usage_note",
    required=True,
    help="当前用卡情况（INV-2） / current card usage (INV-2)",
)
@pass_opts
def stock_requisition(
    opts: Options, kind: str, count: int, issued_by: str, usage_note: str
) -> None:
    """INV-2: 柜台从科长处领用空白卡，登记卡号段 / the counter takes blank cards; the register
    records the serial range.

    \b
    例 example:
      onecard stock requisition temp 200 --issued-by 网管科长 --usage \\
          "新生入学，柜台现存0张"
    """
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
    """卡片库存：采购、领用、科长库存、已用、柜台库存 / card stock levels.

    \b
    例 example:
      onecard stock show
    """
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


@click.group()
def receipts() -> None:
    """收费票据本与核对 FEE-2..4 / receipt books and reconciliation."""


@receipts.command("add-book")
@click.argument("book_no")
@click.argument("first_no", type=int)
@click.argument("last_no", type=int)
@pass_opts
def receipts_add_book(opts: Options, book_no: str, first_no: int, last_no: int) -> None:
    """FEE-2: 登记从财务领来的收费票据本（起止号码） / register a receipt book received from
    finance.

    \b
    例 example:
      onecard receipts add-book R2026-01 1000001 1000050
    """
    run_as(opts, lambda c, a: c.receipts.add_book(a, book_no, first_no, last_no))
    emit(opts, {"book_no": book_no}, f"收据本 {book_no}（{first_no}–{last_no}）已登记 registered")


@receipts.command("reconcile")
@click.option("--partial", is_flag=True, help="不足 10 本也核对 / fewer than 10 used-up books")
@pass_opts
def receipts_reconcile(opts: Options, partial: bool) -> None:
    """FEE-4: 用完的 10 本票据连同款项交回财务核对 / hand the money and 10 used-up books back to
    finance.

    \b
    例 examples:
      onecard receipts reconcile
      onecard receipts reconcile --partial
    """
    summary = run_as(opts, lambda c, a: c.receipts.reconcile(a, allow_partial=partial))
    emit(
        opts,
        summary,
        f"核对 reconciled {len(summary['books'])} books, {summary['receipts']} receipts, "
        f"{yuan(summary['total'])} 元",
    )


@click.group()
def merchant() -> None:
    """商户（食堂、超市、开水房） / merchants (canteens, shops, water rooms)."""


@merchant.command("add")
@click.argument("merchant_id")
@click.argument("name")
@click.option(
    "--dept", default="后勤管理处", show_default=True, help="管理部门 / department running it"
)
@pass_opts
def merchant_add(opts: Options, merchant_id: str, name: str, dept: str) -> None:
    """登记商户 / register a merchant.

    \b
    例 example:
      onecard merchant add canteen-1 第一食堂
    """
    run_as(opts, lambda c, a: c.merchants.add(a, merchant_id, name, dept))
    emit(opts, {"merchant": merchant_id}, f"商户 {name} 已登记 merchant added")
