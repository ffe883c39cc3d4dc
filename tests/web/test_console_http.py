"""The operator console over HTTP, in-process (issue 11): what an attacker on the counter network
or a clerk without rights can try, and the idle logout, without a browser."""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest
from openpyxl import load_workbook
from starlette.testclient import TestClient

from gateway.bootstrap import open_console_services
from gateway.config import load_settings
from gateway.services.base import Actor, Context, SystemClock
from gateway.services.center import CardCenter
from gateway.web.console.app import REPORT_NAMES, Console
from protocol.cards.clock import local
from protocol.cards.identity import make_national_id
from protocol.types import HolderCategory, Permission
from storage.sql import SqlRegistry
from tests.web.console_site import (
    CHIEF,
    CHIEF_PASSWORD,
    CLASS,
    INITIAL,
    NOPAY,
    VIEWER,
    Desk,
    seed_console,
)

NEW = "Counter-Desk-77!"
BASE = "http://127.0.0.1:8090"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Desk]:
    db = tmp_path_factory.mktemp("console-http") / "registry.sqlite3"
    return db, asyncio.run(seed_console(db))


@pytest.fixture
def console(site: tuple[Path, Desk]) -> Iterator[tuple[TestClient, Console, Clock]]:
    db, _ = site
    settings = load_settings(None, db=str(db), console={"cookie_secure": False, "origin": BASE})
    app = Console(settings.console, lambda: open_console_services(settings))
    clock = Clock()
    app.sessions.clock = clock
    with TestClient(app.build(), base_url=BASE) as client:
        yield client, app, clock


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found
    return found[1]


def _login(client: TestClient, user: str, password: str) -> str:
    page = client.get("/login")
    reply = client.post(
        "/login",
        data={"csrf": _csrf(page.text), "username": user, "password": password},
        follow_redirects=False,
    )
    assert reply.status_code == 303, reply.text
    return str(reply.headers["location"])


def _ready(client: TestClient, user: str, initial: str) -> None:
    """Logged in with the changed password (the first login changes it, ACC-3)."""
    if _login(client, user, NEW if user in _changed else initial) == "/password":
        page = client.get("/password")
        done = client.post(
            "/password",
            data={"csrf": _csrf(page.text), "old": initial, "new": NEW, "repeat": NEW},
            follow_redirects=False,
        )
        assert done.status_code == 303, done.text
        _changed.add(user)


_changed: set[str] = set()


