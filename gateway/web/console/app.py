"""``onecard console``: the operator console of the card center (issue 11), server-rendered.

A sibling process of ``onecard web`` (same stack, same services, its own port and cookie): the
console is bound to the counter network while the cardholder platform faces the campus, and its
pages may run one small same-origin script (the card reader) that the portal's CSP forbids.

Every action goes through the services with the operator's :class:`Actor`, re-read from the
registry on each request (a disabled account or a withdrawn permission applies at once); the
services check permissions (ACC-1/2). Templates only hide buttons. A refused permission is
audited (``console.denied``). Forms carry the session's CSRF token and a one-use form token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gateway.config import ConsoleConfig
from gateway.services.approvals import ApprovalService
from gateway.services.base import Actor
from gateway.services.cards_base import GraduationReport
from gateway.services.center import CardCenter
from gateway.services.console_view import ConsoleViews
from gateway.services.reports import Table, campus_today, meal_list
from gateway.services.search import MATCHED_NAMES, SearchService
from gateway.web.app import SecurityHeaders
from gateway.web.console import roster
from gateway.web.console.counter import CounterForms
from gateway.web.console.forms import BadRequest, form_text, serial_text
from gateway.web.console.live import LiveMetrics
from gateway.web.console.privacy import PURPOSES, PrivacyPages
from gateway.web.plumbing import checked_form, error_status, open_session, set_session_cookie
from gateway.web.sessions import AddressLimiter, SessionStore, WebSession
from protocol.cards.clock import local
from protocol.cards.fees import parse_yuan, yuan
from protocol.cards.identity import mask_card, mask_name
from protocol.carduid import canonical_card_uid
from protocol.errors import AccessDenied, ErrorCode, NotFound, OnecardError
from protocol.types import HolderKind, Permission
from protocol.wire import TerminalKind

log = logging.getLogger("onecard.console")
HERE = Path(__file__).resolve().parent
MAX_BODY = 16 * 1024
TOKEN = "op_token"
#: Top-ups from this amount ask twice (the confirmation page says so in red).
LARGE_TOPUP_FEN = 50_000
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def console_csp(agent_url: str) -> str:
    parts = urlsplit(agent_url)
    agent = f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") else ""
    return (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; script-src 'self'; "
        f"connect-src 'self' {agent}".strip()
    )


@dataclass
class ConsoleServices:
    center: CardCenter
    views: ConsoleViews
    approvals: ApprovalService
    search: SearchService
    #: (new terminal's broker password) -> its mosquitto hash; None: adding is not offered.
    password_hash: Callable[[str], str] | None = None
    #: a fresh random broker password
    new_password: Callable[[], str] | None = None
    #: () -> FleetSnapshot of the terminals' retained status (None: no broker account set).
    fleet: Callable[[], Any] | None = None


_str = form_text
_serial = serial_text


class Console:
    def __init__(
        self,
        config: ConsoleConfig,
        open_services: Callable[[], AbstractAsyncContextManager[ConsoleServices]],
    ) -> None:
        self.config = config
        self.open_services = open_services
        self.sessions = SessionStore(config.idle_timeout_s)
        self.addresses = AddressLimiter(config.max_failures_per_address, config.address_window_s)
        self.cookie = "__Host-onecard-console" if config.cookie_secure else "onecard_console"
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.filters["yuan"] = yuan
        env.filters["when"] = lambda m: local(m).strftime("%Y-%m-%d %H:%M") if m else ""
        env.filters["mask_name"] = mask_name
        env.filters["mask_card"] = mask_card
        env.globals["P"] = Permission
        self._services: ConsoleServices | None = None
        self.metrics = LiveMetrics(config.gateway_metrics_urls)
        #: the audited reads of an ID, a photo, a history (issue 15)
        self.privacy = PrivacyPages(self)

    @property
    def services(self) -> ConsoleServices:
        assert self._services is not None, "the app's lifespan opens the services"
        return self._services

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with self.open_services() as services:
            self._services = services
            sweep = asyncio.create_task(self._sweep(), name="console-session-sweep")
            try:
                yield
            finally:
                sweep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep
                self._services = None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.config.idle_timeout_s / 2))
            self.sessions.expired_actors()

    # --- plumbing -----------------------------------------------------------------------------
    def build(self) -> Starlette:
        def p(
            path: str,
            fn: Callable[..., Awaitable[Response]],
            *,
            auth: bool = True,
            methods: tuple[str, ...] = ("GET",),
            password_first: bool = True,
            upload: bool = False,
        ) -> Route:
            return Route(
                path,
                self._page(fn, auth=auth, password_first=password_first, upload=upload),
                methods=[*methods],
            )

        counter = CounterForms(self)
        privacy = self.privacy
        both = ("GET", "POST")
        routes = [
            Route("/healthz", self.healthz),
            p("/login", self.login, auth=False, methods=("GET", "POST")),
            p("/logout", self.logout, methods=("POST",), password_first=False),
            p("/password", self.password, methods=("GET", "POST"), password_first=False),
            p("/", self.home),
            p("/search", self.search),
            p("/reader", self.reader, methods=("POST",)),
            p("/holders/{holder_id:rowid}", self.holder),
            p("/holders/{holder_id:rowid}/read", privacy.read, methods=("POST",)),
            p("/cards/{serial:str}/loss", self.loss, methods=("GET", "POST")),
            p("/cards/{serial:str}/replace", self.replace, methods=("GET", "POST")),
            p("/cards/{serial:str}/unlock", self.unlock, methods=("GET", "POST")),
            p("/holders/{holder_id:rowid}/meal", self.meal, methods=("GET", "POST")),
            p("/cards/{serial:str}/fault", counter.fault, methods=both),
            p("/cards/{serial:str}/exchange", counter.exchange, methods=both),
            p("/cards/{serial:str}/exchange-data", counter.exchange_data, methods=both),
            p("/cards/{serial:str}/refund", counter.refund, methods=both),
            p("/refund-slips/{slip_no:rowid}", counter.refund_slip),
            p("/cards/{serial:str}/terminate", counter.terminate, methods=both),
            p("/cards/{serial:str}/hand-over", counter.hand_over, methods=both),
            p("/cards/{serial:str}/scrap", counter.scrap, methods=both),
            p("/cards/{serial:str}/extend", counter.extend, methods=both),
            p("/cards/{serial:str}/hand-in", counter.hand_in, methods=both),
            p("/scrap/dispose", counter.dispose, methods=both),
            p("/holders/{holder_id:rowid}/issue-temp", counter.issue_temp, methods=both),
            p("/cards/{serial:str}/topup", self.topup, methods=("GET", "POST")),
            p("/receipts/{receipt_no:rowid}", self.receipt),
            p("/reports", self.reports),
            p("/reports/{name:str}.xlsx", self.report_xlsx),
            p("/terminals", self.terminals),
            p("/terminals/new", self.terminal_new, methods=("GET", "POST")),
            p("/terminals/{terminal_id:str}/enabled", self.terminal_enabled, methods=("POST",)),
            p("/roster", self.roster_upload, methods=("GET", "POST"), upload=True),
            p("/roster/{job_id:str}.json", self.roster_status),
            p("/roster/{job_id:str}", self.roster_job),
            p("/roster/{job_id:str}/import", self.roster_import, methods=("POST",)),
            p("/live", self.live),
            p("/live.json", self.live_json),
            p("/graduation", self.graduation, methods=("GET", "POST")),
            p("/approvals", self.approvals, methods=("GET",)),
            p("/approvals/{request_id:str}", self.decide, methods=("POST",)),
            p("/audit", self.audit),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
        app = Starlette(
            routes=routes,
            lifespan=self.lifespan,
            exception_handlers={HTTPException: self._http_error},
        )
        app.add_middleware(SecurityHeaders, hsts=self.config.cookie_secure)
        app.add_middleware(_Csp, csp=console_csp(self.config.reader_agent_url))
        return app

    def _page(
        self,
        handler: Callable[..., Awaitable[Response]],
        *,
        auth: bool,
        password_first: bool,
        upload: bool = False,
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = open_session(
                request,
                self.sessions,
                self.cookie,
                ("长时间未操作，已自动退出，请重新登录", "idle timeout: log in again"),
            )
            actor: Actor | None = None
            try:
                if auth:
                    actor, must_change = await self._actor(session)
                    if actor is None:
                        response: Response = RedirectResponse("/login", status_code=303)
                        self._set_cookie(response, request.state.session)
                        return response
                    if must_change and password_first:
                        response = RedirectResponse("/password", status_code=303)
                        self._set_cookie(response, request.state.session)
                        return response
                request.state.actor = actor
                if request.method == "POST":
                    form = await self._form(request, session, upload=upload)
                    try:
                        response = await handler(request, form)
                    finally:
                        await form.close()  # an uploaded file's spool goes now
                else:
                    response = await handler(request, None)
            except OnecardError as exc:
                if (
                    isinstance(exc, AccessDenied)
                    and exc.code is ErrorCode.PERMISSION_DENIED
                    and actor is not None
                ):
                    await self.services.views.record_refusal(
                        actor, f"{request.method} {request.url.path}", exc
                    )
                    log.warning(
                        "console: permission refused to %s: %s", actor.name, request.url.path
                    )
                response = self._error_page(request, exc)
            self._set_cookie(response, request.state.session)
            return response

        return endpoint

    async def _actor(self, session: WebSession) -> tuple[Actor | None, bool]:
        token = session.stash.get(TOKEN)
        if not isinstance(token, str):
            return None, False
        ops = self.services.center.operators
        try:
            return await ops.authenticate(token), False
        except AccessDenied as exc:
            if exc.code is ErrorCode.PASSWORD_CHANGE_REQUIRED:
                return await ops.authenticate(token, allow_password_change_only=True), True
            session.stash.pop(TOKEN, None)
            session.actor = None
            return None, False

    async def _form(
        self, request: Request, session: WebSession, *, upload: bool = False
    ) -> FormData:
        return await checked_form(
            request,
            session,
            limit=roster.MAX_UPLOAD + MAX_BODY if upload else MAX_BODY,
            max_fields=40,
            max_files=1 if upload else 0,
            expired_code=ErrorCode.AUTH_FAILED,
        )

    def _set_cookie(self, response: Response, session: WebSession) -> None:
        set_session_cookie(response, self.cookie, session, self.config.cookie_secure)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session: WebSession = request.state.session
        return self.templates.TemplateResponse(
            request,
            name,
            {
                "me": getattr(request.state, "actor", None),
                "csrf": session.csrf,
                "flashes": session.take_flashes(),
                "form_token": session.form_token,
                "agent_url": self.config.reader_agent_url,
                "idle_s": self.config.idle_timeout_s,
                **context,
            },
            status_code=status,
        )

    def _error_page(self, request: Request, exc: OnecardError) -> Response:
        return self.render(
            request,
            "console_error.html",
            error_status(exc),
            zh=exc.message_zh,
            en=exc.message_en,
            rule=exc.rule,
            code=exc.code.value,
        )

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not hasattr(request.state, "session"):
            request.state.session = self.sessions.new()
        return self.render(
            request,
            "console_error.html",
            exc.status_code,
            zh="页面不存在" if exc.status_code == 404 else "请求有误",
            en="page not found" if exc.status_code == 404 else "bad request",
            rule=None,
            code=str(exc.status_code),
        )

    def _stale(self, request: Request) -> Response:
        return self.render(
            request,
            "console_error.html",
            409,
            zh="该表单已提交过或已过期，请返回刷新后重试",
            en="this form was already sent or has expired: go back and reload",
            rule=None,
            code="stale_form",
        )

    async def _once(
        self, request: Request, form: FormData, act: Callable[[], Awaitable[str]]
    ) -> Response:
        """Run ``act`` once per rendered form (a double click does one thing), then redirect to
        the page it names; an unknown or used token gets the stale-form page."""
        target, _ran = await request.state.session.once(_str(form, "form_token"), act)
        return self._stale(request) if target is None else RedirectResponse(target, 303)

    @staticmethod
    def me(request: Request) -> Actor:
        actor = request.state.actor
        assert isinstance(actor, Actor)
        return actor

    # --- pages --------------------------------------------------------------------------------
    async def healthz(self, _request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def login(self, request: Request, form: FormData | None) -> Response:
        session: WebSession = request.state.session
        if form is None:
            return self.render(request, "console_login.html")
        address = request.client.host if request.client else "unknown"
        if self.addresses.blocked(address):
            return self.render(
                request,
                "console_login.html",
                429,
                error=("登录失败次数过多，请稍后再试", "too many failed logins: try again later"),
            )
        username = _str(form, "username")[:64]
        try:
            op = await self.services.center.operators.login(username, _str(form, "password"))
        except OnecardError as exc:
            self.addresses.failed(address)
            log.info("console login refused: %s", exc.code.value)
            return self.render(
                request, "console_login.html", 403, error=(exc.message_zh, exc.message_en)
            )
        fresh = self.sessions.rotate(session)
        fresh.stash[TOKEN] = op.token
        fresh.actor = op.actor
        request.state.session = fresh
        log.info("console login operator=%s", op.actor.name)
        if op.must_change_password:
            fresh.flash(
                "error",
                "首次登录须先修改初始密码 (ACC-3)",
                "first login: change the initial password (ACC-3)",
            )
            return RedirectResponse("/password", status_code=303)
        return RedirectResponse("/", status_code=303)

    async def logout(self, request: Request, _form: FormData) -> Response:
        session: WebSession = request.state.session
        token = session.stash.get(TOKEN)
        if isinstance(token, str):
            await self.services.center.operators.logout(token)
        self.sessions.drop(session)
        fresh = self.sessions.new()
        fresh.flash("ok", "已安全退出", "logged out")
        request.state.session = fresh
        return RedirectResponse("/login", status_code=303)

    async def password(self, request: Request, form: FormData | None) -> Response:
        session: WebSession = request.state.session
        if form is None:
            return self.render(request, "console_password.html")
        if _str(form, "new") != _str(form, "repeat"):
            return self.render(
                request,
                "console_password.html",
                400,
                error=("两次输入的新密码不一致", "the two new passwords differ"),
            )
        token = session.stash.get(TOKEN)
        assert isinstance(token, str)
        try:
            await self.services.center.operators.change_password(
                token, _str(form, "old"), _str(form, "new")
            )
        except OnecardError as exc:
            return self.render(
                request, "console_password.html", 400, error=(exc.message_zh, exc.message_en)
            )
        session.flash("ok", "密码已修改", "password changed")
        return RedirectResponse("/", status_code=303)

    async def home(self, request: Request, _form: None) -> Response:
        actor = self.me(request)
        pending = await self.services.approvals.pending(actor) if _can(actor, "card") else []
        return self.render(request, "console_home.html", pending=pending)

    async def search(self, request: Request, _form: None) -> Response:
        actor = self.me(request)
        q = (request.query_params.get("q") or "").strip()[:64]
        holders = await self._search(actor, q) if q else []
        if len(holders) == 1:
            return RedirectResponse(f"/holders/{holders[0].id}", status_code=303)
        return self.render(
            request, "console_search.html", q=q, holders=holders, matched=MATCHED_NAMES
        )

    async def _search(self, actor: Actor, q: str) -> list[Any]:
        """The counter's one search (gateway.services.search, shared with ``onecard find``)."""
        return list((await self.services.search.find(actor, q)).hits)

    async def reader(self, request: Request, form: FormData) -> Response:
        """The reader agent saw a card (the page's script posts its UID): open its holder."""
        actor = self.me(request)
        uid = canonical_card_uid(_str(form, "uid"))
        if uid is None:
            raise BadRequest("读卡器上的卡片编号无效", "the reader reported an invalid card UID")
        card = await self.services.views.holder_of_card_uid(actor, uid)
        request.state.session.stash["reader_uid"] = uid
        return RedirectResponse(f"/holders/{card.holder_id}?uid={uid}", status_code=303)

    async def holder(self, request: Request, _form: None) -> Response:
        actor = self.me(request)
        view = await self.services.views.holder(actor, int(request.path_params["holder_id"]))
        return self.render(
            request,
            "console_holder.html",
            v=view,
            now=self.services.center.ctx.clock.now(),
            reader_uid=canonical_card_uid(request.query_params.get("uid") or "") or "",
            purposes=PURPOSES,
        )

    async def _card_and_holder(self, serial: str) -> tuple[Any, Any]:
        center = self.services.center
        async with center.ctx.registry.read() as tx:
            card = await tx.card_by_serial(_serial(serial))
            holder = await tx.get_holder(card.holder_id)
        return card, holder

    async def loss(self, request: Request, form: FormData | None) -> Response:
        actor = self.me(request)
        actor.require(Permission.CARD_HANDLING)
        serial = str(request.path_params["serial"])
        card, holder = await self._card_and_holder(serial)
        if form is None:
            return self.render(request, "console_loss.html", card=card, holder=holder)

        async def act() -> str:
            await self.services.center.cards.report_loss(
                actor, card.serial, presented_id=_str(form, "presented_id") or None
            )
            request.state.session.flash(
                "ok",
                f"卡片 {mask_card(card.serial)} 已挂失，所有终端拒绝该卡 (LOSS-2)",
                "card reported lost: refused at every terminal (LOSS-2)",
            )
            return f"/holders/{holder.id}"

        return await self._once(request, form, act)

    async def unlock(self, request: Request, form: FormData | None) -> Response:
        """LOSS-3: only at the counter, with the holder's valid ID; never after a replacement."""
        actor = self.me(request)
        actor.require(Permission.CARD_HANDLING)
        card, holder = await self._card_and_holder(str(request.path_params["serial"]))
        if form is None:
            return self.render(
                request,
                "console_confirm.html",
                holder=holder,
                card=card,
                rule="LOSS-3",
                title=("解挂", "Unlock"),
                what=(
                    "解挂后该卡在所有终端恢复使用；已补卡的挂失卡永久作废，不能解挂 (LOSS-4)。",
                    "the card works again at every terminal; a card already replaced stays void.",
                ),
                ask_id=True,
                button=("确认解挂", "Confirm unlock"),
            )

        async def act() -> str:
            await self.services.center.cards.unlock(
                actor, card.serial, presented_id=_str(form, "presented_id") or None
            )
            request.state.session.flash("ok", "已解挂", "unlocked (LOSS-3)")
            return f"/holders/{holder.id}"

        return await self._once(request, form, act)

    async def meal(self, request: Request, form: FormData | None) -> Response:
        """MEAL-3 enable (the reader then writes the type onto the card) / MEAL-4 disable."""
        actor = self.me(request)
        actor.require(Permission.MEAL_SUBSIDY)
        holder_id = int(request.path_params["holder_id"])
        async with self.services.center.ctx.registry.read() as tx:
            holder = await tx.get_holder(holder_id)
        enable = request.query_params.get("action", _str(form, "action") if form else "") != "off"
        if holder.number is None:
            raise BadRequest("该教职工尚无工号 (ISS-6)", "this staff member has no number yet")
        if form is None:
            return self.render(
                request,
                "console_confirm.html",
                holder=holder,
                card=None,
                rule="MEAL-3" if enable else "MEAL-4",
                title=("开通餐补", "Enable meal subsidy")
                if enable
                else ("停止餐补", "Disable meal subsidy"),
                what=(
                    "卡类型移入“1 电子工作证”组；请持卡放到读卡器上写卡。",
                    "the card moves into group 1; put the card on the reader to write the type.",
                )
                if enable
                else (
                    "卡片先停用，持卡人带卡来时恢复并写回卡类型 (MEAL-4)。",
                    "the card is suspended until the holder brings it in to be rewritten.",
                ),
                ask_id=False,
                button=("确认", "Confirm"),
                action="on" if enable else "off",
            )
        number = holder.number

        async def act() -> str:
            meal = self.services.center.meal
            await (meal.enable(actor, number) if enable else meal.disable(actor, number))
            request.state.session.flash(
                "ok",
                "已开通，请将卡放到读卡器上写卡" if enable else "已停止，卡片已停用",
                "enabled: put the card on the reader" if enable else "disabled: card suspended",
            )
            return f"/holders/{holder.id}"

        return await self._once(request, form, act)

    async def replace(self, request: Request, form: FormData | None) -> Response:
        actor = self.me(request)
        actor.require(Permission.CARD_HANDLING)
        serial = str(request.path_params["serial"])
        card, holder = await self._card_and_holder(serial)
        center = self.services.center
        if form is None:
            from protocol.cards.lifecycle import replacement_possible_from

            possible = replacement_possible_from(card.facts)
            now = center.ctx.clock.now()
            return self.render(
                request,
                "console_replace.html",
                card=card,
                holder=holder,
                possible_from=possible,
                ready=possible is not None and now >= possible,
                fee=center.ctx.fees.amount(center.ctx.fees.replacement(card.kind)),
            )

        async def act() -> str:
            result = await center.cards.replace(
                actor, card.serial, presented_id=_str(form, "presented_id") or None
            )
            if result.receipts:
                return f"/receipts/{result.receipts[0].receipt_no}?new=1"
            return f"/holders/{holder.id}"

        return await self._once(request, form, act)

    async def topup(self, request: Request, form: FormData | None) -> Response:
        actor = self.me(request)
        actor.require(Permission.TOPUP_CENTER)
        serial = str(request.path_params["serial"])
        card, holder = await self._card_and_holder(serial)
        if form is None:
            return self.render(request, "console_topup.html", card=card, holder=holder, step=1)
        try:
            amount = parse_yuan(_str(form, "amount"))
        except ValueError:
            raise BadRequest(
                "请输入金额，如 50 或 50.00", "enter an amount, e.g. 50 or 50.00"
            ) from None
        if _str(form, "confirm") != "yes":
            async with self.services.center.ctx.registry.read() as tx:
                from protocol.ledger.postings import purse

                balance = await tx.balance(purse(holder.id))
            return self.render(
                request,
                "console_topup.html",
                card=card,
                holder=holder,
                step=2,
                amount=amount,
                balance=balance,
                large=amount >= LARGE_TOPUP_FEN,
            )

        async def act() -> str:
            result = await self.services.center.money.topup(actor, card.serial, amount)
            request.state.session.flash(
                "ok",
                f"已充值 ¥{yuan(amount)}，余额 ¥{yuan(result.balance)}",
                f"topped up ¥{yuan(amount)}, balance ¥{yuan(result.balance)}",
            )
            return f"/holders/{holder.id}"

        return await self._once(request, form, act)

    async def receipt(self, request: Request, _form: None) -> Response:
        actor = self.me(request)
        receipt, holder = await self.services.views.receipt(
            actor, int(request.path_params["receipt_no"])
        )
        fmt = "a5" if request.query_params.get("paper") == "a5" else "80mm"
        return self.render(request, "console_receipt.html", r=receipt, holder=holder, paper=fmt)

    # --- registers and reports ----------------------------------------------------------------
    async def reports(self, request: Request, _form: None) -> Response:
        actor = self.me(request)
        name = request.query_params.get("name") or "receipts"
        table = await self._report(
            actor, name, request.query_params.get("day"), request.query_params
        )
        return self.render(
            request,
            "console_reports.html",
            table=table,
            report=name,
            names=REPORT_NAMES,
            query=str(request.query_params),
        )

    async def _report(
        self, actor: Actor, name: str, day_text: str | None, params: Any = None
    ) -> Table:
        """A register or report by name; ``params`` (the query) carries a report's own filters
        (the graduation clearances: college and class)."""
        params = params or {}
        reports = self.services.center.reports
        now = self.services.center.ctx.clock.now()
        day = campus_today(now)
        if day_text:
            if not _DAY.fullmatch(day_text):
                raise BadRequest("日期格式应为 年-月-日", "use YYYY-MM-DD")
            day = date.fromisoformat(day_text)
        if name == "receipts":
            return await reports.receipts(actor, now - timedelta(days=31), now + timedelta(days=1))
        if name == "stock":
            return await reports.stock(actor)
        if name == "requisitions":
            return await reports.requisitions(actor)
        if name == "receipt-books":
            return await reports.receipt_books(actor)
        if name == "scrap":
            return await reports.scrap_register(actor)
        if name == "settlement":
            return await reports.daily_settlement(actor, day)
        if name == "temp-monthly":
            return await reports.temp_monthly(actor, day.year, day.month)
        if name == "issuance":
            return await reports.issuance(actor, now - timedelta(days=31), now + timedelta(days=1))
        if name == "hand-overs":
            return await reports.hand_overs(actor, day.year)
        if name == "warranty":
            return await reports.warranty_lots(actor)
        if name == "offline":
            return await reports.offline_disputes(
                actor, now - timedelta(days=31), now + timedelta(days=1)
            )
        if name == "pii-reads":
            return await self.privacy.reads_table(actor, now)
        if name == "meal-list":
            return await meal_list(self.services.center.ctx, actor)
        if name == "clearances":
            college, class_name = (
                (params.get("college") or "")[:64],
                (params.get("class") or "")[:64],
            )
            if not college.strip() or not class_name.strip():
                return Table(
                    "毕业离校清卡表：请填写学院和班级",
                    "graduation clearances: give the college and the class",
                    ["学号 / number"],
                    [],
                )
            return await reports.clearances(actor, college.strip(), class_name.strip())
        raise BadRequest("无此报表", "no such report")

    async def report_xlsx(self, request: Request, _form: None) -> Response:
        actor = self.me(request)
        name = str(request.path_params["name"])
        table = await self._report(
            actor, name, request.query_params.get("day"), request.query_params
        )
        body = await asyncio.to_thread(_xlsx_bytes, table)
        stamp = f"{local(self.services.center.ctx.clock.now()):%Y%m%d}"
        return Response(
            body,
            media_type=XLSX,
            headers={"content-disposition": f'attachment; filename="onecard-{name}-{stamp}.xlsx"'},
        )

    # --- fleet ---------------------------------------------------------------------------------
    async def terminals(self, request: Request, _form: None) -> Response:
        actor = self.me(request)
        rows = await self.services.center.terminals.list(actor)
        fleet = self.services.fleet() if self.services.fleet is not None else None
        backlog = await self.services.views.offline_backlog(actor)
        return self.render(
            request, "console_terminals.html", rows=rows, fleet=fleet, backlog=backlog
        )

    async def terminal_enabled(self, request: Request, form: FormData) -> Response:
        actor = self.me(request)
        terminal_id = str(request.path_params["terminal_id"])[:63]
        enabled = _str(form, "enabled") == "1"

        async def act() -> str:
            await self.services.center.terminals.set_enabled(actor, terminal_id, enabled)
            request.state.session.flash(
                "ok",
                f"终端 {terminal_id} 已{'启用' if enabled else '停用'}（下一次请求起生效）",
                f"terminal {terminal_id} {'enabled' if enabled else 'disabled'} (from its next "
                "request)",
            )
            return "/terminals"

        return await self._once(request, form, act)

    async def terminal_new(self, request: Request, form: FormData | None) -> Response:
        """Add a terminal; its broker password is shown once (only the hash is kept)."""
        actor = self.me(request)
        actor.require(Permission.TERMINALS)
        services = self.services
        if services.password_hash is None or services.new_password is None:
            raise BadRequest("此处不能添加终端", "adding terminals is not available here")
        kinds = [k.value for k in TerminalKind]
        if form is None:
            return self.render(request, "console_terminal_new.html", kinds=kinds)
        kind_text = _str(form, "kind")
        if kind_text not in kinds:
            raise BadRequest("终端类型有误", "unknown terminal kind")
        password = services.new_password()
        terminal_id = _str(form, "terminal_id")[:63]

        async def act() -> str:
            assert services.password_hash is not None
            await services.center.terminals.add(
                actor,
                terminal_id,
                TerminalKind(kind_text),
                password_hash=await asyncio.to_thread(services.password_hash, password),
                merchant_id=_str(form, "merchant_id")[:32] or None,
                location=_str(form, "location")[:128],
            )
            return "added"

        done, _ran = await request.state.session.once(_str(form, "form_token"), act)
        if done is None:
            return self._stale(request)
        if not _ran:  # a repeated submit: the password was shown the first time only
            return RedirectResponse("/terminals", 303)
        return self.render(
            request, "console_terminal_added.html", terminal_id=terminal_id, password=password
        )

    # --- roster upload (ISS-1 / ISS-6) -------------------------------------------------------
    async def roster_upload(self, request: Request, form: FormData | None) -> Response:
        actor = self.me(request)
        actor.require(Permission.CARD_HANDLING)
        if form is None:
            return self.render(request, "console_roster.html", job=None)
        upload = form.get("file")
        kind = _str(form, "kind")
        filename = getattr(upload, "filename", None) or ""
        if kind not in ("student", "staff"):
            raise BadRequest("名单类型有误", "unknown roster kind")
        if not filename.lower().endswith(roster.SUFFIXES) or isinstance(upload, str):
            raise BadRequest("请上传 .xlsx 或 .csv 文件", "upload an .xlsx or .csv file")
        assert upload is not None
        job = roster.start(upload.file, kind, filename)
        jobs: dict[str, roster.RosterJob] = request.state.session.stash.setdefault("roster", {})
        jobs[job.id] = job
        for old in list(jobs)[:-5]:  # a session keeps its last five uploads
            del jobs[old]
        log.info("console roster upload by %s: %s rows pending", actor.name, kind)
        return RedirectResponse(f"/roster/{job.id}", 303)

    def _job(self, request: Request) -> roster.RosterJob:
        jobs = request.state.session.stash.get("roster", {})
        job = jobs.get(str(request.path_params["job_id"]))
        if job is None:
            raise NotFound("无此上传（或已过期）", "no such upload (or it expired)")
        assert isinstance(job, roster.RosterJob)
        return job

    async def roster_status(self, request: Request, _form: None) -> Response:
        self.me(request).require(Permission.CARD_HANDLING)
        return JSONResponse(self._job(request).status())

    async def roster_job(self, request: Request, _form: None) -> Response:
        self.me(request).require(Permission.CARD_HANDLING)
        return self.render(request, "console_roster.html", job=self._job(request))

    async def roster_import(self, request: Request, form: FormData) -> Response:
        actor = self.me(request)
        job = self._job(request)
        result = job.result
        if result is None:
            raise BadRequest("名单仍在读取中", "the roster is still being read")
        skip_bad = _str(form, "skip_bad") == "1"
        if result.file_errors or (result.errors and not skip_bad):
            raise BadRequest(
                "名单有错误行，未导入；可修改后重新上传，或选择跳过错误行",
                "the roster has bad rows: nothing imported; fix and upload again, or skip them",
            )

        async def act() -> str:
            report = await self.services.center.holders.import_roster(
                actor, HolderKind(job.kind), result.rows
            )
            job.imported = report.imported
            request.state.session.flash(
                "ok", f"已导入 {report.imported} 人", f"{report.imported} holders imported"
            )
            return f"/roster/{job.id}"

        return await self._once(request, form, act)

    async def live(self, request: Request, _form: None) -> Response:
        self.me(request)
        figures = await asyncio.to_thread(self.metrics.figures)
        return self.render(request, "console_live.html", m=figures)

    async def live_json(self, request: Request, _form: None) -> Response:
        """The live page's figures, polled by its script every two seconds."""
        self.me(request)
        return JSONResponse(dataclasses.asdict(await asyncio.to_thread(self.metrics.figures)))

    async def graduation(self, request: Request, form: FormData | None) -> Response:
        actor = self.me(request)
        actor.require(Permission.CARD_HANDLING)
        if form is None:
            return self.render(
                request, "console_graduation.html", threshold=self.services.approvals.threshold
            )
        college, class_name = _str(form, "college")[:64], _str(form, "class_name")[:64]
        returned = [_serial(s) for s in _str(form, "returned").split()][:2000]
        missing = [_serial(s) for s in _str(form, "missing_paid").split()][:2000]

        async def act() -> str:
            outcome = await self.services.approvals.graduate_class(
                actor,
                college=college,
                class_name=class_name,
                returned_serials=returned,
                missing_paid=missing,
            )
            session = request.state.session
            if outcome.pending is not None:
                session.flash(
                    "error",
                    f"将有 {outcome.pending.cards} 张卡进入黑名单，超过 "
                    f"{self.services.approvals.threshold} 张，须另一名操作员审批",
                    f"{outcome.pending.cards} cards would be blocked at once: a second operator "
                    "must approve",
                )
                return "/approvals"
            assert isinstance(outcome.report, GraduationReport)
            session.flash(
                "ok",
                f"已办理离校 {len(outcome.report.cleared)} 人",
                f"{len(outcome.report.cleared)} students cleared",
            )
            return "/reports?" + urlencode(
                {"name": "clearances", "college": college, "class": class_name}
            )

        return await self._once(request, form, act)

    async def approvals(self, request: Request, _form: None) -> Response:
        actor = self.me(request)
        pending = await self.services.approvals.pending(actor)
        return self.render(request, "console_approvals.html", pending=pending)

    async def decide(self, request: Request, form: FormData) -> Response:
        actor = self.me(request)
        request_id = str(request.path_params["request_id"])[:64]
        decision = _str(form, "decision")

        async def act() -> str:
            session = request.state.session
            if decision == "approve":
                report = await self.services.approvals.approve(actor, request_id)
                if isinstance(report, GraduationReport):
                    n = len(report.cleared)
                    zh, en = f"离校 {n} 人", f"{n} students cleared"
                else:
                    zh, en = f"换卡 {report.done} 人", f"{report.done} students exchanged"
                session.flash("ok", f"已审批并办理：{zh}", f"approved and applied: {en}")
            elif decision == "reject":
                await self.services.approvals.reject(actor, request_id)
                session.flash("ok", "已驳回", "rejected")
            else:
                raise BadRequest("未知操作", "unknown decision")
            return "/approvals"

        return await self._once(request, form, act)

    async def audit(self, request: Request, _form: None) -> Response:
        actor = self.me(request)
        params = request.query_params
        f = {
            "actor": (params.get("actor") or "").strip()[:64],
            "entity": (params.get("entity") or "").strip()[:32],
            "entity_id": (params.get("entity_id") or "").strip()[:64],
            "day": (params.get("day") or "").strip(),
        }
        if f["day"] and not _DAY.fullmatch(f["day"]):
            raise BadRequest("日期格式应为 年-月-日", "use YYYY-MM-DD")
        try:
            day = date.fromisoformat(f["day"]) if f["day"] else None
        except ValueError:
            raise BadRequest("日期无效", "no such day") from None
        rows = await self.services.views.audit(
            actor,
            who=f["actor"] or None,
            entity=f["entity"] or None,
            entity_id=f["entity_id"] or None,
            day=day,
        )
        return self.render(request, "console_audit.html", rows=rows, f=f)


