"""``onecard``: the card center's command line (zh-CN first, English beside it).

This module only assembles the group: each command group lives in its own module
(ARCHITECTURE.md §10), so a clerk's command and its help are easy to find and change.
"""

from __future__ import annotations

import os

import click

from gateway.cli.accounts import db, init, login, logout, operator, passwd, whoami
from gateway.cli.approvals import approvals
from gateway.cli.batch import batch
from gateway.cli.boundary import OnecardGroup
from gateway.cli.cards import card, graduate
from gateway.cli.find import find
from gateway.cli.holders import holder
from gateway.cli.ledger import ledger
from gateway.cli.meal import meal
from gateway.cli.money import money
from gateway.cli.privacy import privacy
from gateway.cli.reader import console, reader_agent
from gateway.cli.reports import report
from gateway.cli.runtime import DEFAULT_DB, Options
from gateway.cli.serve import demo, scheduler, serve, web
from gateway.cli.stock import merchant, receipts, stock
from gateway.cli.terminals import broker, terminal


@click.group(cls=OnecardGroup)
@click.option(
    "--db",
    default=lambda: os.environ.get("ONECARD_DB", DEFAULT_DB),
    show_default="$ONECARD_DB or var/onecard.sqlite3",
    help=("登记库：SQLite 文件或 postgresql:// 地址 / SQLite file or postgresql:// URL"),
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help=(
        "输出 JSON（可放在子命令前后） / machine-readable output (before or after the subcommand)"
    ),
)
@click.pass_context
def cli(ctx: click.Context, db: str, as_json: bool) -> None:
    """校园一卡通 onecard：卡务中心柜台工具与终端网关 / card center counter tools and terminal
    gateway.

    \b
    命令出错时：64 用法有误，2 拒绝办理（引用规则），70 内部错误。
    Exit status: 64 usage error, 2 refused (the rule is cited), 70 internal error.

    \b
    例 examples:
      onecard login chief
      onecard find 王芳
      onecard card loss 2000000000 --id-doc 2026000001 --json
    """
    ctx.obj = Options(db=db, json=as_json)


for command in (
    init,
    db,
    login,
    logout,
    passwd,
    whoami,
    operator,
    stock,
    receipts,
    merchant,
    find,
    holder,
    card,
    graduate,
    money,
    meal,
    report,
    terminal,
    broker,
    serve,
    web,
    demo,
    scheduler,
):
    cli.add_command(command)
holder.add_command(find, "find")
cli.add_command(ledger)
cli.add_command(privacy)
cli.add_command(batch)
cli.add_command(approvals)
cli.add_command(console)
cli.add_command(reader_agent)


def main() -> None:
    cli(prog_name="onecard")


if __name__ == "__main__":
    main()
