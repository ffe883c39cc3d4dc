"""The sandbox payment provider over HTTP: ``python -m gateway.payments.sandbox_app``.

Plays WeChat Pay / Alipay for the demo and the browser tests (gateway/payments/sandbox.py has
the bank and the signatures):

- ``POST /api/{create,query,close}`` — the merchant API: signed JSON in, signed JSON out.
- ``GET /pay/{out_trade_no}`` — the provider's confirm page (zh-CN first, English beside). The
  holder confirms; the sandbox then calls the merchant back at the order's ``notify_url`` with a
  signed notification. A select on the page (``name=deliver``) chooses how, for tests:
  ``once`` (retried until acknowledged, like the real ones), ``twice`` (a duplicated callback),
  ``late`` (after ``--late-s`` seconds), ``never`` (the merchant must query), ``forged`` (a
  notification signed with a wrong key, never the real one). ``?return=URL`` (http/https) adds a
  "back to the merchant" link.
- ``GET /statement?date=YYYY-MM-DD`` — the daily statement CSV (for
  ``onecard report topup-reconcile``).
- ``GET /healthz``.

The signing key comes from ``--key-file`` or ``ONECARD_SANDBOX_KEY`` (never on the command
line). It is a sandbox: state is in memory and lost when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import logging
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.payments.sandbox import SandboxBank, SandboxError
from protocol.cards.clock import fmt_local
from protocol.cards.fees import yuan

log = logging.getLogger("onecard.sandbox")

DELIVERIES = ("once", "twice", "late", "never", "forged")
RETRY_DELAYS_S = (0.0, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(  # noqa: S310 - http(s) checked by the caller
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class Notifier:
    """Delivers notifications like a provider: retried with backoff until a 200 comes back."""

    def __init__(self, bank: SandboxBank, *, late_s: float) -> None:
        self.bank = bank
        self.late_s = late_s
        self.tasks: set[asyncio.Task[None]] = set()
        self.delivered: list[tuple[str, int]] = []  # (out_trade_no, HTTP status)

    def start(self, out_trade_no: str, deliver: str) -> None:
        if deliver == "never":
            return
        task = asyncio.create_task(self._run(out_trade_no, deliver), name=f"notify-{deliver}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, number: str, deliver: str) -> None:
        url = self.bank.orders[number].notify_url
        if not url.startswith(("http://", "https://")):
            log.warning("order %s has no http(s) notify_url", number)
            return
        if deliver == "late":
            await asyncio.sleep(self.late_s)
        if deliver == "forged":
            body = self.bank.notification(number, key=b"not-the-merchant-key")
            self.delivered.append((number, await asyncio.to_thread(_post, url, body)))
            return
        for _ in range(2 if deliver == "twice" else 1):
            await self._until_acknowledged(number, url)

    async def _until_acknowledged(self, number: str, url: str) -> None:
        for delay in RETRY_DELAYS_S:
            await asyncio.sleep(delay)
            status = await asyncio.to_thread(_post, url, self.bank.notification(number))
            self.delivered.append((number, status))
            if status == 200:
                return

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>沙箱支付 / Sandbox pay</title>
<style>
body{{font-family:sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem;color:#222}}
.amount{{font-size:2rem;font-weight:bold}} button{{font-size:1.1rem;padding:.6rem 1.4rem}}
.note{{color:#666;font-size:.85rem}} .ok{{color:#0a7d2c}} .err{{color:#b00020}}
</style></head><body>
<h1>沙箱支付 <small>/ Sandbox pay</small></h1>
<p>商户 / merchant: {merchant}</p>
<p>{description}</p>
<p class="amount" id="amount">¥{amount}</p>
<p>订单号 / order: <code id="order">{number}</code></p>
{body}
<p class="note">这是演示用的模拟支付平台，不会真实扣款。/ A simulated provider: no real money.</p>
</body></html>"""


def _return_link(url: str | None) -> str:
    if not url:
        return ""
    return f'<p><a id="return" href="{html.escape(url)}">返回商户 / back to the merchant</a></p>'


