"""All the card center's services over one registry and clock."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.services.approvals import ApprovalService
from gateway.services.base import Context
from gateway.services.batches import ClassBatchService
from gateway.services.cards import CardService
from gateway.services.counter import MerchantService, ReceiptService, StockService
from gateway.services.holders import HolderService
from gateway.services.ledger import LedgerService
from gateway.services.meal import MealService
from gateway.services.money import MoneyService
from gateway.services.operators import OperatorService
from gateway.services.reports import ReportService
from gateway.services.terminals import TerminalRegistryService


@dataclass
class CardCenter:
    ctx: Context
    operators: OperatorService
    holders: HolderService
    cards: CardService
    money: MoneyService
    stock: StockService
    receipts: ReceiptService
    merchants: MerchantService
    meal: MealService
    reports: ReportService
    terminals: TerminalRegistryService
    ledger: LedgerService
    batches: ClassBatchService
    approvals: ApprovalService

    @classmethod
    def build(cls, ctx: Context) -> CardCenter:
        cards = CardService(ctx)
        batches = ClassBatchService(ctx)
        return cls(
            ctx=ctx,
            operators=OperatorService(ctx),
            holders=HolderService(ctx),
            cards=cards,
            money=MoneyService(ctx),
            stock=StockService(ctx),
            receipts=ReceiptService(ctx),
            merchants=MerchantService(ctx),
            meal=MealService(ctx),
            reports=ReportService(ctx),
            terminals=TerminalRegistryService(ctx),
            ledger=LedgerService(ctx),
            batches=batches,
            approvals=ApprovalService(ctx, cards, batches),
        )
