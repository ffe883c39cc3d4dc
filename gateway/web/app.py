"""``onecard web``: the cardholder self-service platform (智能卡自助查询平台), server-rendered.

Starlette + Jinja2, no script at all (a strict CSP forbids any). Routes only translate HTTP to
calls of :class:`gateway.services.portal.PortalService` and its results to pages; the rules live
in the services. Composition (which registry, which clock) is the caller's: see
``gateway.bootstrap.web_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import WebConfig
from gateway.services.alerts import AlertService
from gateway.services.payments import PaymentService
from gateway.services.portal import (
    KIND_NAMES,
    HistoryFilter,
    HistoryKind,
    HistoryRow,
    LossReceipt,
    PortalService,
)
from gateway.services.privacy import PrivacyService
from gateway.web.plumbing import checked_form, error_status, open_session, set_session_cookie
from gateway.web.sessions import AddressLimiter, SessionStore, WebSession
from protocol.cards.clock import local
from protocol.cards.fees import parse_yuan, yuan
from protocol.errors import ErrorCode, OnecardError

log = logging.getLogger("onecard.web")
HERE = Path(__file__).resolve().parent
MAX_BODY = 16 * 1024
MAX_NOTIFY_BODY = 64 * 1024
#: Forged payment callbacks audited per client address and minute; more are refused unwritten.
FORGED_NOTIFY_LIMIT = 20
_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")
_OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_-]{6,64}")
CHANNEL = "web"

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; script-src 'none'"
)


@dataclass
class WebServices:
    """What the web process calls. ``alerts`` and ``topup`` arrive with the payment/alert work
    of issue 9 (another engineer's ``gateway/services``); until then their pages say so."""

    portal: PortalService
    alerts: AlertService | None = None
    topup: PaymentService | None = None
    #: How often the web process sweeps pending top-up orders (query, expire).
    sweep_interval_s: float = 5.0


class SecurityHeaders:
    """Every response, static files and errors included: CSP, no framing, no sniffing."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", CSP.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        if hsts:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in names]
                if not scope["path"].startswith("/static/") and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BadRequest(OnecardError):
    code = ErrorCode.INVALID_INPUT


def _parse_date(text: str | None, name_zh: str, name_en: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name_zh}格式应为 年-月-日", f"{name_en}: use YYYY-MM-DD") from None


def history_filter(params: Mapping[str, str]) -> tuple[HistoryFilter, int]:
    """Query parameters to a filter; bad ones are refused with a clear message."""
    unknown = set(params) - {"start", "end", "kind", "place", "page"}
    if unknown:
        raise BadRequest("查询条件有误", "unknown query parameters")
    kind_text = params.get("kind") or None
    try:
        kind = HistoryKind(kind_text) if kind_text else None
    except ValueError:
        raise BadRequest("交易类型有误", "unknown kind") from None
    place = (params.get("place") or "").strip() or None
    if place is not None and len(place) > 32:
        raise BadRequest("地点名称过长", "place name too long")
    page_text = params.get("page") or "1"
    if not re.fullmatch(r"[1-9][0-9]{0,5}", page_text):
        raise BadRequest("页码有误", "bad page number")
    f = HistoryFilter(
        start=_parse_date(params.get("start"), "开始日期", "start date"),
        end=_parse_date(params.get("end"), "结束日期", "end date"),
        kind=kind,
        place=place,
    )
    return f, int(page_text)


def _metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class Portal:
    def __init__(
        self,
        config: WebConfig,
        open_services: Callable[[], AbstractAsyncContextManager[WebServices]],
        *,
        deny_poll_ms: int = 50,
    ) -> None:
        self.config = config
        self.open_services = open_services
        self.deny_poll_ms = deny_poll_ms
        self.sessions = SessionStore(config.idle_timeout_s)
        self.addresses = AddressLimiter(config.max_failures_per_address, config.address_window_s)
        self.forged_notifies = AddressLimiter(FORGED_NOTIFY_LIMIT, 60.0)
        self.cookie = "__Host-onecard" if config.cookie_secure else "onecard_session"
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.filters["yuan"] = yuan
        env.filters["when"] = lambda m: local(m).strftime("%Y-%m-%d %H:%M") if m else ""
        # a validity end is the first moment no longer valid (TERM-2): show the last valid day
        env.filters["lastday"] = lambda m: (
            local(m - timedelta(microseconds=1)).strftime("%Y-%m-%d") if m else ""
        )
        env.globals["kinds"] = [(k.value, *KIND_NAMES[k.value]) for k in HistoryKind]
        self._services: WebServices | None = None

    @property
    def services(self) -> WebServices:
        assert self._services is not None, "the app's lifespan opens the services"
        return self._services

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with self.open_services() as services:
            self._services = services
            tasks = [asyncio.create_task(self._sweep(), name="web-session-sweep")]
            if services.topup is not None:
                tasks.append(asyncio.create_task(self._sweep_orders(), name="web-topup-sweep"))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                self._services = None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.config.idle_timeout_s / 2))
            for actor in self.sessions.expired_actors():
                await self.services.portal.logout(actor, reason="idle_timeout")

    async def _sweep_orders(self) -> None:
        """TOP-1: pending orders are queried and, past their time, closed and expired."""
        topup = self.services.topup
        assert topup is not None
        while True:
            await asyncio.sleep(self.services.sweep_interval_s)
            try:
                result = await topup.sweep()
            except OnecardError as exc:  # the provider or the registry is busy: next round
                log.warning("top-up sweep failed: %s", exc.code.value)
                continue
            if result.credited or result.expired:
                log.info(
                    "top-up sweep: %d credited, %d expired",
                    len(result.credited),
                    len(result.expired),
                )

    # --- plumbing -----------------------------------------------------------------------------
    def build(self) -> Starlette:
        def p(
            path: str,
            fn: Callable[..., Awaitable[Response]],
            *,
            auth: bool = True,
            methods: tuple[str, ...] = ("GET",),
            password_first: bool = True,
        ) -> Route:
            return Route(
                path,
                self._page(fn, auth=auth, password_first=password_first),
                methods=list(methods),
            )

        routes = [
            Route("/healthz", self.healthz),
            p("/", self.home, auth=False),
            p("/login", self.login, auth=False, methods=("GET", "POST")),
            p("/logout", self.logout, methods=("POST",), password_first=False),
            p("/cards", self.cards, password_first=False),
            p(
                "/cards/{card_id:rowid}/loss",
                self.loss,
                methods=("GET", "POST"),
                password_first=False,
            ),
            p("/loss/done", self.loss_done, password_first=False),
            p("/history", self.history),
            p("/history.csv", self.export_csv),
            p("/history.xlsx", self.export_xlsx),
            p("/mydata.json", self.my_data),
            p("/password", self.password, methods=("GET", "POST"), password_first=False),
            p("/topup", self.topup, methods=("GET", "POST")),
            p("/topup/{out_trade_no:str}", self.topup_order),
            Route("/pay/notify/{provider:str}", self.pay_notify, methods=["POST"]),
            p("/alerts", self.alerts, methods=("GET", "POST"), password_first=False),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
        app = Starlette(
            routes=routes,
            lifespan=self.lifespan,
            exception_handlers={
                HTTPException: self._http_error,
                Exception: self._crash,
            },
        )
        app.add_middleware(SecurityHeaders, hsts=self.config.cookie_secure)
        return app

    def _page(
        self,
        handler: Callable[..., Awaitable[Response]],
        *,
        auth: bool,
        password_first: bool,
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = open_session(
                request,
                self.sessions,
                self.cookie,
                ("长时间未操作，请重新登录", "session timed out: log in again"),
            )
            try:
                if auth and session.actor is None:
                    response: Response = RedirectResponse("/login", status_code=303)
                elif auth and password_first and session.must_change_password:
                    response = RedirectResponse("/password", status_code=303)
                elif request.method == "POST":
                    form = await self._form(request, session)
                    response = await handler(request, request.state.session, form)
                else:
                    response = await handler(request, session)
            except OnecardError as exc:
                response = self._error_page(request, exc)
            self._set_cookie(response, request.state.session)
            return response

        return endpoint

    async def _form(self, request: Request, session: WebSession) -> FormData:
        return await checked_form(
            request,
            session,
            limit=MAX_BODY,
            max_fields=20,
            expired_code=ErrorCode.PERMISSION_DENIED,
        )

    def _set_cookie(self, response: Response, session: WebSession) -> None:
        set_session_cookie(response, self.cookie, session, self.config.cookie_secure)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session: WebSession = request.state.session
        return self.templates.TemplateResponse(
            request,
            name,
            {
                "session": session,
                "me_actor": session.actor,
                "csrf": session.csrf,
                "flashes": session.take_flashes(),
                "form_token": session.form_token,
                **context,
            },
            status_code=status,
        )

    def _error_page(self, request: Request, exc: OnecardError) -> Response:
        return self.render(
            request,
            "error.html",
            error_status(exc),
            zh=exc.message_zh,
            en=exc.message_en,
            rule=exc.rule,
        )

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not hasattr(request.state, "session"):
            request.state.session = self.sessions.new()
        zh, en = {
            404: ("页面不存在", "page not found"),
            405: ("不支持此操作", "method not allowed"),
        }.get(exc.status_code, ("请求有误", "bad request"))
        return self.render(request, "error.html", exc.status_code, zh=zh, en=en, rule=None)

    async def _crash(self, request: Request, exc: Exception) -> Response:
        log.error(
            "web request failed: %s %s: %s", request.method, request.url.path, type(exc).__name__
        )
        return PlainTextResponse(
            "系统繁忙，请稍后再试 / something went wrong, please try again later",
            status_code=500,
            headers={"content-type": "text/plain; charset=utf-8"},
        )

    # --- pages --------------------------------------------------------------------------------
    async def healthz(self, _request: Request) -> Response:
        return PlainTextResponse("ok")

    async def home(self, _request: Request, session: WebSession) -> Response:
        return RedirectResponse("/cards" if session.actor else "/login", status_code=303)

    async def login(
        self, request: Request, session: WebSession, form: FormData | None = None
    ) -> Response:
        if form is None:
            if session.actor is not None:
                return RedirectResponse("/cards", status_code=303)
            return self.render(request, "login.html")
        address = request.client.host if request.client else "unknown"
        if self.addresses.blocked(address):
            log.warning("web login refused: too many failures from one address")
            return self.render(
                request,
                "login.html",
                429,
                error=("登录失败次数过多，请稍后再试", "too many failed logins: try again later"),
            )
        number = str(form.get("number") or "")
        password = str(form.get("password") or "")
        try:
            actor = await self.services.portal.login(
                number, password, channel=CHANNEL, client=address
            )
        except OnecardError as exc:
            if exc.code in (ErrorCode.AUTH_FAILED, ErrorCode.ACCOUNT_LOCKED):
                self.addresses.failed(address)
            log.info("web login refused: %s", exc.code.value)
            return self.render(
                request,
                "login.html",
                403 if exc.code != ErrorCode.INVALID_INPUT else 400,
                error=(exc.message_zh, exc.message_en),
                locked=exc.code is ErrorCode.ACCOUNT_LOCKED,
            )
        fresh = self.sessions.rotate(session)
        fresh.actor = actor
        me = await self.services.portal.me(actor)
        fresh.must_change_password = me.default_password
        request.state.session = fresh
        log.info("web login holder=%s", actor.holder_id)
        if me.default_password:
            fresh.flash(
                "error",
                "你仍在使用初始密码，请先修改密码（如需挂失，可先挂失）",
                "you are on the default password: change it (report a lost card first if needed)",
            )
            return RedirectResponse("/password", status_code=303)
        return RedirectResponse("/cards", status_code=303)

    async def logout(self, _request: Request, session: WebSession, _form: FormData) -> Response:
        if session.actor is not None:
            await self.services.portal.logout(session.actor)
        self.sessions.drop(session)
        fresh = self.sessions.new()
        fresh.flash("ok", "已安全退出", "logged out")
        _request.state.session = fresh
        return RedirectResponse("/login", status_code=303)

    async def cards(self, request: Request, session: WebSession) -> Response:
        assert session.actor is not None
        overview = await self.services.portal.overview(session.actor)
        alerts = None
        if self.services.alerts is not None:
            alerts = await self.services.alerts.list_alerts(session.actor, page=1, per_page=5)
        return self.render(request, "cards.html", o=overview, alerts=alerts)

    async def loss(
        self, request: Request, session: WebSession, form: FormData | None = None
    ) -> Response:
        assert session.actor is not None
        actor = session.actor
        card_id = int(request.path_params["card_id"])
        card = await self.services.portal.card(actor, card_id)
        if form is None:
            return self.render(request, "loss_confirm.html", card=card)

        async def act() -> str:
            started = time.perf_counter()
            receipt = await self.services.portal.report_loss(actor, card_id)
            committed = time.perf_counter()
            confirmed = await self._confirm_propagation(receipt.denylist_version)
            session.stash["loss"] = (receipt, confirmed)
            log.info(
                "web loss report holder=%s version=%s commit_ms=%.1f gateway_ms=%.1f confirmed=%s",
                actor.holder_id,
                receipt.denylist_version,
                1000 * (committed - started),
                1000 * (time.perf_counter() - committed),
                confirmed,
            )
            return "/loss/done"

        target, _ran = await session.once(_str(form.get("form_token")), act)
        if target is None:
            return self._stale_form(request)
        return RedirectResponse(target, status_code=303)

    async def _confirm_propagation(self, version: int) -> bool | None:
        """Wait until every configured gateway serves ``version`` of the deny list (True), or the
        timeout passes (False); without gateway URLs, wait two of their poll intervals (None)."""
        urls = self.config.gateway_metrics_urls
        if not urls:
            await asyncio.sleep(2 * self.deny_poll_ms / 1000)
            return None
        deadline = time.monotonic() + self.config.confirm_timeout_ms / 1000
        pending = list(urls)
        while pending and time.monotonic() < deadline:
            seen = await asyncio.gather(*(asyncio.to_thread(_gateway_version, u) for u in pending))
            pending = [u for u, v in zip(pending, seen, strict=True) if v is None or v < version]
            if pending:
                await asyncio.sleep(0.01)
        return not pending

    async def loss_done(self, request: Request, session: WebSession) -> Response:
        stored = session.stash.get("loss")
        if stored is None:
            return RedirectResponse("/cards", status_code=303)
        receipt, confirmed = stored
        assert isinstance(receipt, LossReceipt)
        return self.render(request, "loss_done.html", r=receipt, confirmed=confirmed)

    async def history(self, request: Request, session: WebSession) -> Response:
        assert session.actor is not None
        params = dict(request.query_params)
        f, page = history_filter(params)
        result = await self.services.portal.history(session.actor, f, page=page)
        query = {k: v for k, v in params.items() if k != "page" and v}
        return self.render(request, "history.html", h=result, query=query)

    async def _export_rows(
        self, request: Request, session: WebSession, fmt: str
    ) -> list[HistoryRow]:
        assert session.actor is not None
        params = {k: v for k, v in request.query_params.items() if k != "page"}
        f, _ = history_filter(params)
        return await self.services.portal.export(session.actor, f, fmt)

    async def export_csv(self, request: Request, session: WebSession) -> Response:
        rows = await self._export_rows(request, session, "csv")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerows([_EXPORT_HEADER, *(_csv_safe(_export_line(r)) for r in rows)])
        return Response(
            ("\ufeff" + buf.getvalue()).encode(),  # BOM: Excel opens it as UTF-8
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": _attachment("csv")},
        )

    async def export_xlsx(self, request: Request, session: WebSession) -> Response:
        rows = await self._export_rows(request, session, "xlsx")
        body = await asyncio.to_thread(_xlsx, rows)
        return Response(
            body,
            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            headers={"content-disposition": _attachment("xlsx")},
        )

    async def my_data(self, _request: Request, session: WebSession) -> Response:
        """PIPL art. 45: everything held about the logged-in holder, as a JSON file (audited)."""
        assert session.actor is not None
        assert session.actor.holder_id is not None
        privacy = PrivacyService(self.services.portal.ctx)
        export = await privacy.export(session.actor, session.actor.holder_id)
        return Response(
            export.to_json().encode(),
            media_type="application/json; charset=utf-8",
            headers={
                "content-disposition": 'attachment; filename="onecard-mydata.json"',
                "cache-control": "no-store",
            },
        )

    async def password(
        self, request: Request, session: WebSession, form: FormData | None = None
    ) -> Response:
        assert session.actor is not None
        actor = session.actor
        if form is None:
            return self.render(request, "password.html")

        async def act() -> str:
            await self.services.portal.change_password(
                actor,
                _str(form.get("old")) or "",
                _str(form.get("new")) or "",
                _str(form.get("repeat")) or "",
            )
            session.must_change_password = False
            session.flash("ok", "密码已修改", "password changed")
            log.info("web password changed holder=%s", actor.holder_id)
            return "/cards"

        try:
            target, _ran = await session.once(_str(form.get("form_token")), act)
        except OnecardError as exc:
            return self.render(
                request, "password.html", 400, error=(exc.message_zh, exc.message_en)
            )
        if target is None:
            return self._stale_form(request)
        return RedirectResponse(target, status_code=303)

    async def topup(
        self, request: Request, session: WebSession, form: FormData | None = None
    ) -> Response:
        """TOP-1 online: an amount, an order at the provider, then the provider's page."""
        assert session.actor is not None
        actor = session.actor
        payments = self.services.topup
        if payments is None:
            return self.render(request, "topup.html", available=False)
        if form is None:
            orders = await payments.orders_of(actor, limit=10)
            return self.render(
                request, "topup.html", available=True, rules=payments.rules, orders=orders
            )
        try:
            amount = parse_yuan(_str(form.get("amount")) or "")
        except ValueError:
            raise BadRequest(
                "请输入金额，如 50 或 50.00", "enter an amount, e.g. 50 or 50.00"
            ) from None

        async def act() -> str:
            order = await payments.create_topup(actor, amount)
            session.stash.setdefault("pay_urls", {})[order.out_trade_no] = order.pay_url
            log.info("web top-up order %s holder=%s", order.out_trade_no, actor.holder_id)
            return f"/topup/{order.out_trade_no}"

        target, _ran = await session.once(_str(form.get("form_token")), act)
        if target is None:
            return self._stale_form(request)
        return RedirectResponse(target, status_code=303)

    async def topup_order(self, request: Request, session: WebSession) -> Response:
        """The return page: the order's state (queried at the provider while pending)."""
        assert session.actor is not None
        payments = self.services.topup
        number = str(request.path_params["out_trade_no"])
        if payments is None or not _OUT_TRADE_NO.fullmatch(number):
            raise OnecardError("无此充值订单", "no such top-up order", code=ErrorCode.NOT_FOUND)
        order = await payments.order_status(session.actor, number)
        pay_url = session.stash.get("pay_urls", {}).get(number)
        if pay_url and pay_url.startswith(("http://", "https://")):
            back = f"{request.url.scheme}://{request.url.netloc}/topup/{number}"
            pay_url += ("&" if "?" in pay_url else "?") + urlencode({"return": back})
        return self.render(request, "topup_order.html", order=order, pay_url=pay_url)

    async def pay_notify(self, request: Request) -> Response:
        """The provider's signed callback: no session, no CSRF — the signature authenticates it;
        applied once per trade whatever the provider repeats (PaymentService)."""
        payments = self.services.topup
        if payments is None or request.path_params["provider"] != payments.provider.name:
            return PlainTextResponse("not found", status_code=404)
        length = request.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > MAX_NOTIFY_BODY:
            return PlainTextResponse("too large", status_code=413)
        body = await request.body()
        # anyone may POST here: past the limit a forged callback costs no registry write (a
        # genuine one from the same address is still verified and applied)
        address = request.client.host if request.client else "unknown"
        flooding = self.forged_notifies.blocked(address)
        result = await payments.handle_notification(
            body, dict(request.headers), audit_forged=not flooding
        )
        log.info("payment notification: %s", result.code)
        status = result.status
        if result.code == "forged":
            self.forged_notifies.failed(address)
            status = 429 if flooding else status
        return Response(result.body, status_code=status, media_type=result.media_type)

    async def alerts(
        self, request: Request, session: WebSession, form: FormData | None = None
    ) -> Response:
        assert session.actor is not None
        actor = session.actor
        service = self.services.alerts
        if service is None:
            return self.render(request, "alerts.html", alerts=None)
        if form is not None:  # mark all read

            async def act() -> str:
                await service.mark_read(actor)
                return "/alerts"

            target, _ran = await session.once(_str(form.get("form_token")), act)
            if target is None:
                return self._stale_form(request)
            return RedirectResponse(target, status_code=303)
        page_text = request.query_params.get("page") or "1"
        if set(request.query_params) - {"page"} or not re.fullmatch(r"[1-9][0-9]{0,5}", page_text):
            raise BadRequest("页码有误", "bad page number")
        items = await service.list_alerts(actor, page=int(page_text), per_page=20)
        return self.render(request, "alerts.html", alerts=items)

    def _stale_form(self, request: Request) -> Response:
        return self.render(
            request,
            "error.html",
            409,
            zh="该表单已提交过或已过期，请返回刷新后重试",
            en="this form was already sent or has expired: go back and reload",
            rule=None,
        )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _gateway_version(url: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:  # noqa: S310 - configured URL
            return _metric_value(resp.read().decode(), "onecard_denylist_version")
    except OSError:
        return None


_EXPORT_HEADER = ["时间 time", "类型 kind", "金额(元) amount (yuan)", "地点 place", "流水号 id"]


def _export_line(r: HistoryRow) -> list[str]:
    return [
        local(r.at).strftime("%Y-%m-%d %H:%M:%S"),
        f"{r.kind_zh} {r.kind_en}",
        yuan(r.amount_fen),
        r.place,
        str(r.id),
    ]


def _csv_safe(line: list[str]) -> list[str]:
    """A place (a merchant's name, typed by staff) never starts a formula in Excel (OWASP CSV
    injection); the amount column is ours and may be negative."""
    return [("'" + v if i == 3 and v.startswith(_FORMULA_LEAD) else v) for i, v in enumerate(line)]


def _attachment(ext: str) -> str:
    return f'attachment; filename="onecard-history-{datetime.now().astimezone():%Y%m%d}.{ext}"'


def _xlsx(rows: list[HistoryRow]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "交易记录"
    ws.append(_EXPORT_HEADER)
    for r in rows:
        line: list[object] = [*_export_line(r)]
        line[2] = Decimal(r.amount_fen).scaleb(-2)  # a number cell, exact (no float)
        ws.append(line)
        for cell in ws[ws.max_row]:
            if cell.data_type == "f":  # a merchant named "=..." stays text, never a formula
                cell.data_type = "s"
    for col, width in zip("ABCDE", (20, 22, 16, 24, 10), strict=True):
        ws.column_dimensions[col].width = width
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def server_logging() -> None:
    """uvicorn's own lines (start, an unexpected exception's traceback) through onecard's masking
    handler (gateway.logs), so no national ID or card number reaches the log in full."""
    ours = logging.getLogger("onecard")
    server = logging.getLogger("uvicorn")
    server.handlers[:] = ours.handlers
    server.setLevel(ours.level)
    server.propagate = False


def create_app(
    config: WebConfig,
    open_services: Callable[[], AbstractAsyncContextManager[WebServices]],
    *,
    deny_poll_ms: int = 50,
) -> Starlette:
    return Portal(config, open_services, deny_poll_ms=deny_poll_ms).build()
