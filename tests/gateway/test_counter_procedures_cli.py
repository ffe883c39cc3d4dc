"""The counter's procedures as the rules say them, through `onecard` on a real SQLite file (issue
10): REP-4/EXC-5 collection against the receipt or the original card, signed for; SCR-1/2 only
cards the center has back; REF-3 the original deposit receipt; EXC-3 the clerk's finding; FEE-2
the cashier's real name; LOSS-4 no top-up on a void card; ACC-3 complex passwords and the account
life cycle (ACC-2 approval recorded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import invoke, onecard, operator_site

pytestmark = pytest.mark.slow  # some 20 `onecard` runs each

SAMPLE = Path(__file__).parents[2] / "docs" / "samples" / "students-2026.csv"
THURSDAY = "2026-11-26T10:05+08:00"
SATURDAY = "2026-11-28T10:05+08:00"  # 48 hours later
TUESDAY = "2026-12-01T09:00+08:00"  # two working days after Saturday


def data(env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    """``onecard --json ARGS``: the command succeeds; its ``data``."""
    reply = json.loads(onecard(env, "--json", *args, stdin=stdin))
    assert reply["ok"] is True, reply
    return reply["data"]


def refused(env: dict[str, str], *args: str, stdin: str | None = None) -> dict[str, Any]:
    """``onecard --json ARGS`` is refused (exit status 2): the error (code, rule, message)."""
    done = invoke(env, "--json", *args, stdin=stdin)
    assert done.returncode == 2, done.stdout + done.stderr
    reply = json.loads(done.stdout)
    assert reply["ok"] is False
    error: dict[str, Any] = reply["error"]
    return error


def at(env: dict[str, str], moment: str) -> dict[str, str]:
    return {**env, "ONECARD_NOW": moment}


def counter_site(tmp_path: Path) -> dict[str, str]:
    """A logged-in chief (王科长) with stock, one receipt book and the sample roster."""
    env = at(operator_site(tmp_path), THURSDAY)
    for kind in ("temp", "smart"):
        onecard(env, "stock", "purchase", kind, "50", "--year", "2026-2027")
        onecard(env, "stock", "requisition", kind, "20", "--issued-by", "科长", "--usage", "测试")
    onecard(env, "receipts", "add-book", "R2026-01", "1000001", "1000050")
    onecard(
        env, "holder", "import", str(SAMPLE), "--kind", "student", "--valid-through", "2030-07-31"
    )
    return env


def test_rep4_loss4_scr1_fee2_replacement_collected_against_the_receipt(tmp_path: Path) -> None:
    """REP-4: the replacement smart card is handed over against its fee receipt, to someone who
    shows an ID and signs; LOSS-4: the replaced card takes no top-up; SCR-1: the lost card is
    scrapped only once it is handed in; FEE-2: the receipt names 王科长, not the login."""
    env = counter_site(tmp_path)
    temp = data(env, "card", "issue-temp", "2026000001")["card"]["serial"]
    onecard(env, "money", "topup", temp, "100")
    onecard(env, "card", "loss", temp, "--id-doc", "2026000001")
    env = at(env, SATURDAY)
    replaced = data(env, "card", "replace", temp, "--id-doc", "2026000001", "--kind", "smart")
    smart = replaced["card"]["serial"]
    receipt = str(replaced["receipts"][0]["receipt_no"])

    error = refused(env, "money", "topup", temp, "10")
    assert (error["code"], error["rule"]) == ("card_void", "LOSS-4")
    assert error["message"].startswith("补卡作废")
    error = refused(env, "card", "scrap", temp)
    assert (error["code"], error["rule"]) == ("not_eligible", "SCR-1")

    env = at(env, TUESDAY)
    error = refused(env, "card", "hand-over", smart, "--id-doc", "2026000001", "--signed")
    assert (error["code"], error["rule"]) == ("invalid_input", "REP-4")
    assert "收费票据" in error["message"]
    error = refused(
        env, "card", "hand-over", smart, "--receipt", "1000049", "--id-doc", "2026000001"
    )
    assert (error["rule"], "1000049" in error["message"]) == ("REP-4", True)
    error = refused(env, "card", "hand-over", smart, "--receipt", receipt, "--id-doc", "2026000001")
    assert (error["rule"], "签字" in error["message"]) == ("REP-4", True)
    error = refused(env, "card", "hand-over", smart, "--receipt", receipt, "--signed")
    assert (error["code"], error["rule"]) == ("auth_failed", "REP-4")
    handed = data(
        env, "card", "hand-over", smart, "--receipt", receipt, "--id-doc", "2026000001", "--signed"
    )
    assert handed["card"]["state"] == "active"
    (line,) = data(env, "report", "hand-overs")
    assert (line["serial"], line["rule"], line["receipt"], line["collector"]) == (
        smart,
        "REP-4",
        int(receipt),
        "王芳",
    )
    assert line["signed"] == line["in person"] == "是 / yes"

    receipts = data(env, "report", "receipts", "--since", "2026-11-01", "--until", "2026-12-31")
    assert {r["cashier"] for r in receipts if r.get("cashier")} == {"王科长"}

    assert data(env, "card", "hand-in", temp)["in_custody"] is True
    assert data(env, "card", "scrap", temp)["state"] == "scrapped"


def test_exc3_exc5_ref3_fault_finding_original_card_and_deposit_receipt(tmp_path: Path) -> None:
    """EXC-3: a holder-damaged card is refused with its finding recorded, an unrepairable fault
    is frozen; EXC-5: the new smart card is handed over only against the original card; REF-3:
    the deposit refund checks the original deposit receipt."""
    env = counter_site(tmp_path)
    temp = data(env, "card", "issue-temp", "2026000002")["card"]["serial"]
    onecard(env, "money", "topup", temp, "80")
    fault = ("card", "fault", temp, "--id-doc", "2026000002")
    error = refused(env, *fault, "--finding", "卡面断裂", "--holder-damaged")
    assert (error["code"], error["rule"]) == ("not_eligible", "EXC-3")
    assert "补卡" in error["message"]
    error = refused(env, *fault, "--finding", "触点氧化", "--repairable")
    assert (error["code"], error["rule"]) == ("not_eligible", "EXC-3")
    assert data(env, "card", "show", temp)["state"] == "active"
    audit = data(env, "report", "audit", "--entity", "card")
    assert [
        json.loads(r["after"])["finding"] for r in audit if r["action"].endswith("inspection")
    ] == [
        "触点氧化",
        "卡面断裂",
    ]
    assert data(env, *fault, "--finding", "芯片无响应，外观完好")["state"] == "frozen"

    env = at(env, SATURDAY)
    smart = data(env, "card", "exchange", temp, "--kind", "smart")["card"]["serial"]
    env = at(env, TUESDAY)
    error = refused(env, "card", "hand-over", smart, "--id-doc", "2026000002", "--signed")
    assert (error["code"], error["rule"]) == ("not_eligible", "EXC-5")
    assert temp in error["message"]
    error = refused(
        env, "card", "hand-over", smart, "--old-card", "2000000099", "--id-doc", "2026000002"
    )
    assert error["rule"] == "EXC-5"
    handed = data(
        env, "card", "hand-over", smart, "--old-card", temp, "--id-doc", "2026000002", "--signed"
    )
    assert handed["card"]["state"] == "active"
    assert data(env, "card", "show", temp)["in_custody"] is True

    nid = "11010519491231002X"
    onecard(
        env,
        "holder",
        "register-temp",
        "--name",
        "Anna Schmidt",
        "--national-id",
        nid,
        "--category",
        "foreign_teacher",
        "--valid-through",
        "2027-06-30",
        "--application",
        "外事处 2026-118",
    )
    issued = data(env, "card", "issue-temp", "#11")
    visitor_card = issued["card"]["serial"]
    deposit_receipt = str(issued["receipts"][0]["receipt_no"])
    error = refused(env, "card", "refund", visitor_card, "--id-doc", nid)
    assert (error["code"], error["rule"]) == ("invalid_input", "REF-3")
    assert "押金收费票据" in error["message"]
    error = refused(env, "card", "refund", visitor_card, "--id-doc", nid, "--receipt", "1000001")
    assert (error["rule"], "1000001" in error["message"]) == ("REF-3", True)
    slip = data(env, "card", "refund", visitor_card, "--id-doc", nid, "--receipt", deposit_receipt)
    assert (slip["amount"], str(slip["deposit_receipt_no"])) == (3000, deposit_receipt)


def test_acc3_complex_passwords_and_the_account_life_cycle(tmp_path: Path) -> None:
    """ACC-3: `operator add` refuses "short" and other simple passwords; ACC-2: unlock,
    re-enable, reset password (changed at the next login) and a permission change are done by
    the accounts administrator with the approver recorded in the audit log."""
    env = operator_site(tmp_path)
    add = (
        "operator",
        "add",
        "cash01",
        "--name",
        "李会计",
        "--department",
        "后勤管理处",
        "--permission",
        "cash_machine",
        "--approved-by",
        "网管中心主任 张",
        "--application",
        "后勤〔2026〕7号",
        "--password-stdin",
    )
    for weak in ("short", "alllowercase1", "Cash01-pass"):
        error = refused(env, *add, stdin=f"{weak}\n")
        assert (error["code"], error["rule"]) == ("invalid_input", "ACC-3")
        assert "三类" in error["message"]
    data(env, *add, stdin="Init-2026-pass\n")
    clerk = {**env, "ONECARD_SESSION": str(tmp_path / "clerk.json")}
    for _ in range(5):
        refused(clerk, "login", "cash01", "--password-stdin", stdin="Wrong-pass-9\n")
    error = refused(clerk, "login", "cash01", "--password-stdin", stdin="Init-2026-pass\n")
    assert error["code"] == "account_locked"

    approval = ("--approved-by", "网管中心主任 张")
    error = refused(env, "operator", "unlock", "cash01", "--approved-by", " ")
    assert error["rule"] == "ACC-2"
    data(env, "operator", "unlock", "cash01", *approval)
    data(clerk, "login", "cash01", "--password-stdin", stdin="Init-2026-pass\n")
    data(env, "operator", "disable", "cash01")
    data(env, "operator", "enable", "cash01", *approval, "--application", "后勤〔2026〕9号")
    error = refused(
        env, "operator", "reset-password", "cash01", *approval, "--password-stdin", stdin="short\n"
    )
    assert error["rule"] == "ACC-3"
    data(
        env,
        "operator",
        "reset-password",
        "cash01",
        *approval,
        "--password-stdin",
        stdin="Reset-2026-pw\n",
    )
    login = data(clerk, "login", "cash01", "--password-stdin", stdin="Reset-2026-pw\n")
    assert login["must_change_password"] is True
    error = refused(clerk, "whoami")
    assert error["code"] == "password_change_required"
    error = refused(
        env,
        "operator",
        "permissions",
        "cash01",
        "--permission",
        "reports",
        *approval,
        "--application",
        " ",
    )
    assert error["rule"] == "ACC-2"
    data(
        env,
        "operator",
        "permissions",
        "cash01",
        "--permission",
        "reports",
        "--permission",
        "cash_machine",
        *approval,
        "--application",
        "后勤〔2026〕11号",
    )
    rows = {r["username"]: r for r in data(env, "operator", "list")}
    assert json.loads(rows["cash01"]["permissions"]) == ["cash_machine", "reports"]
    audit = data(env, "report", "audit", "--entity", "operator")
    actions = {r["action"]: json.loads(r["after"]) for r in audit if r["after"]}
    for action in ("unlock", "enable", "password_reset", "permissions"):
        assert actions[f"operator.{action}"]["approved_by"] == "网管中心主任 张", action
    assert "Reset-2026-pw" not in json.dumps(audit)
