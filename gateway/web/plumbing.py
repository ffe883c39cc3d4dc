"""Request handling shared by the cardholder portal (gateway.web.app) and the operator console
(gateway.web.console.app): the session of a request, the checked form of a POST, the session
cookie, and the HTTP status of a refusal. Each app keeps its own pages, texts and templates."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from gateway.web.sessions import SessionStore, WebSession
from protocol.errors import AccessDenied, ErrorCode, InvalidInput, OnecardError


class RowId(Convertor[int]):
    """``{name:rowid}``: a registry row number in a URL, at most 18 digits (a BIGINT holds it;
    a longer one matches no route: 404, not a database overflow). Both apps' routes use it."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("rowid", RowId())

#: The HTTP status of a refusal by its code; any other refusal is 409 Conflict.
_STATUS = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.AUTH_FAILED: 403,
    ErrorCode.ACCOUNT_LOCKED: 403,
    ErrorCode.INVALID_INPUT: 400,
}


def error_status(exc: OnecardError) -> int:
    return _STATUS.get(exc.code, 409)


def open_session(
    request: Request, sessions: SessionStore, cookie: str, timed_out_text: tuple[str, str]
) -> WebSession:
    """The request's session (``request.state.session``): the cookie's, or a new one that says
    why the old one ended when it timed out."""
    session, timed_out = sessions.get(request.cookies.get(cookie))
    if session is None:
        session = sessions.new()
        if timed_out:
            session.flash("error", *timed_out_text)
    request.state.session = session
    return session


def set_session_cookie(response: Response, cookie: str, session: WebSession, secure: bool) -> None:
    response.set_cookie(
        cookie, session.id, httponly=True, secure=secure, samesite="strict", path="/"
    )


async def checked_form(
    request: Request,
    session: WebSession,
    *,
    limit: int,
    max_fields: int,
    max_files: int = 0,
    expired_code: ErrorCode,
) -> FormData:
    """A POST's form, refused before it is read when too large or from another site, and after
    when its CSRF token is not the session's (``expired_code``: the refusal's code)."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit() or int(length) > limit:
        raise InvalidInput("提交内容过大", "the form is too large")
    origin = request.headers.get("origin")
    # no-referrer makes Chromium send "Origin: null" on our own forms; the CSRF token and the
    # SameSite=Strict cookie still hold
    expected = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin not in ("null", expected):
        raise AccessDenied(
            "来源不正确", "cross-site request refused", code=ErrorCode.PERMISSION_DENIED
        )
    form = await request.form(max_files=max_files, max_fields=max_fields)
    csrf = form.get("csrf")
    if not isinstance(csrf, str) or not session.csrf_ok(csrf):
        await form.close()
        raise AccessDenied(
            "页面已过期，请返回刷新后重试",
            "this page expired: go back, reload and try again",
            code=expired_code,
        )
    return form
