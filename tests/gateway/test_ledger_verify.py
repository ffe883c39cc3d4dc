"""``onecard ledger verify`` (ARCHITECTURE.md §10): every balance recomputed from the transfers,
through the CLI against a real SQLite file; a corrupted balance is found and named."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.cli import invoke, onecard, operator_site

SAMPLE = Path(__file__).parents[2] / "docs" / "samples" / "students-2026.csv"


def test_a_whole_ledger_verifies_and_a_tampered_balance_is_named(tmp_path: Path) -> None:
    env = operator_site(tmp_path)
    onecard(env, "stock", "purchase", "temp", "10", "--year", "2026-2027")
    onecard(env, "stock", "requisition", "temp", "10", "--issued-by", "科长", "--usage", "测试")
    onecard(env, "holder", "import", str(SAMPLE), "--kind", "student")
    onecard(env, "card", "issue-temp", "2026000001")
    onecard(env, "money", "topup", "2000000000", "100")
    whole = json.loads(onecard(env, "--json", "ledger", "verify"))["data"]
    assert whole["problems"] == 0
    assert whole["total_balance"] == 0
    assert whole["transfers"] >= 1

    with sqlite3.connect(tmp_path / "r.sqlite3") as conn:
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id LIKE 'purse:%'")
    done = invoke(env, "--json", "ledger", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    broken = json.loads(done.stdout)["data"]
    checks = {f["check"] for f in broken["findings"]}
    assert checks == {"conservation", "balance"}
    assert any(f["subject"].startswith("purse:") for f in broken["findings"])
