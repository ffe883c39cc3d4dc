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
    """Staff meal subsidy (MEAL-1..4)."""


@meal.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_opts
def meal_import(opts: Options, path: Path) -> None:
    """MEAL-1/2: HR's list (工号, 用餐次数)."""
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
    """MEAL-3: into group 1; written back onto the card at the reader."""
    emit_card(opts, run_card(opts, lambda c, a: c.meal.enable(a, staff_number)))


@meal.command("disable")
@click.argument("staff_number")
@pass_opts
def meal_disable(opts: Options, staff_number: str) -> None:
    """MEAL-4: suspend the card until the holder brings it in."""
    emit_card(opts, run_card(opts, lambda c, a: c.meal.disable(a, staff_number)))


@meal.command("brought-in")
@click.argument("serial")
@pass_opts
def meal_brought_in(opts: Options, serial: str) -> None:
    """MEAL-4: re-enable, out of the group, written back onto the card."""
    emit_card(opts, run_card(opts, lambda c, a: c.meal.card_brought_in(a, serial)))
