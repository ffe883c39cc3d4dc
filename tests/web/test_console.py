"""The operator console in a real browser (Debian's Chromium, Playwright), issue 11.

One stack per module: a seeded SQLite registry, the console (in-process uvicorn, a clock the
test moves for the 48 h rule), a private Mosquitto for the terminals' retained status, a real
pcscd with the project's virtual card and ``onecard reader-agent`` (its CLI composition, in a
thread) on loopback. Screenshots go to ``$ONECARD_SCREENSHOTS`` as ``console-*.png``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from openpyxl import load_workbook
from playwright.sync_api import Browser, Page, sync_playwright

from gateway.bootstrap import open_console_services
from gateway.cli.reader import run_agent
from gateway.config import load_settings
from gateway.metrics import Metrics
from gateway.readers.agent import ReaderAgent
from gateway.services.base import FixedClock
from gateway.web.console.app import Console
from protocol.cardfile.layout import CampusRecord
from protocol.cards.identity import make_national_id
from protocol.types import CardKind
from simulators.vcard import VirtualCard, VpcdCard
from storage.sql import SqlRegistry
from tests.broker import PrivateBroker, Probe, free_port
from tests.gateway.conftest import CONFIG_PREFIX, Pcscd, _pick_base_port
from tests.web.console_site import (
    CHIEF,
    CHIEF_PASSWORD,
    CLASS,
    INITIAL,
    LOCKED,
    NOPAY,
    SECOND,
    THRESHOLD,
    Desk,
    seed_console,
)
from tests.web.test_browser import CHROMIUM, DESKTOP, _launch

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.pcsc]

READER = "Virtual PCD 00 00"
NEW = "Counter-Desk-77!"


@dataclass
class Stack:
    base: str
    desk: Desk
    db: Path
    clock: FixedClock
    broker: PrivateBroker
    browser: Browser
    pcscd: Pcscd
    metrics: Metrics
    idle: SessionClock

    def page(self) -> Page:
        context = self.browser.new_context(viewport=DESKTOP, locale="zh-CN", accept_downloads=True)
        return context.new_page()


class SessionClock:
    """The console sessions' clock: monotonic time plus what a test skips."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


class _Thread:
    """An asyncio program in a thread (the console's or the agent's server)."""

    def __init__(self, name: str, main: Any) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by the fixture
                self.error = exc

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()


