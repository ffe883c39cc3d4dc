"""Money at the counter (issue 10): every command that moves money or changes a card shows whose
card it is (name masked, number, college and class) and amounts in yuan with two decimals; a
large top-up asks first; a top-up made in error is reversed the same day with a reason, as its
own recorded movement, audited; `money cashout` says how much cash to pay out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.cli import invoke, onecard
from tests.gateway.clerk_site import counter_site

THURSDAY = "2026-11-26T10:05+08:00"
FRIDAY = "2026-11-27T08:30+08:00"
OWNER = "王* 2026000001 计算机科学与技术学院 计科2026-1班"


def data(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    reply = json.loads(onecard(env, *args, "--json", stdin=stdin))
    assert reply["ok"] is True, reply
    return reply["data"]


def refused(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = invoke(env, "--json", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    reply = json.loads(done.stdout)
    assert reply["ok"] is False, reply
    error: dict[str, Any] = reply["error"]
    return error


def balance(env: dict[str, str], serial: str) -> str:
    value: str = data(env, "money", "balance", serial)["balance_yuan"]
    return value


def test_whose_card_large_topup_reversal_and_cash_out(tmp_path: Path) -> None:
    env = counter_site(tmp_path, THURSDAY, ONECARD_LARGE_TOPUP="500")
    text = onecard(env, "card", "issue-temp", "2026000001")
    assert OWNER in text and "王芳" not in text  # whose card, name masked
    serial = data(env, "find", "2026000001")["hits"][0]["cards"][0]["serial"]

    text = onecard(env, "money", "topup", serial, "100")
    assert OWNER in text and "100.00 元" in text

    # a large top-up asks first; --json without --yes is refused, nothing moves
    error = refused(env, "money", "topup", serial, "600")
    assert error["code"] == "confirmation_required"
    done = invoke(env, "money", "topup", serial, "600", stdin="n\n")
    assert done.returncode == 2 and OWNER in done.stderr and "600.00" in done.stderr
    assert balance(env, serial) == "100.00"
    wrong = data(env, "money", "topup", serial, "600", "--yes")
    assert (wrong["amount_yuan"], wrong["balance_yuan"]) == ("600.00", "700.00")
    assert wrong["holder"]["name_masked"] == "王*"

    # reversed the same day, with a reason: a new movement referring to the top-up, audited
    error = refused(env, "money", "reverse", str(wrong["transfer_id"]), "--reason", " ", "--yes")
    assert error["rule"] == "TOP-1"
    text = onecard(env, "money", "reverse", str(wrong["transfer_id"]), "--reason", "充错金额", "-y")
    assert OWNER in text and "600.00" in text
    assert balance(env, serial) == "100.00"
    error = refused(env, "money", "reverse", str(wrong["transfer_id"]), "--reason", "again", "-y")
    assert error["code"] == "duplicate"
    audit = data(env, "report", "audit", "--entity", "transfer")
    assert any("money.topup_reversed" in json.dumps(row, ensure_ascii=False) for row in audit)
    assert data(env, "ledger", "verify")["problems"] == 0

    # only on the same campus day
    late = data(env, "money", "topup", serial, "20")["transfer_id"]
    error = refused({**env, "ONECARD_NOW": FRIDAY}, "money", "reverse", str(late), "--reason", "x")
    assert (error["code"], error["rule"]) == ("too_late", "TOP-1")

    # cash-out says how much cash to pay; a spent top-up can no longer be reversed
    text = onecard(env, "money", "cashout", serial)
    assert "请支付现金 pay out in cash: 120.00 元" in text and OWNER in text
    error = refused(env, "money", "reverse", str(late), "--reason", "x", "--yes")
    assert (error["code"], error["rule"]) == ("insufficient_funds", "TOP-1")