def _safe_return(value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    return value if parts.scheme in ("http", "https") and parts.netloc else None


def build_app(bank: SandboxBank, *, late_s: float = 20.0) -> Starlette:
    notifier = Notifier(bank, late_s=late_s)

    async def api(request: Request) -> Response:
        op = request.path_params["op"]
        try:
            fields = await request.json()
            if not isinstance(fields, dict):
                raise SandboxError("not an object")  # noqa: TRY301
            answer = bank.api(op, {str(k): str(v) for k, v in fields.items()})
        except (SandboxError, ValueError, KeyError) as exc:
            return JSONResponse({"code": "FAIL", "message": str(exc)}, status_code=400)
        return JSONResponse(answer)

    def page(number: str, body: str, status: int = 200) -> HTMLResponse:
        order = bank.orders.get(number)
        if order is None:
            return HTMLResponse("<p>无此订单 / no such order</p>", status_code=404)
        return HTMLResponse(
            PAGE.format(
                merchant=html.escape(bank.merchant_id),
                description=html.escape(order.description),
                amount=yuan(order.amount),
                number=html.escape(number),
                body=body,
            ),
            status_code=status,
        )

    async def pay_page(request: Request) -> Response:
        number = request.path_params["number"]
        back = _safe_return(request.query_params.get("return"))
        order = bank.orders.get(number)
        if order is not None and order.state == "SUCCESS":
            return page(number, '<p class="ok" id="result">已支付 / paid</p>' + _return_link(back))
        options = "".join(
            f'<option value="{d}"{" selected" if d == "once" else ""}>{d}</option>'
            for d in DELIVERIES
        )
        expires = fmt_local(order.expires_at) if order is not None else ""
        form = (
            f'<form method="post" action="/pay/{quote(number)}">'
            f'<input type="hidden" name="return" value="{html.escape(back or "")}">'
            f"<p>有效期至 / pay before: {expires}</p>"
            '<p><label>回调方式 / callback (sandbox): <select name="deliver" id="deliver">'
            f"{options}</select></label></p>"
            '<p><button id="pay" type="submit">确认支付 / Pay</button></p></form>'
        )
        return page(number, form)

    async def pay(request: Request) -> Response:
        number = request.path_params["number"]
        form = await request.form()
        deliver = str(form.get("deliver") or "once")
        back = _safe_return(str(form.get("return") or ""))
        if deliver not in DELIVERIES:
            deliver = "once"
        try:
            bank.pay(number)
        except SandboxError as exc:
            reason = html.escape(str(exc))
            body = f'<p class="err" id="result">支付失败 / payment refused: {reason}</p>'
            return page(number, body + _return_link(back), status=409)
        notifier.start(number, deliver)
        return page(
            number,
            f'<p class="ok" id="result">支付成功 / paid ({html.escape(deliver)})</p>'
            + _return_link(back),
        )

    async def statement(request: Request) -> Response:
        try:
            day = date.fromisoformat(request.query_params.get("date", ""))
        except ValueError:
            return PlainTextResponse("date=YYYY-MM-DD", status_code=400)
        return PlainTextResponse(bank.statement(day), media_type="text/csv; charset=utf-8")

    async def deliveries(_request: Request) -> Response:
        return JSONResponse([{"order": n, "status": s} for n, s in notifier.delivered])

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await notifier.close()

    app = Starlette(
        routes=[
            Route("/api/{op}", api, methods=["POST"]),
            Route("/pay/{number}", pay_page, methods=["GET"]),
            Route("/pay/{number}", pay, methods=["POST"]),
            Route("/statement", statement),
            Route("/deliveries", deliveries),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )
    app.state.bank = bank
    app.state.notifier = notifier
    return app


def _key(path: Path | None) -> bytes:
    if path is not None:
        return path.read_bytes().strip()
    env = os.environ.get("ONECARD_SANDBOX_KEY")
    if not env:
        raise SystemExit("give --key-file or ONECARD_SANDBOX_KEY (the merchant's signing key)")
    return env.encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="onecard sandbox payment provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--merchant-id", default="onecard-demo")
    parser.add_argument("--key-file", type=Path)
    parser.add_argument("--late-s", type=float, default=20.0, help="delay of a 'late' callback")
    args = parser.parse_args(argv)
    import uvicorn

    bank = SandboxBank(
        _key(args.key_file),
        merchant_id=args.merchant_id,
        pay_url_base=f"http://{args.host}:{args.port}/pay/",
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(
        build_app(bank, late_s=args.late_s), host=args.host, port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