REPORT_NAMES = [
    ("receipts", "收费收据", "receipts"),
    ("receipt-books", "收据本与对账", "receipt books"),
    ("stock", "卡片库存", "card stock"),
    ("requisitions", "领用登记", "requisitions"),
    ("scrap", "报废登记", "scrap register"),
    ("settlement", "商户日结算", "daily settlement"),
    ("temp-monthly", "临时卡月统计", "temp cards per month"),
    ("issuance", "发卡统计（近31天）", "cards issued, last 31 days"),
    ("hand-overs", "领卡登记", "collection register"),
    ("warranty", "保修批次", "warranty lots"),
    ("offline", "脱机交易争议", "offline disputes"),
    ("meal-list", "餐补名单", "meal-subsidy list"),
    ("pii-reads", "个人信息查阅（按操作员）", "reads of personal data per operator"),
    ("clearances", "毕业离校清卡（按班级）", "graduation clearances per class"),
]


def _can(actor: Actor, duty: str) -> bool:
    return duty == "card" and Permission.CARD_HANDLING in actor.permissions


def _xlsx_bytes(table: Table) -> bytes:
    """The CLI's report file (named sheet, Chinese headers, amounts as numbers in a money format,
    widths): gateway.reportfile."""
    from gateway.reportfile import write_report

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.xlsx"
        write_report(path, table)
        return path.read_bytes()


class _Csp:
    """The console's own CSP (one same-origin script; the reader agent as the only connect
    target); SecurityHeaders adds the rest and keeps a CSP already set."""

    def __init__(self, app: Any, *, csp: str) -> None:
        self.app = app
        self.csp = csp.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_csp(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    h for h in message.get("headers", []) if h[0] != b"content-security-policy"
                ]
                headers.append((b"content-security-policy", self.csp))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_csp)


def create_console(
    config: ConsoleConfig,
    open_services: Callable[[], AbstractAsyncContextManager[ConsoleServices]],
) -> Starlette:
    return Console(config, open_services).build()


__all__ = ["Console", "ConsoleServices", "create_console", "datetime"]
