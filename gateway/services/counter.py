"""The counter's registers: blank-card stock (INV), receipt books (FEE), merchants."""

from __future__ import annotations

from gateway.services.base import Actor, Context
from gateway.services.common import SERIAL_WIDTH
from protocol.errors import ErrorCode, InvalidInput, OnecardError, RuleViolation
from protocol.types import CardKind, Permission
from storage.records import Row

#: FEE-4: money and books go back to finance after this many receipt books are used up.
BOOKS_PER_RECONCILIATION = 10


class StockService:
    """INV-1: blank cards bought each year are held by the section chief; INV-2: the counter
    requisitions cards stating current usage, and every requisition is registered."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def purchase(self, actor: Actor, kind: CardKind, count: int, academic_year: str) -> int:
        actor.require(Permission.STOCK)
        if count <= 0:
            raise InvalidInput("数量须为正数", "count must be positive", rule="INV-1")
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            pid = await tx.insert(
                "stock_purchases",
                {
                    "at": now,
                    "kind": kind.value,
                    "count": count,
                    "academic_year": academic_year,
                    "received_by": actor.name,
                },
            )
            await tx.audit(
                now,
                actor.name,
                "stock.purchase",
                "stock",
                pid,
                None,
                {"kind": kind.value, "count": count},
            )
            return pid

    async def levels(self) -> dict[str, dict[str, int]]:
        """Per kind: bought, requisitioned, central stock, used by the counter, counter stock."""
        out: dict[str, dict[str, int]] = {}
        async with self.ctx.registry.read() as tx:
            for kind in CardKind:
                bought = sum(
                    int(r["count"]) for r in await tx.find("stock_purchases", kind=kind.value)
                )
                reqs = await tx.find("requisitions", kind=kind.value)
                requisitioned = sum(int(r["count"]) for r in reqs)
                used = await tx.count("cards", kind=kind.value)
                out[kind.value] = {
                    "bought": bought,
                    "requisitioned": requisitioned,
                    "central_stock": bought - requisitioned,
                    "used": used,
                    "counter_stock": requisitioned - used,
                }
        return out

    async def requisition(
        self, actor: Actor, kind: CardKind, count: int, *, issued_by: str, usage_note: str
    ) -> Row:
        """INV-2: take ``count`` blank cards from the section chief; serials follow on."""
        actor.require(Permission.STOCK)
        if count <= 0:
            raise InvalidInput("数量须为正数", "count must be positive", rule="INV-2")
        if not usage_note.strip() or not issued_by.strip():
            raise RuleViolation(
                "申领须说明目前卡片使用情况并由科长发放",
                "state the current usage and who issues the cards",
                code=ErrorCode.INVALID_INPUT,
                rule="INV-2",
            )
        levels = (await self.levels())[kind.value]
        if count > levels["central_stock"]:
            raise OnecardError(
                f"库存不足：科长处仅有 {levels['central_stock']} 张",
                f"only {levels['central_stock']} blank {kind} cards in stock",
                code=ErrorCode.OUT_OF_STOCK,
                rule="INV-1",
            )
        now = self.ctx.clock.now()
        prefix = 1 if kind is CardKind.SMART else 2
        async with self.ctx.registry.transaction() as tx:
            previous = await tx.find("requisitions", kind=kind.value, order_by="id")
            start = (
                int(previous[-1]["serial_to"]) + 1
                if previous
                else prefix * 10 ** (SERIAL_WIDTH - 1)
            )
            values = {
                "at": now,
                "kind": kind.value,
                "count": count,
                "serial_from": f"{start:0{SERIAL_WIDTH}d}",
                "serial_to": f"{start + count - 1:0{SERIAL_WIDTH}d}",
                "requested_by": actor.name,
                "issued_by": issued_by,
                "usage_note": usage_note,
            }
            rid = await tx.insert("requisitions", values)
            await tx.audit(now, actor.name, "stock.requisition", "requisition", rid, None, values)
            return {"id": rid, **values}


class ReceiptService:
    """FEE-2/3/4: receipt books from finance, electronic receipt records, reconciliation."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def add_book(self, actor: Actor, book_no: str, first_no: int, last_no: int) -> int:
        actor.require(Permission.FEES)
        if first_no <= 0 or last_no < first_no:
            raise InvalidInput("收据号码范围无效", "invalid receipt number range", rule="FEE-2")
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            for book in await tx.find("receipt_books"):
                if not (last_no < int(book["first_no"]) or first_no > int(book["last_no"])):
                    raise RuleViolation(
                        f"收据号码与收据本 {book['book_no']} 重叠",
                        f"numbers overlap receipt book {book['book_no']}",
                        code=ErrorCode.DUPLICATE,
                        rule="FEE-2",
                    )
            bid = await tx.insert(
                "receipt_books",
                {
                    "book_no": book_no,
                    "first_no": first_no,
                    "last_no": last_no,
                    "received_at": now,
                    "received_by": actor.name,
                },
            )
            await tx.audit(
                now,
                actor.name,
                "receipts.book_add",
                "receipt_book",
                bid,
                None,
                {"book_no": book_no, "range": [first_no, last_no]},
            )
            return bid

    async def reconcile(self, actor: Actor, *, allow_partial: bool = False) -> Row:
        """FEE-4: once 10 receipt books are used up, money and books go back to finance."""
        actor.require(Permission.FEES)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            books = [
                b
                for b in await tx.find("receipt_books", order_by="id")
                if b["used_up_at"] is not None and b["reconciliation_id"] is None
            ]
            if not books or (len(books) < BOOKS_PER_RECONCILIATION and not allow_partial):
                raise RuleViolation(
                    f"用完 {BOOKS_PER_RECONCILIATION} 本收据后交财务处核对（现有 {len(books)} 本）",
                    f"reconcile after {BOOKS_PER_RECONCILIATION} used-up books ({len(books)} now)",
                    code=ErrorCode.TOO_EARLY,
                    rule="FEE-4",
                )
            books = books[:BOOKS_PER_RECONCILIATION]
            receipts: list[Row] = []
            for book in books:
                receipts.extend(await tx.find("receipts", book_id=book["id"]))
            total = sum(int(r["amount"]) for r in receipts)
            rid = await tx.insert(
                "reconciliations",
                {
                    "at": now,
                    "actor": actor.name,
                    "books": len(books),
                    "receipts": len(receipts),
                    "total": total,
                },
            )
            for book in books:
                await tx.update("receipt_books", book["id"], {"reconciliation_id": rid})
            summary = {
                "id": rid,
                "books": [b["book_no"] for b in books],
                "receipts": len(receipts),
                "total": total,
            }
            await tx.audit(
                now, actor.name, "receipts.reconcile", "reconciliation", rid, None, summary
            )
            return summary


class MerchantService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def add(
        self, actor: Actor, merchant_id: str, name: str, operator_dept: str = "后勤管理处"
    ) -> None:
        actor.require(Permission.TERMINALS)
        now = self.ctx.clock.now()
        async with self.ctx.registry.transaction() as tx:
            await tx.put(
                "merchants", {"id": merchant_id, "name": name, "operator_dept": operator_dept}
            )
            await tx.audit(
                now, actor.name, "merchant.add", "merchant", merchant_id, None, {"name": name}
            )
