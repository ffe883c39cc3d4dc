"""One error boundary for every `onecard` command (issue 10, "what makes a clerk's day safe"):
no tracebacks; usage errors exit 64, refusals and unreadable or unwritable files exit 2; with
``--json`` (before or after the subcommand) every output, usage errors and refusals included, is
one JSON object and a refusal is never ``"ok": true``; errors show what was typed and cite the
rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import Done, invoke, operator_site


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return operator_site(tmp_path_factory.mktemp("clerk-errors"))


def as_json(done: Done) -> dict[str, Any]:
    """Standard output is exactly one JSON object (nothing else on stdout)."""
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def no_traceback(done: Done) -> None:
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_report_to_an_unsupported_file_is_a_usage_error_not_a_traceback(
    env: dict[str, str], tmp_path: Path
) -> None:
    done = invoke(env, "report", "receipts", "--out", str(tmp_path / "x.txt"))
    no_traceback(done)
    assert done.returncode == 64
    assert ".xlsx" in done.stderr and "x.txt" in done.stderr
    done = invoke(env, "report", "receipts", "--out", str(tmp_path / "no" / "x.xlsx"), "--json")
    no_traceback(done)
    assert done.returncode == 64
    error = as_json(done)["error"]
    assert error["code"] == "usage" and "no such directory" in error["message"]


def test_json_after_the_subcommand_and_usage_errors_as_json(env: dict[str, str]) -> None:
    reply = as_json(done := invoke(env, "whoami", "--json"))
    assert done.returncode == 0 and reply["ok"] is True
    assert reply["data"]["name"] == "chief"

    done = invoke(env, "card", "shw", "1000000000", "--json")
    assert done.returncode == 64
    reply = as_json(done)
    assert reply["ok"] is False and reply["error"]["code"] == "usage"
    assert "show" in reply["error"]["message"]  # click's "did you mean"

    done = invoke(env, "card", "--json")  # a group without its command
    assert done.returncode == 64 and as_json(done)["error"]["code"] == "usage"
    done = invoke(env, "money", "topup", "--json")  # missing arguments
    assert done.returncode == 64 and as_json(done)["ok"] is False
    done = invoke(env, "money", "topup", "1000000000", "12.345")  # three decimals
    assert done.returncode == 64, done.stdout + done.stderr
    assert "12.345" in done.stderr and "参数 AMOUNT 的值无效" in done.stderr
    error = as_json(invoke(env, "card", "show", "--json"))["error"]
    assert error["message_zh"] == "缺少参数 SERIAL" and "Missing argument" in error["message_en"]


def test_a_mistyped_card_number_is_shown_back(env: dict[str, str]) -> None:
    done = invoke(env, "card", "show", "20000O0003")
    assert done.returncode == 2
    assert "20000O0003" in done.stderr  # what was typed, in full
    error = as_json(invoke(env, "--json", "card", "show", "20000O0003"))["error"]
    assert error["code"] == "card_unknown" and error["typed"] == {"serial": "20000O0003"}


def test_import_refusal_is_not_ok_and_cites_the_rule(env: dict[str, str], tmp_path: Path) -> None:
    roster = tmp_path / "bad.csv"
    roster.write_text(
        "学号,姓名,身份证号,学院,班级\n2026000001,张三,110105194912310021,计算机学院,计科1班\n",
        encoding="utf-8",
    )
    done = invoke(env, "holder", "import", str(roster), "--kind", "student", "--json")
    assert done.returncode == 2
    reply = as_json(done)
    assert reply["ok"] is False and reply["error"]["rule"] == "ISS-1"
    assert reply["data"]["rows"][0]["row"] == 2
    done = invoke(env, "holder", "import", str(roster), "--kind", "student")
    assert done.returncode == 2 and "ISS-1" in done.stderr and "未导入" in done.stderr


def test_unreadable_files_and_missing_session(env: dict[str, str], tmp_path: Path) -> None:
    done = invoke(env, "holder", "import", str(tmp_path / "none.csv"), "--kind", "student")
    no_traceback(done)
    assert done.returncode == 64
    directory = tmp_path / "a-directory.csv"
    directory.mkdir()
    done = invoke(env, "--json", "meal", "import", str(directory))
    no_traceback(done)
    assert done.returncode == 64 and as_json(done)["ok"] is False

    logged_out = {**env, "ONECARD_SESSION": str(tmp_path / "none.json")}
    done = invoke(logged_out, "whoami", "--json")
    assert done.returncode == 2
    assert as_json(done)["error"]["code"] == "auth_failed"


def test_an_unexpected_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A registry file that is not SQLite: status 2 or 70, one message, never a traceback."""
    bogus = tmp_path / "not-a-db.sqlite3"
    bogus.write_bytes(b"this is not a database" * 100)
    env = {"ONECARD_DB": str(bogus), "ONECARD_SESSION": str(tmp_path / "s.json")}
    (tmp_path / "s.json").write_text('{"token": "x"}')
    done = invoke(env, "--json", "whoami")
    no_traceback(done)
    assert done.returncode in (2, 70)
    assert as_json(done)["ok"] is False


def test_login_lockout_and_disabled_account_say_why_and_until_when(tmp_path: Path) -> None:
    """Login refusals cite the rule; the lockout names its end (campus time); a disabled
    account says how it is re-enabled (ACC-2)."""
    env = operator_site(tmp_path)
    other = {**env, "ONECARD_SESSION": str(tmp_path / "cash01.json")}
    invoke(
        env,
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
        stdin="Cash-desk-2026\n",
    )
    done = invoke(other, "login", "cash01", "--password-stdin", stdin="Wrong-pass-9\n")
    assert done.returncode == 2
    assert "ACC-3" in done.stderr and "username=cash01" in done.stderr
    assert "Wrong-pass-9" not in done.stdout + done.stderr  # a password is never shown back
    for _ in range(4):
        done = invoke(other, "--json", "login", "cash01", "--password-stdin", stdin="Wrong-9x\n")
    error = as_json(done)["error"]
    assert error["rule"] == "ACC-2" and "locked until 20" in error["message_en"]
    done = invoke(other, "login", "cash01", "--password-stdin", stdin="Cash-desk-2026\n")
    assert done.returncode == 2 and "锁定至 20" in done.stderr and "operator unlock" in done.stderr

    invoke(env, "operator", "unlock", "cash01", "--approved-by", "网管中心主任 张")
    invoke(env, "operator", "disable", "cash01")
    error = as_json(
        invoke(other, "--json", "login", "cash01", "--password-stdin", stdin="Cash-desk-2026\n")
    )["error"]
    assert (error["code"], error["rule"]) == ("account_locked", "ACC-2")
    assert "operator enable" in error["message"]


def test_a_registry_held_too_long_is_unavailable_in_the_clerks_words_not_an_internal_error(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counter command whose write waits past the lock timeout (another process holding the
    registry; the chaos suite's full disk gives the same driver error class) used to end as
    "internal error" (exit 70) — the storage port let the driver's OperationalError out. Now it is
    the contract's ``unavailable``: nothing done, try again, exit 2."""
    import sqlite3

    import storage.engine

    monkeypatch.setattr(storage.engine, "BUSY_TIMEOUT_MS", 300)
    holder = sqlite3.connect(env["ONECARD_DB"], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        done = invoke(env, "stock", "purchase", "temp", "5", "--year", "2026-2027", "--json")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    no_traceback(done)
    assert done.returncode == 2, done.stdout + done.stderr
    error = as_json(done)["error"]
    assert error["code"] == "unavailable"
    assert "数据库暂不可用" in error["message"] and "locked" in error["message"]
