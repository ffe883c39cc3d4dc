"""``onecard ledger verify``: one check that proves the stored-value ledger is whole.

ARCHITECTURE.md §10 (TigerBeetle / django-hordak): one place posts money and one check proves
every transfer balanced. A transfer is a single row moving ``amount`` from ``source`` to
``dest``, so each transfer balances by construction; what can drift is the running balance kept
on each account row. This check recomputes everything from the transfers, in one read
transaction, and lists every difference:

- Σ of all account balances is 0 (conservation: money is only ever moved, never made);
- every account's balance equals its transfers in minus its transfers out;
- every account that moved money has a row, of the kind its id says;
- no purse, hold or deposit account (the non-negative kinds) is below zero;
- every transfer has a positive amount and two different accounts;
- a correction or reversal never gives back more than its original transfer moved.

Runs on SQLite and PostgreSQL alike (portable SQL through ``Tx.rows``); used by the chaos suite
after every fault and by the card center after an incident.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.services.base import Actor, Context
from protocol.errors import InvalidInput
from protocol.ledger import NON_NEGATIVE_KINDS, account_kind
from protocol.types import Permission

#: Differences listed in full; past this only their count grows.
MAX_LISTED = 50


@dataclass
class LedgerFinding:
    check: str
    subject: str
    message_zh: str
    message_en: str


@dataclass
class LedgerReport:
    accounts: int = 0
    transfers: int = 0
    total_balance: int = 0
    problems: int = 0
    findings: list[LedgerFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def add(self, check: str, subject: str, zh: str, en: str) -> None:
        self.problems += 1
        if len(self.findings) < MAX_LISTED:
            self.findings.append(LedgerFinding(check, subject, zh, en))


class LedgerService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def verify(self, actor: Actor) -> LedgerReport:
        actor.require(Permission.REPORTS)
        report = LedgerReport()
        async with self.ctx.registry.read() as tx:
            accounts = {
                str(r["id"]): (str(r["kind"]), int(r["balance"]))
                for r in await tx.rows("SELECT id, kind, balance FROM accounts")
            }
            inflow = {
                str(r["account"]): int(r["total"])
                for r in await tx.rows(
                    "SELECT dest AS account, SUM(amount) AS total FROM transfers GROUP BY dest"
                )
            }
            outflow = {
                str(r["account"]): int(r["total"])
                for r in await tx.rows(
                    "SELECT source AS account, SUM(amount) AS total FROM transfers GROUP BY source"
                )
            }
            counts = await tx.rows(
                "SELECT COUNT(*) AS n,"
                " SUM(CASE WHEN amount <= 0 OR source = dest THEN 1 ELSE 0 END) AS bad"
                " FROM transfers"
            )
            over_reversed = await tx.rows(
                "SELECT o.id AS id, o.amount AS amount, SUM(r.amount) AS back"
                " FROM transfers r JOIN transfers o ON o.id = r.ref_id"
                " GROUP BY o.id, o.amount HAVING SUM(r.amount) > o.amount"
            )
        report.accounts = len(accounts)
        report.transfers = int(counts[0]["n"] or 0)
        report.total_balance = sum(balance for _kind, balance in accounts.values())
        if report.total_balance != 0:
            report.add(
                "conservation",
                "Σ",
                f"全部账户余额之和为 {report.total_balance} 分，应为 0",
                f"balances sum to {report.total_balance} fen, not 0",
            )
        _check_accounts(report, accounts, inflow, outflow)
        bad = int(counts[0]["bad"] or 0)
        if bad:
            report.add(
                "transfer",
                "transfers",
                f"{bad} 笔交易金额非正或收付同一账户",
                f"{bad} transfers with a non-positive amount or the same account on both sides",
            )
        for row in over_reversed:
            report.add(
                "reversal",
                f"transfer {row['id']}",
                f"冲正/纠错合计 {int(row['back'])} 分，超过原交易 {int(row['amount'])} 分",
                f"reversed {int(row['back'])} fen of an original {int(row['amount'])} fen",
            )
        return report


def _check_accounts(
    report: LedgerReport,
    accounts: dict[str, tuple[str, int]],
    inflow: dict[str, int],
    outflow: dict[str, int],
) -> None:
    for account in sorted((set(inflow) | set(outflow)) - set(accounts)):
        report.add(
            "account",
            account,
            "有交易但无账户记录",
            "moved money but has no account row",
        )
    for account, (kind, balance) in sorted(accounts.items()):
        computed = inflow.get(account, 0) - outflow.get(account, 0)
        if balance != computed:
            report.add(
                "balance",
                account,
                f"余额 {balance} 分，按交易应为 {computed} 分",
                f"balance {balance} fen, its transfers say {computed} fen",
            )
        try:
            expected_kind = account_kind(account)
        except InvalidInput:
            report.add("account", account, "账户编号无法识别", "unrecognised account id")
            continue
        if kind != expected_kind.value:
            report.add(
                "account",
                account,
                f"账户类型为 {kind}，应为 {expected_kind.value}",
                f"kind {kind}, its id says {expected_kind.value}",
            )
        if expected_kind in NON_NEGATIVE_KINDS and balance < 0:
            report.add(
                "negative",
                account,
                f"余额为负：{balance} 分",
                f"negative balance: {balance} fen",
            )
