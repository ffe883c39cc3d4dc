"""``onecard ledger ...``: the stored-value ledger's own checks (one module per command group,
ARCHITECTURE.md §10)."""

from __future__ import annotations

import sys

import click

from gateway.cli.runtime import Options, emit, emit_table, run_as
from gateway.services.ledger import LedgerReport
from protocol.cards.fees import yuan

pass_opts = click.make_pass_decorator(Options)


@click.group()
def ledger() -> None:
    """账本 ledger: 核对 verify."""


@ledger.command("verify")
@pass_opts
def ledger_verify(opts: Options) -> None:
    """核对账本：余额与交易一致、总和为零 / recompute every balance from the transfers.

    Checks that balances sum to 0, that each account equals its transfers in minus out, that no
    purse is negative, and that no reversal gives back more than its original. Exit status 0
    when the ledger is whole, 1 when anything differs (each difference is listed).

    例 example: onecard ledger verify --json
    """
    report: LedgerReport = run_as(opts, lambda c, actor: c.ledger.verify(actor))
    if opts.json:
        emit(opts, report)
    else:
        verdict = "账本一致 ledger whole" if report.ok else f"发现 {report.problems} 处不一致"
        click.echo(
            f"{verdict}: {report.accounts} 个账户 accounts, {report.transfers} 笔交易 transfers,"
            f" 余额合计 Σ balances {yuan(report.total_balance)} 元 yuan"
        )
        if report.findings:
            emit_table(
                opts,
                "不一致 / differences",
                ["检查 / check", "对象 / subject", "说明 / finding"],
                [(f.check, f.subject, f"{f.message_zh} / {f.message_en}") for f in report.findings],
            )
    if not report.ok:
        sys.exit(1)