def _wait_http(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def _shot(page: Page, name: str) -> None:
    target = os.environ.get("ONECARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"console-{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # no silent skip: the console is tested in a real browser or the run fails
    assert Path(CHROMIUM).exists(), "needs Debian's chromium (deploy/ci/install-system.sh)"
    root = tmp_path_factory.mktemp("console")
    db = root / "registry.sqlite3"
    desk = asyncio.run(seed_console(db))
    console_port, agent_port = free_port(), free_port()
    base = f"http://127.0.0.1:{console_port}"
    users = {"pos-001": "pw-pos-001", "gateway": "pw-gateway", "console-mon": "pw-mon"}
    clock = FixedClock(datetime.now(UTC))
    # the pcsc tests' prefix: their fixture recognises (and may stop) this daemon as a test's own
    daemon = Pcscd(tmp_path_factory.mktemp(CONFIG_PREFIX, numbered=True), _pick_base_port())
    daemon.start()
    metrics = Metrics()  # a gateway's metrics, served as the gateway's ops port serves them
    metrics.denylist_version.set(7)
    metrics.decisions.labels(op="purchase", result="approved").inc(40)
    metrics.errors.labels(code="card_lost").inc(2)
    metrics.decision_seconds.labels(op="purchase").observe(0.004)
    metrics_http = _serve_metrics(metrics)
    with PrivateBroker(root / "broker", users=users, monitor_users=("console-mon",)) as broker:
        settings = load_settings(
            None,
            db=str(db),
            mqtt={"host": "127.0.0.1", "port": broker.port},
            console={
                "port": console_port,
                "cookie_secure": False,
                "reader_agent_url": f"http://127.0.0.1:{agent_port}",
                "origin": base,
                "mass_block_threshold": THRESHOLD,
                "mqtt_username": "console-mon",
                "mqtt_password": "pw-mon",
                "idle_timeout_s": 600,
                "gateway_metrics_urls": [
                    f"http://127.0.0.1:{metrics_http.server_address[1]}/metrics"
                ],
            },
        )
        console = Console(settings.console, lambda: open_console_services(settings, clock=clock))
        idle = SessionClock()
        console.sessions.clock = idle  # the idle logout test moves the sessions' time
        server = uvicorn.Server(
            uvicorn.Config(
                console.build(),
                host="127.0.0.1",
                port=console_port,
                log_config=None,
                access_log=False,
            )
        )
        web = _Thread("console", server.serve)
        agents: list[ReaderAgent] = []
        agent = _Thread(
            "reader-agent",
            lambda: run_agent(
                str(db), origin=base, port=agent_port, readers=None, ready=agents.append
            ),
        )
        try:
            _wait_http(f"{base}/healthz")
            _wait_http(f"http://127.0.0.1:{agent_port}/healthz")
            with sync_playwright() as pw:
                browser = _launch(pw)
                try:
                    yield Stack(base, desk, db, clock, broker, browser, daemon, metrics, idle)
                finally:
                    browser.close()
        finally:
            server.should_exit = True
            if agents and agents[0].server is not None:
                agents[0].server.should_exit = True
            web.thread.join(10)
            agent.thread.join(10)
            daemon.stop()
            metrics_http.shutdown()
            metrics_http.server_close()
    assert web.error is None, web.error
    assert agent.error is None, agent.error


def _serve_metrics(metrics: Metrics) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.render()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _login(page: Page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_load_state()


def _first_login(page: Page, base: str, username: str, initial: str, new: str) -> None:
    """ACC-3: the first login goes to the password change; nothing else opens before it."""
    _login(page, base, username, initial)
    assert page.url.endswith("/password"), page.url
    page.goto(f"{base}/reports")
    assert page.url.endswith("/password")  # no page before the change
    page.fill("input[name=old]", initial)
    page.fill("input[name=new]", new)
    page.fill("input[name=repeat]", new)
    page.click("form[action='/password'] button[type=submit]")
    page.wait_for_url(f"{base}/")


def _chief(stack: Stack) -> Page:
    page = stack.page()
    _login(page, stack.base, CHIEF, NEW)
    if page.url.endswith("/login"):  # first test in the module: the first login
        _first_login(page, stack.base, CHIEF, CHIEF_PASSWORD, NEW)
    return page


def _audit(db: Path, action: str) -> list[dict[str, Any]]:
    """Audit rows of ``action`` (read in a thread: Playwright's sync API owns this one's loop)."""

    async def read() -> list[dict[str, Any]]:
        registry = await SqlRegistry.open(db)
        try:
            async with registry.read() as tx:
                return [dict(r) for r in await tx.find("audit_log", action=action, order_by="id")]
        finally:
            await registry.close()

    out: list[list[dict[str, Any]]] = []
    worker = threading.Thread(target=lambda: out.append(asyncio.run(read())))
    worker.start()
    worker.join(10)
    return out[0]


def test_login_forced_password_change_weak_refused_and_lockout(stack: Stack) -> None:
    page = stack.page()
    _login(page, stack.base, CHIEF, CHIEF_PASSWORD)
    assert page.url.endswith("/password")
    _shot(page, "password")
    page.fill("input[name=old]", CHIEF_PASSWORD)
    page.fill("input[name=new]", "short")
    page.fill("input[name=repeat]", "short")
    page.click("form[action='/password'] button[type=submit]")
    assert "ACC-3" in (page.text_content("[role=alert]") or "") or "8" in (
        page.text_content("[role=alert]") or ""
    )
    page.fill("input[name=old]", CHIEF_PASSWORD)
    page.fill("input[name=new]", NEW)
    page.fill("input[name=repeat]", NEW)
    page.click("form[action='/password'] button[type=submit]")
    page.wait_for_url(f"{stack.base}/")
    assert "陈主任" in (page.text_content("#operator") or "")
    _shot(page, "home")
    page.context.close()
    # lockout: five wrong passwords, then even the right one waits
    other = stack.page()
    for _ in range(5):
        _login(other, stack.base, LOCKED, "Wrong-Pass-1!")
    _login(other, stack.base, LOCKED, INITIAL)
    assert "锁定" in (other.text_content("[role=alert]") or "")
    assert other.url.endswith("/login")
    _shot(other, "login-locked")
    other.context.close()


def test_find_by_number_and_by_the_card_on_the_reader_with_meal3_write_back(stack: Stack) -> None:
    page = _chief(stack)
    alice = stack.desk.people[0]
    page.fill("#q", "学生")  # part of a name: a list (gateway.services.search, issue 10)
    page.click("form.search button")
    page.wait_for_url("**/search?q=*")
    assert page.locator("#results tbody tr").count() == 2
    _shot(page, "search")
    page.click("#results a:has-text('学生1')")
    assert alice.number in (page.text_content("#holder-number") or "")
    page.goto(f"{stack.base}/")
    page.fill("#q", alice.number)  # one hit opens the holder at once
    page.click("form.search button")
    page.wait_for_url("**/holders/*")
    assert alice.number in (page.text_content("#holder-number") or "")
    assert alice.national_id not in (page.content())  # masked
    # the card on the reader: the staff member's card, whose type (MEAL-3) waits to be written
    d = stack.desk
    card = VirtualCard(
        bytes.fromhex(d.staff_uid),
        CampusRecord(serial=d.staff_serial, holder_number=d.staff_number, kind=CardKind.TEMP),
    )
    link = VpcdCard(card, port=stack.pcscd.port_of(READER))
    page.goto(f"{stack.base}/")
    page.wait_for_selector("#reader-status:has-text('读卡器就绪')", timeout=10_000)
    started = time.monotonic()
    link.insert()
    try:
        page.wait_for_url("**/holders/*", timeout=10_000)
        print(f"\nconsole: card on the reader -> holder page {time.monotonic() - started:.2f} s")
        assert d.staff_name in (page.text_content("#holder-name") or "")
        page.wait_for_selector("#reader-status:has-text('卡类型已写入')", timeout=5_000)
        assert card.record.type_group == 1  # MEAL-3: written onto the card ...
        page.reload()
        assert "待写卡" not in (page.text_content("main") or "")  # ... and the flag cleared
        _shot(page, "holder-from-reader")
    finally:
        link.remove()
    page.wait_for_selector("#reader-status:has-text('卡片已从读卡器移开')", timeout=5_000)
    written = _audit(stack.db, "card.written")
    assert written and written[-1]["actor"].startswith("reader-agent@")
    page.context.close()


def test_loss_47h_refused_with_the_time_48h_replacement_with_receipt(stack: Stack) -> None:
    page = _chief(stack)
    bob = stack.desk.people[1]
    page.goto(f"{stack.base}/search?q={bob.number}")
    page.click("#do-loss")
    assert "***" not in (page.text_content("#whose") or "x***")  # masked name shown
    page.fill("input[name=presented_id]", bob.national_id)
    _shot(page, "loss-confirm")
    page.click("#confirm-loss")
    page.wait_for_url("**/holders/*")
    assert "已挂失" in (page.text_content(".flash.ok") or "")
    possible = (page.text_content("#replaceable-from") or "").strip()
    assert possible.startswith("补卡可办理时间")
    stack.clock.advance(hours=47)
    page.click("#do-replace")
    assert page.is_visible("#too-early")
    when = (page.text_content("#possible-from") or "").strip()
    assert when and when in possible
    page.fill("input[name=presented_id]", bob.national_id)
    page.click("#confirm-replace")  # the clerk tries anyway: the rule refuses, with the time
    text = page.text_content("#refusal") or ""
    assert "REP-1" in text and when in text, text
    _shot(page, "replace-refused-47h")
    stack.clock.advance(hours=1)
    page.goto(f"{stack.base}/cards/{bob.serial}/replace")
    assert not page.is_visible("#too-early")
    page.fill("input[name=presented_id]", bob.national_id)
    page.click("#confirm-replace")
    page.wait_for_url("**/receipts/*")
    # book B1 starts at 1; the counter forms' seed took 1 (an exchange fee) and 2 (a deposit)
    assert (page.text_content("#receipt-no") or "").strip() == "3"
    assert "30.00" in (page.text_content("#receipt-amount") or "")  # temp card, REP-2
    assert "陈主任" in (page.text_content("#receipt-cashier") or "")  # FEE-2: real name
    page.emulate_media(media="print")
    assert not page.is_visible("header.top")  # print CSS: the receipt only
    _shot(page, "receipt-80mm")
    page.context.close()


def test_top_up_with_confirmation_and_a_forged_request_refused_and_audited(stack: Stack) -> None:
    page = _chief(stack)
    alice = stack.desk.people[0]
    page.goto(f"{stack.base}/search?q={alice.number}")
    before = (page.text_content("#balance") or "").strip()
    page.click("#do-topup")
    page.fill("input[name=amount]", "600")
    page.click("#topup-next")
    assert "¥600.00" in (page.text_content("#topup-confirm") or "")
    assert "大额" in (page.text_content("main") or "")  # a large amount asks twice
    _shot(page, "topup-confirm")
    page.click("#topup-confirm-button")
    page.wait_for_url("**/holders/*")
    after = (page.text_content("#balance") or "").strip()
    assert float(after[1:]) - float(before[1:]) == 600.0
    page.context.close()
    # a clerk without top-up rights: no button, and a forged POST is refused and audited
    clerk = stack.page()
    _first_login(clerk, stack.base, NOPAY, INITIAL, NEW)
    clerk.goto(f"{stack.base}/search?q={alice.number}")
    assert clerk.locator("#do-topup").count() == 0
    csrf = clerk.locator("input[name=csrf]").first.get_attribute("value")
    forged = clerk.request.post(
        f"{stack.base}/cards/{alice.serial}/topup",
        form={"csrf": csrf or "", "amount": "100", "confirm": "yes", "form_token": "x"},
    )
    assert forged.status == 403
    clerk.goto(f"{stack.base}/cards/{alice.serial}/topup")
    assert "topup_center" in (clerk.text_content("#refusal") or "")
    _shot(clerk, "permission-denied")
    denied = _audit(stack.db, "console.denied")
    assert [r["actor"] for r in denied].count(NOPAY) >= 2
    # no CSRF token: refused before anything runs
    bare = clerk.request.post(f"{stack.base}/cards/{alice.serial}/loss", form={"x": "1"})
    assert bare.status == 403
    clerk.context.close()


def test_history_and_full_id_only_with_a_purpose_audited(stack: Stack) -> None:
    """Issue 15: the holder page is masked (no transactions); the clerk picks a purpose and
    reads the history, then writes one for the full ID; both reads are audited and counted in
    the reads-per-operator register."""
    page = _chief(stack)
    alice = stack.desk.people[0]
    page.goto(f"{stack.base}/holders/{alice.holder_id}")
    assert page.locator("#transfers").count() == 0
    assert alice.national_id not in page.content()
    page.select_option("#purpose", "dispute")
    page.click("#read-history")
    page.wait_for_selector("#transfers")
    assert page.locator("#transfers tbody tr").count() >= 2  # purchases and top-ups
    assert "消费争议核查" in (page.text_content("#read-purpose") or "")
    _shot(page, "pii-history")
    page.go_back()
    page.select_option("#purpose", "other")
    page.fill("#purpose-note", "补卡申请表核对")
    page.click("#read-id")
    page.wait_for_selector("#read-value")
    assert (page.text_content("#read-value") or "").strip() == alice.national_id
    reads = [r for r in _audit(stack.db, "pii.read_id") if r["actor"] == CHIEF]
    assert reads and "补卡申请表核对" in reads[-1]["after"]
    page.goto(f"{stack.base}/reports?name=pii-reads")
    cells = page.locator("#report tbody tr", has_text="pii.read_history").first
    assert CHIEF in (cells.text_content() or "")
    page.context.close()


def test_report_download_opens_in_openpyxl(stack: Stack) -> None:
    page = _chief(stack)
    page.goto(f"{stack.base}/reports?name=receipts")
    _shot(page, "reports")
    with page.expect_download() as info:
        page.click("#download-xlsx")
    data = Path(info.value.path()).read_bytes()
    ws = load_workbook(io.BytesIO(data)).active
    assert ws is not None
    rows = list(ws.iter_rows(values_only=True))
    assert any("收据" in str(h) for h in rows[0]), rows[0]
    assert len(rows) >= 2  # the replacement fee's receipt (and the seed's)
    page.context.close()


def _presence(page: Page, base: str, want: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        page.goto(f"{base}/terminals")
        text = page.text_content("#t-pos-001 .presence") or ""
        if want in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_terminals_page_shows_a_pos_going_offline_and_back(stack: Stack) -> None:
    page = _chief(stack)
    topic = "onecard/v1/t/pos-001/status"
    online = json.dumps({"v": 1, "state": "online", "kind": "pos"}).encode()
    offline = json.dumps({"v": 1, "state": "offline"}).encode()
    with Probe(stack.broker, "pos-001", "pw-pos-001", will=(topic, offline)) as pos:
        pos.connect()
        pos.publish(topic, online, retain=True)
        assert "在线" in _presence(page, stack.base, "在线")
        _shot(page, "terminals")
        pos.publish(topic, offline, retain=True)
        assert "离线" in _presence(page, stack.base, "离线")
        # its offline sales as the gateway knows them: 4 uploaded, 1 refused, seq 4 missing
        backlog = page.locator("#t-pos-001 .backlog")
        assert (backlog.locator(".uploaded").text_content() or "") == "4"
        assert "缺号 1" in (backlog.locator(".missing").text_content() or "")
        assert "拒绝 1" in (backlog.text_content() or "")
        assert backlog.locator(".held").is_visible()  # offline: its new sales wait on it
        _shot(page, "terminals-offline")
        pos.publish(topic, online, retain=True)
        assert "在线" in _presence(page, stack.base, "在线")
    # disable and re-enable a terminal; add one and see its broker password once
    page.click("#t-pos-001 button.toggle")
    assert "否" in (page.text_content("#t-pos-001") or "")
    page.click("#t-pos-001 button.toggle")
    assert "是" in (page.text_content("#t-pos-001") or "")
    page.click("#new-terminal")
    page.fill("input[name=terminal_id]", "pos-002")
    page.select_option("select[name=kind]", "pos")
    page.fill("input[name=merchant_id]", "shop1")
    page.click("#add-terminal")
    assert len((page.text_content("#terminal-password") or "").strip()) >= 16
    page.goto(f"{stack.base}/terminals")
    assert page.locator("#t-pos-002").count() == 1
    page.context.close()


def test_mass_block_needs_a_second_operator(stack: Stack) -> None:
    page = _chief(stack)
    college, class_name = CLASS
    page.goto(f"{stack.base}/graduation")
    page.fill("input[name=college]", college)
    page.fill("input[name=class_name]", class_name)
    page.fill("textarea[name=returned]", " ".join(stack.desk.class_serials))
    page.click("#graduate")
    page.wait_for_url("**/approvals")
    item = page.locator("#pending li").first
    assert item.locator(".count").text_content() == "3"
    assert item.locator("button.approve").count() == 0  # not by the requester
    request_id = (item.get_attribute("id") or "").removeprefix("approval-")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
    self_approve = page.request.post(
        f"{stack.base}/approvals/{request_id}",
        form={"csrf": csrf, "decision": "approve", "form_token": page_token(page)},
    )
    assert self_approve.status == 403
    page.context.close()
    second = stack.page()
    _first_login(second, stack.base, SECOND, INITIAL, NEW)
    second.goto(f"{stack.base}/approvals")
    _shot(second, "approvals")
    second.click(f"#approval-{request_id} button.approve")
    second.wait_for_url("**/approvals")
    assert "离校 3 人" in (second.text_content(".flash.ok") or "")
    assert second.is_visible("#no-pending")
    requested = _audit(stack.db, "approval.requested")
    approved = _audit(stack.db, "approval.approved")
    assert requested[-1]["actor"] == CHIEF and approved[-1]["actor"] == SECOND
    # the audit log browser, filtered by operator
    second.goto(f"{stack.base}/audit?actor={SECOND}")
    text = second.text_content("#audit") or ""
    assert "approval.approved" in text and "approval.requested" not in text
    _shot(second, "audit")
    second.context.close()


def page_token(page: Page) -> str:
    """A real form token of this session (the forged approval carries one: only the rule stops
    it, not a stale form)."""
    page.goto(page.url.rsplit("/", 1)[0] + "/graduation")
    return page.locator("input[name=form_token]").first.get_attribute("value") or "none"


def test_live_page_updates_without_reload(stack: Stack) -> None:
    """The supervisor's live figures come from the gateways' /metrics and follow them."""
    page = _chief(stack)
    page.goto(f"{stack.base}/live")
    assert (page.text_content("#live-approved") or "").strip() == "40"
    assert (page.text_content("#live-version") or "").strip() == "7"
    assert "card_lost" in (page.text_content("#live-declines") or "")
    assert "5.0 ms" in (page.text_content("#live-p99") or "")  # the 5 ms bucket
    stack.metrics.decisions.labels(op="purchase", result="approved").inc(60)
    stack.metrics.errors.labels(code="insufficient_funds").inc()
    page.wait_for_selector("#live-approved:has-text('100')", timeout=6_000)  # no reload
    assert "insufficient_funds" in (page.text_content("#live-declines") or "")
    rate = (page.text_content("#live-rate") or "").strip()
    assert rate != "—" and float(rate) > 0
    _shot(page, "live")
    page.context.close()


def test_roster_upload_reports_every_bad_row_then_imports_the_rest(
    stack: Stack, tmp_path: Path
) -> None:
    """ISS-1: the CLI's reader and report, in the browser, with a progress bar; a GBK CSV."""
    good = [make_national_id("320102", date(2008, 3, 1 + i), 500 + i) for i in range(2)]
    lines = [
        "姓名,学号,身份证号,学院,班级",
        f"新生甲,2026100001,{good[0]},化学学院,化学2026-1班",
        "新生乙,2026100002,12345,化学学院,化学2026-1班",
        f"新生丙,2026100003,{good[1]},化学学院,化学2026-1班",
    ]
    path = tmp_path / "新生名单.csv"
    path.write_bytes("\r\n".join(lines).encode("gbk"))
    page = _chief(stack)
    page.goto(f"{stack.base}/roster")
    page.select_option("select[name=kind]", "student")
    page.set_input_files("input[name=file]", str(path))
    page.click("#upload")
    page.wait_for_selector("#roster-summary", timeout=10_000)
    assert page.get_attribute("#roster-progress", "value") == "100"
    errors = page.text_content("#roster-errors") or ""
    assert "3" in errors and "身份证" in errors, errors  # row 3, the ID column
    _shot(page, "roster")
    page.click("#roster-confirm")  # skip the bad row, import the rest
    assert "2" in (page.text_content("#roster-imported") or "")
    page.goto(f"{stack.base}/search?q=新生")
    assert page.locator("#results tbody tr").count() == 2
    page.context.close()


def _form(page: Page, base: str, url: str) -> None:
    page.goto(f"{base}{url}")
    assert page.locator("#whose").count() == 1  # whose card it is, before confirming


def test_counter_forms_fault_exchange_data_change_hand_over_terminate_scrap_refund(
    stack: Stack,
) -> None:
    """Issue 11's remaining counter procedures, one browser step each: EXC-3 fault (release
    time shown), EXC-5 exchange after the 48 h (fee receipt), EXC-4 data change, EXC-5 hand-over
    against the original card, TERM then SCR-1 of the card it brought back, REF with the deposit
    receipt and its printable slip, and the class's clearance report (after the mass block)."""
    base, k = stack.base, stack.desk.counter
    page = _chief(stack)
    _form(page, base, f"/cards/{k['fault']}/fault")
    assert (page.text_content("#release-at") or "").startswith("20")
    page.fill("textarea[name=finding]", "芯片无响应，外观完好")
    page.fill("input[name=presented_id]", "2024000001")
    page.click("#confirm")
    page.wait_for_url("**/holders/*")
    assert "EXC-3" in (page.text_content(".flash.ok") or "")
    assert page.locator(f"#card-{k['fault']} .badge").first.text_content() is not None
    _shot(page, "holder-faulty")

    _form(page, base, f"/cards/{k['exchange']}/exchange")
    assert page.locator("#guard").count() == 0  # 50 h since the fault report
    fee = page.text_content("#fee") or ""
    page.select_option("select[name=kind]", "temp")
    _shot(page, "exchange")
    page.click("#confirm")
    page.wait_for_url("**/receipts/*")
    assert (page.text_content("#receipt-amount") or "") == fee  # EXC-2's fee, printed

    _form(page, base, f"/cards/{k['data']}/exchange-data")
    page.fill("input[name=document_ref]", "教务处 2026-31")
    page.select_option("select[name=field]", "class_name")
    page.fill("input[name=value]", "物理2024-2班")
    page.select_option("select[name=kind]", "temp")
    page.fill("input[name=presented_id]", "2024000005")
    page.click("#confirm")
    page.wait_for_url("**/receipts/*")

    _form(page, base, f"/cards/{k['hand_over']}/hand-over")
    assert (page.text_content("#original") or "") == stack.desk.original
    page.fill("input[name=returned_card]", stack.desk.original)
    page.fill("input[name=presented_id]", "2024000003")
    page.check("input[name=signed]")
    page.click("#confirm")
    page.wait_for_url("**/holders/*")
    assert "已发放" in (page.text_content(".flash.ok") or "")

    _form(page, base, f"/cards/{k['terminate']}/terminate")
    page.select_option("select[name=reason]", "dropout")
    page.fill("input[name=presented_id]", "2024000004")
    page.click("#confirm")
    page.wait_for_url("**/holders/*")
    page.click("#do-scrap")  # the card came back (TERM-1): it may be scrapped
    assert "已收回" in (page.text_content("#custody") or "")
    page.click("#confirm")
    page.wait_for_url("**/holders/*")
    assert "SCR-1" in (page.text_content(".flash.ok") or "")

    visitor_id = make_national_id("110105", date(1980, 5, 6), 700)
    _form(page, base, f"/cards/{k['refund']}/refund")
    deposit = page.text_content("#deposit") or ""
    page.fill("input[name=receipt_no]", str(stack.desk.deposit_receipt))
    page.fill("input[name=presented_id]", visitor_id)
    _shot(page, "refund")
    page.click("#confirm")
    page.wait_for_url("**/refund-slips/*")
    assert (page.text_content("#slip-amount") or "") == deposit
    assert (page.text_content("#slip-receipt") or "") == str(stack.desk.deposit_receipt)
    page.click("a:has-text('A5')")
    assert page.locator("link[href='/static/print-a5.css'][media=print]").count() == 1
    page.emulate_media(media="print")
    assert page.is_hidden("button#print")  # the buttons do not print
    page.emulate_media(media="screen")
    _shot(page, "refund-slip")

    college, class_name = CLASS  # graduated through the second operator above
    page.goto(f"{base}/reports?name=clearances&college={college}&class={class_name}")
    assert page.locator("#report tbody tr").count() == 3
    _shot(page, "clearances")
    page.context.close()


def test_idle_operator_is_logged_out(stack: Stack) -> None:
    """ACC: an operator idle past idle_timeout_s is logged out: the next click lands on the
    login page with the reason; an idle page sends itself there too (its refresh tag)."""
    page = _chief(stack)
    page.goto(f"{stack.base}/reports")
    refresh = page.locator("meta[http-equiv=refresh]").get_attribute("content") or ""
    assert refresh == "605;url=/login"  # idle_timeout_s + 5 s
    stack.idle.skipped += 601
    try:
        page.click("nav a[href='/terminals']")
        page.wait_for_url("**/login")
        assert "长时间未操作" in (page.text_content("main") or "")
        page.goto(f"{stack.base}/reports")
        assert page.url.endswith("/login")  # the old session is gone for good
    finally:
        stack.idle.skipped = 0.0
    page.context.close()
