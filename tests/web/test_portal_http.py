"""The web app in-process (Starlette's test client, real services and SQLite): security and
behaviour that need no browser. The real browser runs in test_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from openpyxl import load_workbook
from starlette.testclient import TestClient

from gateway.bootstrap import web_app
from gateway.config import load_settings
from gateway.payments.sandbox import InProcessTransport, SandboxBank, SandboxProvider
from gateway.services.alerts import AlertService
from gateway.services.base import Context, SystemClock
from gateway.services.holders import HolderService
from gateway.services.payments import PaymentService
from gateway.services.portal import PortalService
from gateway.web.app import WebServices, create_app
from protocol.errors import OnecardError
from storage.sql import SqlRegistry
from tests.web.site import PURCHASES_PER_STUDENT, Person, seed


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[TestClient, list[Person]]]:
    db = tmp_path / "web.sqlite3"
    people = asyncio.run(seed(db))
    settings = load_settings(
        None, db=str(db), web={"cookie_secure": False, "confirm_timeout_ms": 0}
    )
    with TestClient(web_app(settings), base_url="http://localhost") as client:
        yield client, people


async def _audit_actions(db: Path) -> list[tuple[str, str | None]]:
    """(action, the channel recorded with it) of every audit row, oldest first."""
    registry = await SqlRegistry.open(db)
    try:
        async with registry.read() as tx:
            rows = await tx.rows("SELECT action, after FROM audit_log ORDER BY id")
    finally:
        await registry.close()
    return [(str(r["action"]), json.loads(r["after"] or "{}").get("channel")) for r in rows]


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def _token(html: str) -> str:
    m = re.search(r'name="form_token" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def login(client: TestClient, who: Person, password: str | None = None) -> str:
    page = client.get("/login")
    resp = client.post(
        "/login",
        data={"csrf": _csrf(page.text), "number": who.number, "password": password or who.password},
        follow_redirects=False,
    )
    assert resp.status_code == 303, resp.text
    return str(resp.headers["location"])


def change_password(client: TestClient, who: Person, new: str = "campus-card-9") -> None:
    form = client.get("/password")
    resp = client.post(
        "/password",
        data={
            "csrf": _csrf(form.text),
            "form_token": _token(form.text),
            "old": who.password,
            "new": new,
            "repeat": new,
        },
        follow_redirects=False,
    )
    assert resp.headers["location"] == "/cards", resp.text


def test_headers_cookie_and_no_script(site: tuple[TestClient, list[Person]]) -> None:
    client, _people = site
    page = client.get("/login")
    csp = page.headers["content-security-policy"]
    assert "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "<script" not in page.text and "style=" not in page.text


def test_login_default_password_goes_to_password_but_loss_first(
    site: tuple[TestClient, list[Person]],
) -> None:
    client, (alice, *_) = site
    assert login(client, alice) == "/password"
    assert client.get("/history", follow_redirects=False).headers["location"] == "/password"
    cards = client.get("/cards")  # LOSS-1: a lost card never waits on a password change
    assert cards.status_code == 200 and "¥200.00" not in cards.text  # purchases were made
    assert alice.national_id not in cards.text
    assert re.search(r"5115\*+\d{3}[\dX]", cards.text)


def test_csrf_required_and_session_rotates(site: tuple[TestClient, list[Person]]) -> None:
    client, (alice, *_) = site
    client.get("/login")
    before = client.cookies.get("onecard_session")
    bad = client.post("/login", data={"csrf": "forged", "number": alice.number, "password": "x"})
    assert bad.status_code == 403 and "页面已过期" in bad.text
    login(client, alice)
    assert client.cookies.get("onecard_session") != before


def test_double_submitted_loss_report_does_one_thing(
    site: tuple[TestClient, list[Person]], tmp_path: Path
) -> None:
    client, (alice, *_) = site
    login(client, alice)
    confirm = client.get(f"/cards/{alice.card_id}/loss")
    data = {"csrf": _csrf(confirm.text), "form_token": _token(confirm.text)}
    first = client.post(f"/cards/{alice.card_id}/loss", data=data, follow_redirects=False)
    second = client.post(f"/cards/{alice.card_id}/loss", data=data, follow_redirects=False)
    assert first.status_code == second.status_code == 303
    done = client.get("/loss/done")
    assert "可补卡时间" in done.text and "¥30.00" in done.text and "智能卡中心" in done.text
    cards = client.get("/cards")
    assert "挂失" in cards.text and '/loss"' not in cards.text
    actions = asyncio.run(_audit_actions(tmp_path / "web.sqlite3"))
    assert actions.count(("card.report_loss", None)) == 1  # one report for two submits
    assert ("web.login", "web") in actions and ("web.loss_report", "web") in actions


def test_holder_sees_only_own_cards(site: tuple[TestClient, list[Person]]) -> None:
    client, (alice, bob, *_) = site
    login(client, alice)
    resp = client.get(f"/cards/{bob.card_id}/loss")
    assert resp.status_code == 404 and "没有这张卡" in resp.text


def test_bad_input_gets_a_clear_page(site: tuple[TestClient, list[Person]]) -> None:
    client, (alice, *_) = site
    login(client, alice)
    change_password(client, alice)
    for url in (
        "/history?start=2026-13-40",
        "/history?kind=steal",
        "/history?page=-1",
        "/history?x=1",
        "/nowhere",
        "/cards/99999999/loss",
        "/cards/9223372036854775808/loss",  # past a BIGINT: 404, not a database overflow
        f"/cards/{'9' * 40}/loss",
        f"/cards/{'0' * 19}{alice.card_id}/loss",  # leading zeros: still past 18 digits
    ):
        resp = client.get(url, follow_redirects=True)
        assert 400 <= resp.status_code < 500, url
        assert "Traceback" not in resp.text
        assert "无法完成" in resp.text, url
    # a forged POST with a card id past 18 digits (a BIGINT) is 404 before any query
    form = client.get(f"/cards/{alice.card_id}/loss")
    forged = client.post(
        f"/cards/{'9' * 19}/loss",
        data={"csrf": _csrf(form.text), "form_token": _token(form.text)},
    )
    assert forged.status_code == 404 and "Traceback" not in forged.text


def test_password_rules_then_history_and_exports(site: tuple[TestClient, list[Person]]) -> None:
    client, (alice, *_) = site
    login(client, alice)
    for new, says in (
        ("short", "长度"),
        (alice.password, "初始密码"),
        (alice.national_id[2:12], "身份证"),
        (f"x{alice.number}", "学号"),
    ):
        form = client.get("/password")
        resp = client.post(
            "/password",
            data={
                "csrf": _csrf(form.text),
                "form_token": _token(form.text),
                "old": alice.password,
                "new": new,
                "repeat": new,
            },
        )
        assert resp.status_code == 400 and says in resp.text, (new, resp.text)
    change_password(client, alice)
    hist = client.get("/history")
    assert "第一食堂" in hist.text and "下一页" in hist.text
    only = client.get("/history", params={"place": "超市", "kind": "purchase"})
    assert "教育超市" in only.text and "第一食堂" not in only.text.split("<tbody>")[1]
    exported = client.get("/history.csv", params={"place": "食堂"})
    assert exported.headers["content-disposition"].startswith("attachment")
    rows = list(csv.reader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert len(rows) == 1 + (PURCHASES_PER_STUDENT + 1) // 2
    assert all(r[3] == "第一食堂" for r in rows[1:])
    book = load_workbook(io.BytesIO(client.get("/history.xlsx").content))
    sheet = book.active
    assert sheet is not None and sheet.max_row == 1 + PURCHASES_PER_STUDENT + 1  # + top-up


def test_alerts_page_lists_the_top_up_and_marks_read(site: tuple[TestClient, list[Person]]) -> None:
    client, (alice, *_) = site
    login(client, alice)
    change_password(client, alice)
    cards = client.get("/cards")
    assert "充值到账" in cards.text and "未读" in cards.text
    page = client.get("/alerts")
    assert "充值到账" in page.text and "200.00" in page.text
    resp = client.post(
        "/alerts",
        data={"csrf": _csrf(page.text), "form_token": _token(page.text)},
        follow_redirects=False,
    )
    assert resp.status_code == 303
    assert "mark-read" not in client.get("/alerts").text
    assert client.get("/alerts?page=0").status_code == 400


@pytest.fixture
def paying_site(tmp_path: Path) -> Iterator[tuple[TestClient, list[Person], SandboxBank]]:
    """The portal with the sandbox provider in process (the HTTP sandbox runs in the demo)."""
    db = tmp_path / "web.sqlite3"
    people = asyncio.run(seed(db))
    settings = load_settings(
        None, db=str(db), web={"cookie_secure": False, "confirm_timeout_ms": 0}
    )
    key = b"sandbox-test-key-0123456789abcdef"
    bank = SandboxBank(key, merchant_id="onecard-test")

    @contextlib.asynccontextmanager
    async def services() -> AsyncIterator[WebServices]:
        registry = await SqlRegistry.open(db)
        try:
            ctx = Context(registry=registry, clock=SystemClock())
            provider = SandboxProvider(
                InProcessTransport(bank),
                key=key,
                merchant_id="onecard-test",
                notify_url="http://localhost/pay/notify/sandbox",
            )
            yield WebServices(
                portal=PortalService(ctx),
                alerts=AlertService(ctx),
                topup=PaymentService(ctx, provider),
                sweep_interval_s=3600,
            )
        finally:
            await registry.close()

    app = create_app(settings.web, services)
    with TestClient(app, base_url="http://localhost") as client:
        yield client, people, bank


def test_online_top_up_credited_once_and_forgery_refused(
    paying_site: tuple[TestClient, list[Person], SandboxBank],
) -> None:
    """TOP-1 on the web: a duplicated callback credits once, a forged one is refused."""
    client, (alice, *_), bank = paying_site
    login(client, alice)
    change_password(client, alice)
    page = client.get("/topup")
    assert "去支付" in page.text
    bad = client.post(
        "/topup",
        data={"csrf": _csrf(page.text), "form_token": _token(page.text), "amount": "abc"},
    )
    assert bad.status_code == 400 and "请输入金额" in bad.text
    page = client.get("/topup")
    resp = client.post(
        "/topup",
        data={"csrf": _csrf(page.text), "form_token": _token(page.text), "amount": "50"},
        follow_redirects=False,
    )
    assert resp.status_code == 303
    number = resp.headers["location"].rsplit("/", 1)[1]
    assert (
        "待支付" in client.get(f"/topup/{number}").text
        or "pending" in client.get(f"/topup/{number}").text
    )
    bank.pay(number)
    forged = client.post("/pay/notify/sandbox", content=bank.notification(number, key=b"x" * 32))
    assert forged.status_code == 400
    body = bank.notification(number)
    first = client.post("/pay/notify/sandbox", content=body)
    again = client.post("/pay/notify/sandbox", content=body)
    assert first.status_code == again.status_code == 200
    done = client.get(f"/topup/{number}")
    assert "¥50.00" in done.text and "order-state" in done.text
    cards = client.get("/cards")
    assert "¥222.00" in cards.text  # 172.00 + 50.00, once
    assert client.post("/pay/notify/wechat", content=body).status_code == 404
    assert client.get("/topup/OC..%2F..").status_code in (404, 400)


def test_per_address_limit_across_accounts(tmp_path: Path) -> None:
    """Failed logins from one address are limited whichever accounts they try."""
    db = tmp_path / "web.sqlite3"
    people = asyncio.run(seed(db))
    settings = load_settings(
        None,
        db=str(db),
        web={"cookie_secure": False, "max_failures_per_address": 3, "address_window_s": 600},
    )
    with TestClient(web_app(settings), base_url="http://localhost") as client:
        for who in people[:3]:
            page = client.get("/login")
            resp = client.post(
                "/login",
                data={"csrf": _csrf(page.text), "number": who.number, "password": "wrong-1"},
            )
            assert resp.status_code == 403
        page = client.get("/login")
        resp = client.post(
            "/login",
            data={
                "csrf": _csrf(page.text),
                "number": people[3].number,
                "password": people[3].password,
            },
        )
        assert resp.status_code == 429 and "次数过多" in resp.text


async def _kiosk_login(db: Path, number: str, password: str) -> str:
    """A kiosk login through the same service the gateway uses: the error code, or 'ok'."""
    registry = await SqlRegistry.open(db)
    try:
        holders = HolderService(Context(registry=registry, clock=SystemClock()))
        try:
            await holders.authenticate(number, password, channel="kiosk")
        except OnecardError as exc:
            return exc.code.value
        return "ok"
    finally:
        await registry.close()


def test_lockout_is_shared_between_kiosk_and_web(
    site: tuple[TestClient, list[Person]], tmp_path: Path
) -> None:
    """LOSS-1: a lockout earned at the kiosk holds on the web, and the other way round."""
    client, (alice, bob, *_) = site
    db = tmp_path / "web.sqlite3"
    codes = [asyncio.run(_kiosk_login(db, alice.number, "wrong-1")) for _ in range(5)]
    assert codes[-1] == "account_locked", codes
    page = client.get("/login")
    resp = client.post(
        "/login",
        data={"csrf": _csrf(page.text), "number": alice.number, "password": alice.password},
    )
    assert resp.status_code == 403 and "次数过多" in resp.text
    for _ in range(5):
        page = client.get("/login")
        client.post(
            "/login", data={"csrf": _csrf(page.text), "number": bob.number, "password": "wrong-2"}
        )
    assert asyncio.run(_kiosk_login(db, bob.number, bob.password)) == "account_locked"
