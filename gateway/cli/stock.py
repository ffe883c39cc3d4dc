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


@click.group()
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


@click.group()
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
