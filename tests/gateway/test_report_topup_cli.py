"""`onecard report topup-reconcile`: online top-ups against the provider's statement (TOP-1),
zh-CN first with English beside it; every difference listed, as a table or a spreadsheet."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

from gateway.services.payments import (
    AMOUNT_MISMATCH,
    MISSING_OURS,
    MISSING_THEIRS,
    STATEMENT_HEADERS,
)
from tests.cli import onecard, operator_site


def _order(
    number: str, amount: int, trade_no: str | None, paid_at: str | None
) -> tuple[object, ...]:
    credited = paid_at
    return (
        number,
        "sandbox",
        1,
        amount,
        "paid" if credited else "pending",
        "web",
        "2026-11-23 02:00:00.000000",
        "2026-11-23 02:30:00.000000",
        trade_no,
        paid_at,
        credited,
        0,
        "2026-11-23 02:00:00.000000",
    )


def test_topup_reconcile_lists_differences(tmp_path: Path) -> None:
    env = operator_site(tmp_path)
    with sqlite3.connect(tmp_path / "r.sqlite3") as db:
        db.executemany(
            "INSERT INTO payment_orders (out_trade_no, provider, holder_id, amount, state,"
            " channel, created_at, expires_at, provider_trade_no, paid_at, credited_at, late,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                _order("OCmatched", 1000, "T1", "2026-11-23 02:01:00.000000"),
                _order("OCdropped", 2000, "T2", "2026-11-23 02:02:00.000000"),
                _order("OCaltered", 3000, "T3", "2026-11-23 02:03:00.000000"),
                _order("OCunseen", 4000, None, None),
            ],
        )
    statement = tmp_path / "statement.csv"
    statement.write_text(
        ",".join(STATEMENT_HEADERS)
        + "\n`2026-11-23 10:01:00,`onecard-demo,`OCmatched,`T1,`SUCCESS,`10.00"
        + "\n`2026-11-23 10:03:00,`onecard-demo,`OCaltered,`T3,`SUCCESS,`31.00"
        + "\n`2026-11-23 10:04:00,`onecard-demo,`OCunseen,`T4,`SUCCESS,`40.00"
        + "\n\n总交易单数/count,总金额(元)/total_yuan\n`3,`81.00\n",
        encoding="utf-8-sig",
    )
    args = ("report", "topup-reconcile", "--date", "2026-11-23", "--statement", str(statement))
    out = json.loads(onecard(env, "--json", *args))
    text = json.dumps(out, ensure_ascii=False)
    for expected in (MISSING_OURS, MISSING_THEIRS, AMOUNT_MISMATCH, "1 matched", "81.00"):
        assert expected in text, expected

    sheet = tmp_path / "diff.csv"
    onecard(env, *args, "--out", str(sheet))
    with sheet.open(encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][0] == "差异 / difference"
    assert sorted(r[1] for r in rows[1:-1]) == ["OCaltered", "OCdropped", "OCunseen"]
