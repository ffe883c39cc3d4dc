"""The counter CLI for issue 10's ISS items, on a real SQLite file: other identity documents
(ISS-8/11, LOSS-1/3), staff numbers assigned later (ISS-6), and class batches (ISS-1/2/4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.cli import invoke, onecard, operator_site

SAMPLE = Path(__file__).parents[2] / "docs" / "samples" / "students-2026.csv"


def refused(env: dict[str, str], *args: str) -> str:
    """Run ``onecard ARGS``; the command must be refused. Returns stdout + stderr."""
    done = invoke(env, *args)
    assert done.returncode != 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def data(env: dict[str, str], *args: str) -> Any:
    reply = json.loads(onecard(env, "--json", *args))
    assert reply["ok"] is True
    return reply["data"]


def stocked_site(tmp_path: Path) -> dict[str, str]:
    env = operator_site(tmp_path)
    onecard(env, "stock", "purchase", "temp", "100", "--year", "2026-2027")
    onecard(env, "stock", "purchase", "smart", "100", "--year", "2026-2027")
    onecard(env, "stock", "requisition", "temp", "50", "--issued-by", "科长", "--usage", "测试")
    onecard(env, "stock", "requisition", "smart", "50", "--issued-by", "科长", "--usage", "测试")
    onecard(env, "receipts", "add-book", "R2026-01", "1000001", "1000050")
    return env


def register(env: dict[str, str], name: str, *id_args: str) -> dict[str, Any]:
    return data(  # type: ignore[no-any-return]
        env,
        "holder",
        "register-temp",
        "--name",
        name,
        *id_args,
        "--category",
        "foreign_teacher",
        "--valid-through",
        "2027-06-30",
        "--application",
        "外事处 2026-118",
    )


def test_iss8_iss11_passport_holders_at_the_counter(tmp_path: Path) -> None:
    """ISS-8/11: a foreign teacher registers with a passport (work number and LOSS-1 default
    password = its last 6); the number is shown masked; LOSS-1/3 identity checks at the counter
    take the passport; typos the format can catch are refused citing ISS-11; --national-id still
    works as it did."""
    env = stocked_site(tmp_path)
    anna = register(env, "Anna Schmidt", "--id-type", "passport", "--id-no", "c01x00t47")
    assert (anna["number"], anna["id_doc_type"]) == ("X00T47", "passport")
    shown = onecard(env, "holder", "show", f"#{anna['holder_id']}")
    assert "护照 passport C0*****47" in shown
    assert "C01X00T47" not in shown
    as_json = onecard(env, "--json", "holder", "show", f"#{anna['holder_id']}")
    assert "C01X00T47" not in as_json

    typo = refused(
        env, "holder", "register-temp", "--name", "Bo", "--id-type", "hk_macau_permit",
        "--id-no", "H1234567", "--category", "foreign_teacher", "--valid-through", "2027-06-30",
        "--application", "外事处 2026-119",
    )  # fmt: skip
    assert "ISS-11" in typo
    assert "港澳居民来往内地通行证号码" in typo
    assert "Hong Kong/Macau permit number" in typo
    assert "--national-id is for resident IDs" in refused(
        env, "holder", "register-temp", "--name", "Bo", "--id-type", "passport",
        "--national-id", "11010519491231002X", "--category", "foreign_teacher",
        "--valid-through", "2027-06-30", "--application", "x",
    )  # fmt: skip

    card = data(env, "card", "issue-temp", f"#{anna['holder_id']}")["card"]["serial"]
    onecard(env, "card", "loss", card, "--id-doc", "c01x00t47")  # LOSS-1 at the counter
    wrong = refused(env, "card", "unlock", card, "--id-doc", "C01X00T48")
    assert "LOSS-3" in wrong
    assert "C0*****48" in wrong
    assert "C01X00T48" not in wrong
    onecard(env, "card", "unlock", card, "--id-doc", "C01X00T47")  # LOSS-3

    old = register(env, "张三", "--national-id", "11010519491231002X")  # as in the README
    assert old["number"] == "31002X"
    assert old["id_doc_type"] == "resident_id"


def test_iss8_roster_with_a_document_type_column(tmp_path: Path) -> None:
    """ISS-6 / ISS-8: a new-staff list may say 证件类型; each number is validated by its type
    and the holder records it."""
    env = stocked_site(tmp_path)
    roster = tmp_path / "staff.csv"
    roster.write_text(
        "姓名,工号,部门,证件类型,证件号码,照片\n"
        "李老师,T0001,数学系,,11010519491231002X,p1.jpg\n"
        "John Smith,T0002,外语学院,护照,E12345678,p2.jpg\n"
        "陈老师,T0003,外语学院,台胞证,1234567,p3.jpg\n",
        encoding="utf-8",
    )
    bad = refused(env, "--json", "holder", "import", str(roster), "--kind", "staff")
    assert "台湾居民来往大陆通行证号码应为8位数字" in bad
    assert "Taiwan permit number is 8 digits" in bad
    onecard(env, "holder", "import", str(roster), "--kind", "staff", "--skip-bad")
    shown = onecard(env, "holder", "show", "T0002")
    assert "护照 passport E1*****78" in shown
    assert "身份证" not in shown


def test_iss6_staff_number_added_when_hr_assigns_it(tmp_path: Path) -> None:
    """ISS-6: a new staff member without a number gets a temp card on written proof; the clerk
    adds the number HR assigns (once; a change needs --correct), then the temp card is exchanged
    for the smart card."""
    env = stocked_site(tmp_path)
    roster = tmp_path / "staff.csv"
    roster.write_text(
        "姓名,工号,部门,身份证号,照片\n李老师,,数学系,11010519491231002X,p1.jpg\n",
        encoding="utf-8",
    )
    onecard(env, "holder", "import", str(roster), "--kind", "staff")
    temp = data(env, "card", "issue-temp", "#1", "--proof", "数学系证明 2026-7")["card"]["serial"]
    assert "ISS-6" in refused(env, "card", "order-smart", "#1")

    onecard(env, "holder", "update", "#1", "--set", "number=T2026051", "--reason", "人事处通知 45")
    again = refused(env, "holder", "update", "#1", "--set", "number=T9", "--reason", "x")
    assert "ISS-6" in again
    assert "T2026051" in again
    onecard(
        env, "holder", "update", "#1", "--set", "number=T2026052", "--correct",
        "--reason", "录入错误",
    )  # fmt: skip
    smart = data(env, "card", "order-smart", "T2026052")["card"]["serial"]
    onecard(env, "card", "check-printed", smart, "--pass")
    onecard(
        env, "card", "hand-over", smart, "--temp-returned", temp, "--id-doc",
        "11010519491231002X",
    )  # fmt: skip
    cards = data(env, "holder", "show", "T2026052")["cards"]
    assert {c["serial"]: c["state"] for c in cards} == {temp: "recovered", smart: "active"}
    audit = onecard(env, "--json", "report", "audit", "--entity", "holder")
    assert "holder.number_set" in audit
    assert "holder.number_corrected" in audit


COLLEGE, CLASS = "计算机科学与技术学院", "计科2026-1班"


def test_iss1_iss2_iss4_class_batches_at_the_counter(tmp_path: Path) -> None:
    """ISS-1: temp cards for a class (all-or-nothing, or --skip-bad), the hand-out list for the
    college; ISS-2: the class's print batch exported; ISS-4: the monitor exchanges the returned
    temp cards (and pays for a lost one) for the smart cards in one go."""
    from openpyxl import load_workbook

    env = stocked_site(tmp_path)
    onecard(
        env, "holder", "import", str(SAMPLE), "--kind", "student", "--valid-through", "2030-07-31"
    )
    onecard(env, "card", "issue-temp", "2026000001")
    where = ("--college", COLLEGE, "--class", CLASS)
    whole = refused(env, "batch", "issue-temp", *where)
    assert "ISS-1" in whole
    assert "nothing done" in whole
    as_json = json.loads(refused(env, "--json", "batch", "issue-temp", *where))
    assert as_json["ok"] is False
    assert as_json["error"]["rule"] == "ISS-1"
    assert [line["status"] for line in as_json["data"]["lines"]] == ["refused"] + ["ok"] * 4

    hand_out = tmp_path / "hand-out.xlsx"
    issued = data(env, "batch", "issue-temp", *where, "--skip-bad", "--out", str(hand_out))
    temps = {line["number"]: line["serial"] for line in issued["lines"] if line["status"] == "ok"}
    assert sorted(temps) == ["2026000002", "2026000003", "2026000004", "2026000005"]
    sheet = load_workbook(hand_out).worksheets[0]
    assert sheet.max_row == 5  # header + 4 students

    print_batch = tmp_path / "print.xlsx"
    ordered = data(env, "batch", "order-smart", *where, "--out", str(print_batch))
    smart = {line["number"]: line["serial"] for line in ordered["lines"]}
    assert len(smart) == 5
    assert load_workbook(print_batch).worksheets[0].max_row == 6
    for number in ("2026000002", "2026000003", "2026000004"):
        onecard(env, "card", "check-printed", smart[number], "--pass")

    shown = onecard(
        env, "batch", "exchange", *where, "--returned", f"{temps['2026000002']},{temps['2026000003']}",
        "--temp-lost", "2026000004", "--collected-by", "张班长",
    )  # fmt: skip
    assert "完成 done 3" in shown
    assert "30.00 元" in shown
    holder = data(env, "holder", "show", "2026000002")
    states = {c["serial"]: c["state"] for c in holder["cards"]}
    assert states == {temps["2026000002"]: "recovered", smart["2026000002"]: "active"}
    again = refused(env, "batch", "exchange", *where, "--returned", temps["2026000005"],
                    "--collected-by", "张班长")  # fmt: skip
    assert "ISS-3" in again  # its smart card is not checked yet
