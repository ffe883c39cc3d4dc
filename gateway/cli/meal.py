"""``onecard meal ...``: the staff meal subsidy (MEAL-1..4)."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.common import (
    emit_card,
    pass_opts,
    refuse_bad_rows,
    run_card,
)
from gateway.cli.runtime import (
    Options,
    emit,
    run_as,
)


@click.group()
def meal() -> None:
    """教职工用餐补贴 MEAL-1..4 / staff meal subsidy."""


@meal.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_opts
def meal_import(opts: Options, path: Path) -> None:
    """MEAL-1/2: 导入人事处的用餐名单（工号、用餐次数） / HR's list of eligible staff (工号,
    用餐次数).

    \b
    例 example:
      onecard meal import 用餐名单-2026-12.xlsx
    """
    from gateway.rosterio import read_roster

    result = read_roster(path, "meal")
    if result.errors:
        refuse_bad_rows(
            opts,
            [(e.row_number, e.column or "", e.reason) for e in result.errors],
            rule="MEAL-2",
            skip_hint=False,
        )
    report = run_as(opts, lambda c, a: c.meal.import_quotas(a, result.rows, source=path.name))
    emit(opts, {"updated": report.updated}, f"已更新 updated {report.updated}")


@meal.command("enable")
@click.argument("staff_number")
@pass_opts
def meal_enable(opts: Options, staff_number: str) -> None:
    """MEAL-3: 开通用餐，卡类型改为“1 电子工作证”，在读卡器上写卡 / into group 1; written back onto
    the card at the reader.

    \b
    例 example:
      onecard meal enable T2026051
    """
    emit_card(opts, run_card(opts, lambda c, a: c.meal.enable(a, staff_number)))


@meal.command("disable")
@click.argument("staff_number")
@pass_opts
def meal_disable(opts: Options, staff_number: str) -> None:
    """MEAL-4: 停止用餐，先停用卡，等持卡人带卡来 / suspend the card until the holder brings it in.

    \b
    例 example:
      onecard meal disable T2026051
    """
    emit_card(opts, run_card(opts, lambda c, a: c.meal.disable(a, staff_number)))


@meal.command("brought-in")
@click.argument("serial")
@pass_opts
def meal_brought_in(opts: Options, serial: str) -> None:
    """MEAL-4: 持卡人带卡来：重新启用，移出用餐组并写卡 / re-enable, out of the group, written back
    onto the card.

    \b
    例 example:
      onecard meal brought-in 1000000007
    """
    emit_card(opts, run_card(opts, lambda c, a: c.meal.card_brought_in(a, serial)))
