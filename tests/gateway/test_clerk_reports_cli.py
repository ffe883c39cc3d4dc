"""Tables and reports a clerk can read (issue 10): screen tables fit 80 columns without cutting
serials or dates and never take data for markup; XLSX reports have a named sheet, Chinese
headers, amounts as numbers in a money format and sensible widths; MEAL-2 the meal subsidy list
as a spreadsheet report."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path

from openpyxl import load_workbook

from protocol.cards.identity import make_national_id
from tests.cli import invoke, onecard, operator_site
from tests.gateway.clerk_site import NOW, register_anna, temp_stock


def test_tables_fit_80_columns_and_reports_are_spreadsheets(tmp_path: Path) -> None:
    env = {**operator_site(tmp_path), "ONECARD_NOW": NOW}
    temp_stock(env, usage="[/]测试")  # data, not rich markup (it used to end the command)
    onecard(env, "receipts", "add-book", "R2026-01", "1000001", "1000050")
    register_anna(env)
    onecard(env, "card", "issue-temp", "#1")  # ISS-10: a deposit, on a receipt

    text = onecard(env, "report", "requisitions")
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert any("2000000000" in line for line in lines)  # serial whole, on one line
    assert any("2026-11-26 10:05" in line for line in lines)  # date and time whole
    assert "[/]测试" in text

    out = tmp_path / "收费台账.xlsx"
    reply = json.loads(onecard(env, "--json", "report", "receipts", "--out", str(out)))
    assert reply["data"]["rows"] == 2  # the receipt and the totals row
    book = load_workbook(out)
    sheet = book[reply["data"]["sheet"]]
    assert book.sheetnames[0] == sheet.title and "说明" in book.sheetnames
    headers = [c.value for c in sheet[1]]
    assert all(isinstance(h, str) and " / " not in h for h in headers)  # Chinese headers
    amount = headers.index("金额（元）")
    receipt, total = sheet[2], sheet[3]
    assert isinstance(receipt[amount].value, int | float | Decimal)
    assert receipt[amount].number_format == "#,##0.00"
    assert total[amount].value == receipt[amount].value and total[0].font.bold
    widths = {k: v.width for k, v in sheet.column_dimensions.items()}
    assert all(6 <= w <= 48 for w in widths.values()) and max(widths.values()) >= 16
    about = [[c.value for c in row] for row in book["说明"].iter_rows()]
    assert ["金额（元）", "amount (yuan)"] in about


def test_meal_list_as_a_spreadsheet(tmp_path: Path) -> None:
    """MEAL-2: HR's list is kept as a spreadsheet: quota, enabled, card, type group, pending
    write-back (MEAL-3)."""
    env = {**operator_site(tmp_path), "ONECARD_NOW": NOW}
    temp_stock(env)
    staff = tmp_path / "staff.csv"
    ids = [make_national_id("110105", date(1980, 1, 1 + n), 10 + n) for n in range(2)]
    staff.write_text(
        f"姓名,工号,身份证号,部门\n张老师,T2026001,{ids[0]},计算机学院\n李老师,T2026002,{ids[1]},后勤处\n",
        encoding="utf-8",
    )
    onecard(env, "holder", "import", str(staff), "--kind", "staff")
    onecard(env, "card", "issue-temp", "T2026001", "--proof", "人事处证明 2026-3")
    meals = tmp_path / "meal.csv"
    meals.write_text("工号,用餐次数\nT2026001,22\nT2026002,20\n", encoding="utf-8")
    onecard(env, "meal", "import", str(meals))
    onecard(env, "meal", "enable", "T2026001")

    out = tmp_path / "用餐补贴名单.xlsx"
    onecard(env, "report", "meal-list", "--out", str(out))
    sheet = load_workbook(out)["用餐补贴名单"]
    rows = [[c.value for c in row] for row in sheet.iter_rows()]
    assert rows[0][:5] == ["工号", "姓名", "部门", "每月补贴次数", "已开通"]
    by_number = {row[0]: row for row in rows[1:]}
    assert by_number["T2026001"][3] == 22 and by_number["T2026001"][4] == "是 / yes"
    assert by_number["T2026001"][6] == 1 and by_number["T2026001"][7] == "是 / yes"  # pending
    assert by_number["T2026002"][4] == "否 / no" and by_number["T2026002"][5] is None
    assert rows[-1][3] == 42  # the total of quotas
    done = invoke(env, "report", "meal-list")
    assert done.returncode == 0 and "T2026002" in done.stdout
