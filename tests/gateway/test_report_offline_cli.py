"""`onecard report offline`: refused and disputed offline sales for the card center (terminal
contract §8.3), zh-CN first with English beside it, card UIDs masked."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.cli import onecard, operator_site


def test_report_lists_refused_sales_with_masked_cards(tmp_path: Path) -> None:
    env = operator_site(tmp_path)
    with sqlite3.connect(tmp_path / "r.sqlite3") as db:  # as the gateway's tap writer records
        db.executemany(
            "INSERT INTO offline_sales (terminal_id, seq, card_uid, amount, sold_at, at_ms,"
            " uploaded_at, result, merchant_id, denylist_version, bearer, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    "pos-001",
                    1,
                    "04A1B2C3D4E5F6",
                    40_000,
                    "2026-11-23 02:04:00.000000",
                    1_795_400_640_000,
                    "2026-11-23 02:30:00.000000",
                    "card_lost",
                    None,
                    7,
                    "merchant",
                    "终端持有黑名单版本 7 / the terminal held version 7",
                ),
                (
                    "pos-001",
                    2,
                    "04A1B2C3D4E5F6",
                    500,
                    None,
                    253_402_300_800_000,
                    "2026-11-23 02:30:00.000000",
                    "clock_skew",
                    None,
                    7,
                    "merchant",
                    "x / x",
                ),
                (
                    "pos-001",
                    3,
                    "04A1B2C3D4E5F6",
                    500,
                    "2026-11-23 02:04:00.000000",
                    1_795_400_640_000,
                    "2026-11-23 02:30:00.000000",
                    "accepted",
                    None,
                    7,
                    "holder",
                    None,
                ),
            ],
        )
    out = json.loads(
        onecard(
            env, "--json", "report", "offline", "--since", "2026-11-23", "--until", "2026-11-23"
        )
    )
    rows = out["data"]["rows"] if isinstance(out["data"], dict) else out["data"]
    text = json.dumps(out, ensure_ascii=False)
    assert "04A1B2C3D4E5F6" not in text
    assert "04A1…F6" in text
    assert "卡片已挂失 / card reported lost (card_lost)" in text
    assert "at_ms=253402300800000" in text
    assert "商户 / merchant" in text
    assert (
        len(rows) == 3
    )  # two refused sales and the totals row; the plain accepted one is not listed