def test_headers_csp_and_no_page_without_login(console: tuple[TestClient, Console, Clock]) -> None:
    client, _, _ = console
    reply = client.get("/", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/login"
    page = client.get("/login")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "connect-src 'self' http://127.0.0.1:8765" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "httponly" in page.headers["set-cookie"].lower()
    assert "samesite=strict" in page.headers["set-cookie"].lower()


def test_cross_site_and_tokenless_posts_are_refused(
    console: tuple[TestClient, Console, Clock],
) -> None:
    client, _, _ = console
    _ready(client, CHIEF, CHIEF_PASSWORD)
    csrf = _csrf(client.get("/").text)
    evil = client.post(
        "/graduation",
        data={"csrf": csrf, "college": "x", "class_name": "y"},
        headers={"origin": "http://evil.example"},
    )
    assert evil.status_code == 403
    assert client.post("/graduation", data={"college": "x"}).status_code == 403  # no token
    wrong = client.post("/graduation", data={"csrf": "guess", "college": "x"})
    assert wrong.status_code == 403


def test_idle_session_is_logged_out(console: tuple[TestClient, Console, Clock]) -> None:
    client, app, clock = console
    _ready(client, CHIEF, CHIEF_PASSWORD)
    assert client.get("/", follow_redirects=False).status_code == 200
    clock.t += app.config.idle_timeout_s + 1
    reply = client.get("/", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/login"
    assert "长时间未操作" in client.get("/login").text


def test_clerk_without_rights_is_refused_on_every_path(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """ACC-1/2: a clerk with card handling and reports only; no terminals, no top-up."""
    client, _, _ = console
    _, desk = site
    _ready(client, NOPAY, INITIAL)
    assert client.get("/terminals").status_code == 403
    alice = desk.people[0]
    assert client.get(f"/cards/{alice.serial}/topup").status_code == 403
    assert client.get("/reports?name=stock").status_code == 200  # REPORTS: granted
    assert client.get("/approvals/abc", follow_redirects=False).status_code == 405
    assert client.get("/cards/..%2F..%2Fetc/loss").status_code in (400, 404)
    assert client.get("/reports?name=../../x").status_code == 400
    assert client.get("/audit?day=2026-13-99x").status_code == 400


def test_reader_post_with_a_foreign_uid_is_refused(
    console: tuple[TestClient, Console, Clock],
) -> None:
    client, _, _ = console
    _ready(client, CHIEF, CHIEF_PASSWORD)
    csrf = _csrf(client.get("/").text)
    assert client.post("/reader", data={"csrf": csrf, "uid": "<script>"}).status_code == 400
    unknown = client.post("/reader", data={"csrf": csrf, "uid": "04FFFFFFFFFFFF"})
    assert unknown.status_code == 404
    assert "<script>" not in client.get("/search?q=<script>").text  # escaped, not echoed raw


def test_roster_upload_abuse_is_refused(console: tuple[TestClient, Console, Clock]) -> None:
    """An oversized body, a file that is not a roster, no CSRF token, another session's job."""
    client, _, _ = console
    _ready(client, CHIEF, CHIEF_PASSWORD)
    csrf = _csrf(client.get("/roster").text)
    exe = client.post(
        "/roster",
        data={"csrf": csrf, "kind": "student"},
        files={"file": ("roster.exe", b"MZ\x90\x00", "application/octet-stream")},
    )
    assert exe.status_code == 400
    huge = client.post(
        "/roster",
        content=b"x",
        headers={"content-length": str(30 * 1024 * 1024), "content-type": "multipart/form-data"},
    )
    assert huge.status_code == 400
    tokenless = client.post(
        "/roster", data={"kind": "student"}, files={"file": ("a.csv", b"x", "text/csv")}
    )
    assert tokenless.status_code == 403
    assert client.get("/roster/someone-elses-job").status_code == 404
    two = client.post(
        "/roster",
        data={"csrf": csrf, "kind": "student"},
        files=[("file", ("a.csv", b"x", "text/csv")), ("file", ("b.csv", b"y", "text/csv"))],
    )
    assert two.status_code == 400  # one file per upload


def _token(html: str) -> str:
    found = re.search(r'name="form_token" value="([^"]+)"', html)
    assert found
    return found[1]


def test_unlock_needs_the_holders_id_and_meal_disable_suspends(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """LOSS-3 at the counter: the ID is checked; MEAL-4: disabling suspends the card."""
    client, _, _ = console
    _, desk = site
    _ready(client, CHIEF, CHIEF_PASSWORD)
    alice = desk.people[0]
    page = client.get(f"/cards/{alice.serial}/loss")
    lost = client.post(
        f"/cards/{alice.serial}/loss",
        data={
            "csrf": _csrf(page.text),
            "form_token": _token(page.text),
            "presented_id": alice.national_id,
        },
        follow_redirects=False,
    )
    assert lost.status_code == 303
    page = client.get(f"/cards/{alice.serial}/unlock")
    wrong = client.post(
        f"/cards/{alice.serial}/unlock",
        data={
            "csrf": _csrf(page.text),
            "form_token": _token(page.text),
            "presented_id": desk.people[1].national_id,
        },
    )
    assert wrong.status_code in (403, 409) and "LOSS-3" in wrong.text
    page = client.get(f"/cards/{alice.serial}/unlock")
    done = client.post(
        f"/cards/{alice.serial}/unlock",
        data={
            "csrf": _csrf(page.text),
            "form_token": _token(page.text),
            "presented_id": alice.national_id,
        },
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert "正常" in client.get(done.headers["location"]).text
    staff = client.get(f"/search?q={desk.staff_number}", follow_redirects=True)
    meal_url = str(staff.url).split("?")[0] + "/meal?action=off"
    assert "/holders/" in meal_url
    page = client.get(meal_url)
    off = client.post(
        meal_url,
        data={"csrf": _csrf(page.text), "form_token": _token(page.text), "action": "off"},
        follow_redirects=True,
    )
    assert "停用" in off.text and "已停止" in off.text


def test_audit_browser_filters_in_the_query(console: tuple[TestClient, Console, Clock]) -> None:
    """By operator, entity and campus day; a bad day is refused; IDs in before/after masked."""
    client, _, _ = console
    _ready(client, CHIEF, CHIEF_PASSWORD)
    mine = client.get(f"/audit?actor={CHIEF}&entity=operator")
    assert mine.status_code == 200
    cells = re.findall(r"<td>([^<]*)</td>", mine.text)
    assert "operator.login" in cells and "operator.create" not in cells  # created by "setup"
    assert client.get("/audit?day=2026-02-30").status_code == 400
    assert client.get("/audit?day=1999-01-01").text.count("<tr>") == 1  # the header row only
    campus_day = local(datetime.now(UTC)).date().isoformat()  # UTC+8, not the machine's day
    today = client.get(f"/audit?day={campus_day}&actor={CHIEF}").text
    assert "operator.login" in today or "operator.password_changed" in today
    assert not re.search(r"\d{17}[\dX]", client.get("/audit").text)  # no whole national ID


def test_every_register_shows_and_downloads_as_xlsx(
    console: tuple[TestClient, Console, Clock],
) -> None:
    client, _, _ = console
    _ready(client, CHIEF, CHIEF_PASSWORD)
    for name, _zh, _en in REPORT_NAMES:
        page = client.get(f"/reports?name={name}")
        assert page.status_code == 200, (name, page.text[-500:])
        body = client.get(f"/reports/{name}.xlsx")
        assert body.status_code == 200 and body.headers["content-type"].startswith(
            "application/vnd.openxmlformats"
        )
        sheet = load_workbook(io.BytesIO(body.content)).active
        assert sheet is not None and sheet.max_row >= 1, name
    assert client.get("/reports/nope.xlsx").status_code == 400


def _post(client: TestClient, url: str, **fields: str) -> httpx.Response:
    """GET the form, then POST it with its tokens and ``fields``."""
    page = client.get(url)
    assert page.status_code == 200, page.text[-400:]
    return client.post(
        url,
        data={"csrf": _csrf(page.text), "form_token": _token(page.text), **fields},
        follow_redirects=False,
    )


def test_counter_forms_refuse_with_the_rule_and_check_rights(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """Issue 11's remaining forms over HTTP: REF-3 without (or with another) deposit receipt,
    SCR-1 on a card still out, EXC-5 hand-over without the original card, EXC-3 exchange before
    the 48 h, a forged TERM reason; a reports-only clerk gets 403 on every form (audited)."""
    client, _, _ = console
    _, desk = site
    k = desk.counter
    _ready(client, VIEWER, INITIAL)
    for path in ("fault", "exchange", "exchange-data", "refund", "terminate", "hand-over", "scrap"):
        assert client.get(f"/cards/{k['data']}/{path}").status_code == 403, path
    _ready(client, CHIEF, CHIEF_PASSWORD)
    visitor_id = make_national_id("110105", date(1980, 5, 6), 700)
    refund = f"/cards/{k['refund']}/refund"
    page = client.get(refund)
    assert re.search(r'id="deposit">¥[1-9]\d*\.\d\d<', page.text)  # the deposit to refund
    assert "访*" in page.text and "访客甲" not in page.text  # whose card, masked
    none = _post(client, refund, presented_id=visitor_id)
    assert none.status_code == 400 and "REF-3" in none.text and "deposit receipt" in none.text
    other = _post(client, refund, presented_id=visitor_id, receipt_no="1")
    assert "REF-3" in other.text and "不是该持卡人的押金收费票据" in other.text
    assert _post(client, refund, presented_id=visitor_id, receipt_no="x1").status_code == 400
    scrap = _post(client, f"/cards/{k['data']}/scrap")
    assert scrap.status_code == 409 and "transition_not_allowed" in scrap.text  # in use
    assert "未收回" in client.get(f"/cards/{k['data']}/scrap").text
    faulty = _post(client, f"/cards/{desk.original}/scrap")
    assert "EXC-6" in faulty.text and "warranty" in faulty.text  # to the vendor instead
    hand = _post(client, f"/cards/{k['hand_over']}/hand-over", presented_id="2024000003")
    assert "EXC-5" in hand.text and desk.original in hand.text  # the original must come back
    early = client.get(f"/cards/{k['fault']}/exchange")
    assert 'id="guard"' in early.text
    too_early = _post(client, f"/cards/{k['fault']}/exchange")
    assert too_early.status_code == 409
    forged = _post(client, f"/cards/{k['data']}/terminate", reason="x", presented_id="1")
    assert forged.status_code == 400
    assert client.get(f"/cards/{k['data']}/terminate").status_code == 200  # nothing changed
    huge = "99999999999999999999999"  # past BIGINT: no route matches (was a 500)
    for path in ("/refund-slips/", "/receipts/", "/holders/"):
        assert client.get(path + huge).status_code == 404, path
    denied = [r for r in _audit_rows(site[0]) if r[0] == VIEWER]
    assert len(denied) >= 7


def test_graduation_clearances_per_class_on_screen_and_as_xlsx(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """TERM-5 below the threshold (50 here) runs at once; its clearance report per class."""
    client, _, _ = console
    _, desk = site
    _ready(client, CHIEF, CHIEF_PASSWORD)
    college, class_name = CLASS
    done = _post(
        client,
        "/graduation",
        college=college,
        class_name=class_name,
        returned=" ".join(desk.class_serials),
    )
    assert done.status_code == 303 and "name=clearances" in done.headers["location"]
    page = client.get(done.headers["location"])
    assert page.text.count("GC20") == 3
    body = client.get(f"/reports/clearances.xlsx?college={college}&class={class_name}")
    sheet = load_workbook(io.BytesIO(body.content)).active
    assert sheet is not None and sheet.max_row == 4  # header + three students


def _audit_rows(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT actor, action FROM audit_log WHERE action = 'console.denied'"
        ).fetchall()


def _pii_reads(db: Path) -> list[tuple[str, str, str, str]]:
    """(actor, action, holder id, the ``after`` JSON) of every audited read of personal data."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT actor, action, entity_id, after FROM audit_log"
            " WHERE action LIKE 'pii.read_%' ORDER BY id"
        ).fetchall()


def test_full_id_photo_and_history_only_with_a_purpose_audited(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """Issue 15 (PIPL arts. 5-6, 28): the masked holder page needs no purpose and shows no
    transactions; the full ID, the photo and the history are read with one, each audited and
    counted in the reads-per-operator report. Forged reads without a purpose or with an
    unknown one, and reads by a clerk without the right, are refused with nothing read."""
    client, _, _ = console
    db, desk = site
    alice = desk.people[0]
    _ready(client, NOPAY, INITIAL)  # card handling and reports
    page = client.get(f"/holders/{alice.holder_id}")
    assert page.status_code == 200 and 'id="pii-read"' in page.text
    assert 'id="transfers"' not in page.text and alice.national_id not in page.text
    before = len(_pii_reads(db))
    url = f"/holders/{alice.holder_id}/read"
    csrf = _csrf(page.text)
    for forged in (
        {"what": "id"},  # no purpose at all
        {"what": "id", "purpose": "other"},  # "other" without the clerk's words
        {"what": "id", "purpose": "other", "note": "  a "},
        {"what": "id", "purpose": "curiosity"},
        {"what": "everything", "purpose": "identity"},
    ):
        refused = client.post(url, data={"csrf": csrf, **forged})
        assert refused.status_code == 400, forged
        assert alice.national_id not in refused.text
    assert client.post(url, data={"what": "id", "purpose": "identity"}).status_code == 403
    assert len(_pii_reads(db)) == before  # nothing was read
    shown = client.post(url, data={"csrf": csrf, "what": "id", "purpose": "identity"})
    assert shown.status_code == 200 and alice.national_id in shown.text
    assert "no-store" in shown.headers["cache-control"]
    history = client.post(
        url,
        data={"csrf": csrf, "what": "history", "purpose": "other", "note": "学生来电核对扣款"},
    )
    assert history.status_code == 200 and history.text.count("purchase") >= 1
    photo = client.post(url, data={"csrf": csrf, "what": "photo", "purpose": "photo"})
    assert photo.status_code == 200 and 'id="read-value"' in photo.text
    reads = _pii_reads(db)[before:]
    assert [(r[0], r[1], r[2]) for r in reads] == [
        (NOPAY, "pii.read_id", str(alice.holder_id)),
        (NOPAY, "pii.read_history", str(alice.holder_id)),
        (NOPAY, "pii.read_photo", str(alice.holder_id)),
    ]
    assert '"channel": "console"' in reads[0][3] and "核验持卡人身份" in reads[0][3]
    assert "学生来电核对扣款" in reads[1][3]
    report = client.get("/reports?name=pii-reads")
    assert report.status_code == 200
    assert re.search(rf"<td>{NOPAY}</td><td>pii.read_id</td><td>\d+</td><td>1</td>", report.text)
    # a clerk with reports only: no read buttons, and a forged read is refused and audited
    client.post("/logout", data={"csrf": _csrf(client.get("/").text)})
    _ready(client, VIEWER, INITIAL)
    page = client.get(f"/holders/{alice.holder_id}")
    assert 'id="read-id"' not in page.text and 'id="read-history"' not in page.text
    denied = client.post(url, data={"csrf": _csrf(page.text), "what": "id", "purpose": "identity"})
    assert denied.status_code == 403 and alice.national_id not in denied.text
    assert len(_pii_reads(db)) == before + 3
    assert (VIEWER, "console.denied") in _audit_rows(db)


def _holder_of(db: Path, serial: str) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT holder_id FROM cards WHERE serial = ?", (serial,)).fetchone()
    return int(row[0])


def test_extend_form_moves_the_validity_and_refuses_a_past_day(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """TERM-2/3 at the counter: the same CardService.extend the CLI calls."""
    client, _, _ = console
    db, desk = site
    serial = desk.counter["fault"]
    _ready(client, VIEWER, INITIAL)
    assert client.get(f"/cards/{serial}/extend").status_code == 403
    _ready(client, CHIEF, CHIEF_PASSWORD)
    holder_id = _holder_of(db, serial)
    assert f"/cards/{serial}/extend" in client.get(f"/holders/{holder_id}").text
    page = client.get(f"/cards/{serial}/extend")
    assert 'id="whose"' in page.text and 'id="fee">¥0.00<' in page.text
    past = _post(client, f"/cards/{serial}/extend", valid_through="2020-01-01")
    assert (
        past.status_code == 400 and "TERM-2" in past.text and "新有效期须晚于当前时间" in past.text
    )
    assert _post(client, f"/cards/{serial}/extend", valid_through="x").status_code == 400
    done = _post(client, f"/cards/{serial}/extend", valid_through="2030-12-31")
    assert done.status_code == 303 and done.headers["location"] == f"/holders/{holder_id}"
    assert "已延期至 2030-12-31" in client.get(done.headers["location"]).text
    assert "2030-12-31" in client.get(f"/cards/{serial}/extend").text


def test_hand_in_form_takes_a_card_back_once(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """SCR-1 custody: the exchanged faulty card comes back; an active card is refused."""
    client, _, _ = console
    db, desk = site
    _ready(client, VIEWER, INITIAL)
    assert client.get(f"/cards/{desk.original}/hand-in").status_code == 403
    _ready(client, CHIEF, CHIEF_PASSWORD)
    holder_id = _holder_of(db, desk.original)
    assert f"/cards/{desk.original}/hand-in" in client.get(f"/holders/{holder_id}").text
    active = _post(client, f"/cards/{desk.counter['data']}/hand-in")
    assert active.status_code == 409 and "SCR-1" in active.text and "不办理交回登记" in active.text
    done = _post(client, f"/cards/{desk.original}/hand-in")
    assert done.status_code == 303, done.text[-400:]
    assert "已交回中心" in client.get(done.headers["location"]).text
    again = _post(client, f"/cards/{desk.original}/hand-in")
    assert "SCR-1" in again.text and "该卡片已在智能卡中心" in again.text
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT in_custody FROM cards WHERE serial = ?", (desk.original,))
        assert row.fetchone()[0] in (1, True)


def test_dispose_form_disposes_the_scrap_register_once_a_year(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """SCR-2: terminate and scrap a card, dispose of the register; the second time is refused."""
    client, _, _ = console
    _, desk = site
    serial = desk.counter["terminate"]
    _ready(client, VIEWER, INITIAL)
    assert client.get("/scrap/dispose").status_code == 403
    _ready(client, CHIEF, CHIEF_PASSWORD)
    ended = _post(
        client, f"/cards/{serial}/terminate", reason="graduation", presented_id="2024000004"
    )
    assert ended.status_code == 303, ended.text[-400:]
    assert _post(client, f"/cards/{serial}/scrap").status_code == 303
    assert 'id="do-dispose"' in client.get("/reports?name=scrap").text
    page = client.get("/scrap/dispose")
    year = str(local(datetime.now(UTC)).year)
    assert f'id="year">{year}<' in page.text
    assert _post(client, "/scrap/dispose", year="20x6").status_code == 400
    done = _post(client, "/scrap/dispose", year=year)
    assert done.status_code == 303 and done.headers["location"] == "/reports?name=scrap"
    assert "已处置" in client.get(done.headers["location"]).text
    twice = _post(client, "/scrap/dispose", year=year)
    assert twice.status_code == 409 and "SCR-2" in twice.text and "already" in twice.text


async def _new_visitor(db: Path) -> int:
    registry = await SqlRegistry.open(db)
    try:
        center = CardCenter.build(Context(registry=registry, clock=SystemClock()))
        admin = Actor(name="setup", permissions=frozenset(Permission), operator_id=None)
        holder = await center.cards.register_temporary_holder(
            admin,
            name="访客乙",
            national_id=make_national_id("110105", date(1981, 5, 6), 701),
            category=HolderCategory.VISITING_PROFESSOR,
            valid_through=date(2030, 6, 30),
            application_ref="外事处 2026-2",
        )
        return holder.id
    finally:
        await registry.close()


def test_issue_temp_form_collects_the_deposit_and_refuses_a_second_card(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """ISS-10/12: a visitor without a card gets a temp card against a deposit receipt; ISS-1:
    a holder with a card in use gets no second one."""
    client, _, _ = console
    db, _ = site
    holder_id = asyncio.run(_new_visitor(db))
    url = f"/holders/{holder_id}/issue-temp"
    _ready(client, VIEWER, INITIAL)
    assert client.get(url).status_code == 403
    _ready(client, CHIEF, CHIEF_PASSWORD)
    assert 'id="do-issue-temp"' in client.get(f"/holders/{holder_id}").text
    page = client.get(url)
    assert re.search(r'id="deposit">¥[1-9]\d*\.\d\d<', page.text) and "ISS-10" in page.text
    assert "访*" in page.text and "访客乙" not in page.text
    done = _post(client, url, valid_through="2030-06-30")
    assert done.status_code == 303 and re.fullmatch(
        r"/receipts/\d+\?new=1", done.headers["location"]
    )
    assert "押金" in client.get(done.headers["location"]).text
    assert 'id="do-issue-temp"' not in client.get(f"/holders/{holder_id}").text
    second = _post(client, url)
    assert second.status_code == 409 and "ISS-1" in second.text and "已有在用卡片" in second.text
