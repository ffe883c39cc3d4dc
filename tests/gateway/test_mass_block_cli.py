"""The mass-block guard-rail at the command line (issue 11): `onecard graduate` and
`onecard batch exchange` that would put more than N cards on the deny list at once are refused
and filed; a second operator approves with `onecard approvals approve ID`; both are audited."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.services.base import Context, SystemClock
from gateway.services.center import CardCenter
from gateway.services.massblock import ApprovalRequired
from storage.sql import SqlRegistry
from tests.cli import invoke, onecard, operator_site

SAMPLE = Path(__file__).parents[2] / "docs" / "samples" / "students-2026.csv"
WHERE = ("--college", "计算机科学与技术学院", "--class", "计科2026-1班")


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, Any]:
    done = invoke(env, "--json", *args, stdin=stdin)
    return done.returncode, json.loads(done.stdout)


def audit(db: str, action: str) -> list[tuple[str, str, dict[str, Any]]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT actor, entity_id, after FROM audit_log WHERE action = ? ORDER BY id", (action,)
        ).fetchall()
    return [(a, e, json.loads(after)) for a, e, after in rows]


def states(db: str) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT serial, state FROM cards").fetchall())


def test_more_than_n_cards_need_a_second_operator(tmp_path: Path) -> None:
    env = {**operator_site(tmp_path), "ONECARD_CONSOLE__MASS_BLOCK_THRESHOLD": "2"}
    db = env["ONECARD_DB"]
    onecard(env, "stock", "purchase", "temp", "20", "--year", "2026-2027")
    onecard(env, "stock", "purchase", "smart", "20", "--year", "2026-2027")
    onecard(env, "stock", "requisition", "temp", "10", "--issued-by", "科长", "--usage", "测试")
    onecard(env, "stock", "requisition", "smart", "10", "--issued-by", "科长", "--usage", "测试")
    onecard(
        env, "holder", "import", str(SAMPLE), "--kind", "student", "--valid-through", "2030-07-31"
    )
    onecard(
        env, "operator", "add", "clerk2", "--name", "李审核", "--department", "卡务中心",
        "--permission", "card_handling",
        "--approved-by", "主任", "--application", "2026-7", "--password-stdin",
        stdin="Init-2026-pass\n",
    )  # fmt: skip
    second = {**env, "ONECARD_SESSION": str(tmp_path / "second.json")}
    onecard(second, "login", "clerk2", "--password-stdin", stdin="Init-2026-pass\n")
    onecard(second, "passwd", "--stdin", stdin="Init-2026-pass\nSecond-2026-ok\n")

    _, issued = run(env, "batch", "issue-temp", *WHERE)
    temps = {line["number"]: line["serial"] for line in issued["data"]["lines"]}
    _, ordered = run(env, "batch", "order-smart", *WHERE)
    smart = {line["number"]: line["serial"] for line in ordered["data"]["lines"]}
    exchanged = ["2026000001", "2026000002", "2026000003"]
    for number in exchanged:
        onecard(env, "card", "check-printed", smart[number], "--pass")

    # ISS-4: three temp cards onto the deny list, N = 2: refused, nothing written, filed
    code, reply = run(
        env, "batch", "exchange", *WHERE, "--returned", ",".join(temps[n] for n in exchanged),
        "--collected-by", "张班长",
    )  # fmt: skip
    assert code == 2 and reply["ok"] is False
    assert reply["error"]["code"] == "permission_denied"
    assert "须另一名操作员审批" in reply["error"]["message_zh"]
    pending = reply["data"]["pending"]
    assert (pending["cards"], pending["requested_by"]) == (3, "chief")
    assert {states(db)[temps[n]] for n in exchanged} == {"active"}
    code, _ = run(env, "approvals", "approve", pending["id"])
    assert code == 2  # not by the requester
    listing = onecard(second, "approvals", "list")
    assert pending["id"] in listing and "class exchange" in listing
    done = onecard(second, "approvals", "approve", pending["id"])
    assert "完成 done 3" in done
    assert {states(db)[temps[n]] for n in exchanged} == {"recovered"}
    code, again = run(second, "approvals", "approve", pending["id"])
    assert (code, again["error"]["code"]) == (2, "duplicate")

    # TERM-5: five live cards; the class graduation waits for the second operator
    live = [smart[n] for n in exchanged] + [temps["2026000004"], temps["2026000005"]]
    args = ("graduate", *WHERE, "--returned", ",".join(live))
    code, reply = run(env, *args)
    assert code == 2
    request = reply["data"]["pending"]["id"]
    # five live cards and the two smart cards still at the center (ordered, not handed over)
    assert reply["data"]["pending"]["cards"] == 7
    assert {states(db)[s] for s in live} == {"active"}
    # the service refuses the same change when called directly: no channel bypasses it
    with pytest.raises(ApprovalRequired):
        asyncio.run(_graduate_directly(db, live))
    _, listed = run(second, "approvals", "list")
    assert [p["id"] for p in listed["data"]] == [request]
    code, _ = run(env, "approvals", "reject", request)
    assert code == 2
    shown = onecard(second, "approvals", "approve", request)
    assert shown.count("GC2026-") == 5  # a clearance certificate each
    assert {states(db)[s] for s in live} == {"terminated"}
    requested = audit(db, "approval.requested")
    approved = audit(db, "approval.approved")
    assert [(a, e) for a, e, _ in requested] == [("chief", pending["id"]), ("chief", request)]
    assert [(a, e) for a, e, _ in approved] == [("clerk2", pending["id"]), ("clerk2", request)]
    assert approved[1][2] == {"requested_by": "chief", "cards": 7, "action": "graduate_class"}
    _, listed = run(env, "approvals", "list")
    assert listed["data"] == []

    # a threshold that is not a number is a usage error
    small = {**env, "ONECARD_CONSOLE__MASS_BLOCK_THRESHOLD": "abc"}
    assert invoke(small, "approvals", "list").returncode == 64


async def _graduate_directly(db: str, serials: list[str]) -> None:
    registry = await SqlRegistry.open(db)
    try:
        ctx = Context(registry=registry, clock=SystemClock(), mass_block_threshold=2)
        center = CardCenter.build(ctx)
        token = json.loads((Path(db).parent / "second.json").read_text())["token"]
        actor = await center.operators.authenticate(token)
        await center.cards.graduate_class(
            actor,
            college=WHERE[1],
            class_name=WHERE[3],
            returned_serials=serials,
            missing_paid=[],
        )
    finally:
        await registry.close()
